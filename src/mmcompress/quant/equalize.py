"""Cross-layer equalization and empirical bias correction (Nagel et al. 2019, "Data-Free
Quantization"; AIMET), for CNNs such as MobileNetV2 whose folded depthwise weights have very
different ranges per channel and whose near-constant channels turn weight rounding into a
shifted output mean.

Pure math: `equalization_scales` (s_i = sqrt(r1_i / r2_i)) and `channel_means`. Plumbing:
`equalize_cross_layer` finds Conv -> [ReLU/ReLU6] -> Conv chains with torch.fx and rescales
them exactly (a ReLU6 between them becomes a per-channel clamp at 6 / s_i, so the float model's
function is unchanged); `correct_bias` shifts each quantized layer's bias so its mean output
per channel over calibration data equals the float model's.

Typical order: `fold_batchnorm(model)` -> `equalize_cross_layer(model)` -> `reference =
copy.deepcopy(model)` -> `quantize(model, ...)` -> `correct_bias(model, reference, calib)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from mmcompress.core.batches import call_model
from mmcompress.core.record import Record
from mmcompress.errors import DataError, ModelError
from mmcompress.quant.modules import QUANT_LAYERS, QuantConv1d, QuantConv2d, QuantLinear

BIAS_LAYERS = (QuantLinear, QuantConv2d, QuantConv1d)

PASS_THROUGH = (nn.Identity, nn.Dropout)


class ChannelClamp(nn.Module):
    """min(relu(x), upper_c) per channel (dim 1): ReLU6 after a channel was divided by s is a clamp at 6 / s.

    Example:
        >>> ChannelClamp(torch.tensor([1.0, 6.0]))(torch.tensor([[2.0, 2.0]]))
        tensor([[1., 2.]])
    """

    def __init__(self, upper: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("upper", upper.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upper = self.upper.view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
        return torch.minimum(torch.relu(x), upper)


ACTIVATIONS = (nn.ReLU, nn.ReLU6, ChannelClamp)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Per-channel s = sqrt(r1 / r2), so that r1 / s == r2 * s (1 where a range is 0): (C,), (C,) -> (C,).

    Example:
        >>> equalization_scales(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 2.0]))
        tensor([2., 1.])
    """
    ok = (r1 > 0) & (r2 > 0)
    s = torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2)))
    return torch.where(ok, s, torch.ones_like(s)).clamp(1e-4, 1e4)


def channel_means(y: torch.Tensor) -> torch.Tensor:
    """Mean of each channel: (N, C, ...) -> (C,) for conv outputs, (..., C) -> (C,) for Linear."""
    if y.dim() >= 3:
        return y.transpose(0, 1).reshape(y.shape[1], -1).double().mean(1)
    return y.reshape(-1, y.shape[-1]).double().mean(0)


def _source(node: Any, modules: dict[str, nn.Module]) -> tuple[Any, str | None]:
    """Walk back from a conv's input over pass-through modules and at most one ReLU/ReLU6."""
    act = None
    while isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1:
        module = modules.get(node.target)
        if isinstance(module, ACTIVATIONS) and act is None:
            act = node.target
        elif not isinstance(module, PASS_THROUGH):
            break
        node = node.args[0]
    return node, act


def equalization_pairs(model: nn.Module) -> list[tuple[str, str | None, str]]:
    """(first conv, activation or None, second conv) chains where the first feeds only the second."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - the tracer raises many types
        raise ModelError(f"cross-layer equalization needs a torch.fx-traceable model: {err}") from None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        second = modules.get(node.target) if node.op == "call_module" else None
        if type(second) is not nn.Conv2d or second.groups not in (1, second.in_channels):
            continue
        src, act = _source(node.args[0], modules)
        first = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if type(first) is nn.Conv2d and len(src.users) == 1 and first.out_channels == second.in_channels:
            pairs.append((src.target, act, node.target))
    return pairs


def input_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """max |w| per input channel of a conv (a depthwise conv's input channel c is its output c)."""
    w = conv.weight.detach().abs()
    if conv.groups == 1:
        return w.transpose(0, 1).reshape(w.shape[1], -1).amax(1)
    return w.reshape(w.shape[0], -1).amax(1)


@torch.no_grad()
def equalize_cross_layer(model: nn.Module, iterations: int = 2, relu6: str = "clamp") -> Record:
    """Rescale Conv -> [ReLU/ReLU6] -> Conv chains so both weights have equal per-channel ranges (in place).

    Exact in float: the first conv's output channel i (weights and bias) is divided by s_i, the
    second conv's input channel i multiplied by s_i, and a ReLU6 between them becomes a
    `ChannelClamp` at 6 / s_i. Fold BatchNorm first (`fold_batchnorm`): a BatchNorm left between
    the convs stops the chain.

    A per-channel clamp is exact but costs a separate pass in deployment: ONNX Runtime fuses ReLU
    and Clip(0, c) into its QLinearConv, not a per-channel Min (about a third of MobileNetV2's
    int8 time). `relu6="relu"` does what the paper did: the ReLU6 of each equalized chain becomes
    a ReLU (the activation quantizer's calibrated range then bounds it), which changes the float
    function slightly where inputs exceeded 6 and keeps every clamp fusable.

    Args:
        model: float model in eval mode (no quantized layers yet).
        iterations: passes over all chains (each pass moves ranges further toward equal).
        relu6: "clamp" (exact: per-channel clamps at 6 / s_i) or "relu" (ReLU6 -> ReLU on the chains).

    Returns:
        Record with the chains and, per second conv, the spread (max/min) of scales applied.

    Example:
        >>> fold_batchnorm(model.eval()); rec = equalize_cross_layer(model)
        >>> rec.metrics["pairs"]
        36.0
    """
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise ModelError("equalize_cross_layer works on the float model: run it before quantize")
    if relu6 not in ("clamp", "relu"):
        raise ValueError(f"relu6 must be 'clamp' or 'relu', got {relu6!r}")
    pairs = equalization_pairs(model)
    if relu6 == "relu":
        for _, act_name, _ in pairs:
            if act_name is not None and isinstance(model.get_submodule(act_name), nn.ReLU6):
                parent, _, attr = act_name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, nn.ReLU())
    record = Record("equalize_cross_layer", {"iterations": iterations, "relu6": relu6})
    total = {second: torch.ones(model.get_submodule(second).in_channels) for _, _, second in pairs}
    for _ in range(iterations):
        for first_name, act_name, second_name in pairs:
            first, second = model.get_submodule(first_name), model.get_submodule(second_name)
            r1 = first.weight.detach().abs().reshape(first.out_channels, -1).amax(1)
            s = equalization_scales(r1, input_ranges(second))
            rescale_pair(model, (first_name, act_name, second_name), s)
            total[second_name] *= s
    for first_name, act_name, second_name in pairs:
        s = total[second_name]
        record.modules[second_name] = {
            "from": first_name,
            "activation": act_name,
            "scale_spread": float(s.max() / s.min()),
        }
    record.metrics["pairs"] = float(len(pairs))
    return record


@torch.no_grad()
def rescale_pair(model: nn.Module, pair: tuple[str, str | None, str], s: torch.Tensor) -> None:
    """Divide the first conv's output channel i (weights, bias) by s_i and multiply the second conv's
    input channel i by s_i, a ReLU6 between them becoming a clamp at 6 / s_i: exact in float.

    Example:
        >>> rescale_pair(model, equalization_pairs(model)[0], torch.full((32,), 2.0))
    """
    first_name, act_name, second_name = pair
    first, second = model.get_submodule(first_name), model.get_submodule(second_name)
    first.weight.div_(s.view(-1, 1, 1, 1).to(first.weight.dtype))
    if first.bias is not None:
        first.bias.div_(s.to(first.bias.dtype))
    shape = (1, -1, 1, 1) if second.groups == 1 else (-1, 1, 1, 1)
    second.weight.mul_(s.view(shape).to(second.weight.dtype))
    if act_name is not None:
        _scale_activation(model, act_name, s)


def _scale_activation(model: nn.Module, name: str, s: torch.Tensor) -> None:
    act = model.get_submodule(name)
    if isinstance(act, nn.ReLU):
        return  # positively homogeneous: relu(x / s) == relu(x) / s
    upper = act.upper if isinstance(act, ChannelClamp) else torch.full_like(s, 6.0)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, ChannelClamp(upper / s))


@torch.no_grad()
def correct_bias(
    quantized: nn.Module, reference: nn.Module, calib: Iterable[Any], max_batches: int | None = None
) -> Record:
    """Empirical bias correction: shift each quantized layer's bias so its mean output per channel
    over the calibration data equals the float reference's (in place, sequentially in one pass).

    Within a batch, layers are corrected in execution order, so a layer's correction also absorbs
    the shift its quantized inputs carry. Over several batches each correction is the running
    mean of the per-batch shifts (exact for a single batch: pass one large batch when possible).

    Args:
        quantized: the quantized model (layers named as in `reference`).
        reference: the float model it was quantized from (same BatchNorm folding and equalization).
        calib: calibration batches (tensor, tuple or dict per batch).
        max_batches: use at most this many batches.

    Returns:
        Record with the largest |correction| per layer.

    Example:
        >>> reference = copy.deepcopy(model); quantize(model, QuantConfig(), calib=batches)
        >>> rec = correct_bias(model, reference, batches)
    """
    targets = {n: m for n, m in quantized.named_modules() if isinstance(m, BIAS_LAYERS)}
    ref_modules = dict(reference.named_modules())
    missing = [n for n in targets if n not in ref_modules]
    if missing:
        raise ModelError(f"correct_bias: the reference model has no layers {missing[:5]}")
    base = {
        n: torch.zeros(m.weight.shape[0]) if m.bias is None else m.bias.detach().clone() for n, m in targets.items()
    }
    sums = {n: torch.zeros_like(b, dtype=torch.float64) for n, b in base.items()}
    target_means: dict[str, torch.Tensor] = {}
    batches = 0

    def record_ref(name: str):
        return lambda module, args, out: target_means.__setitem__(name, channel_means(out))

    def correct(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            current = base[name] if module.bias is None else module.bias.detach()
            sums[name] += (current - base[name]).double() + target_means.pop(name) - channel_means(out)
            new = (base[name] + sums[name] / batches).to(out.dtype)
            module.bias = nn.Parameter(new, requires_grad=False)
            shape = (1, -1, *([1] * (out.dim() - 2))) if out.dim() >= 3 else (-1,)
            return out + (new - current.to(out.dtype)).view(shape)

        return hook

    handles = [ref_modules[n].register_forward_hook(record_ref(n)) for n in targets]
    handles += [m.register_forward_hook(correct(n)) for n, m in targets.items()]
    try:
        for batch in calib:
            if max_batches is not None and batches >= max_batches:
                break
            batches += 1
            call_model(reference, batch)
            call_model(quantized, batch)
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise DataError("correct_bias got no calibration batches")
    record = Record("correct_bias", {"batches": batches})
    for name in targets:
        record.modules[name] = {"max_abs_shift": float((sums[name] / batches).abs().max())}
    return record
