"""Graph clean-up for inference: BatchNorm folded into the Conv/Linear before it, and modules that
do nothing at inference (Identity, Dropout) dropped from Sequential containers.

Folding is exact up to float rounding: y = gamma * (W x + b - mean) / sqrt(var + eps) + beta is
W' x + b' with W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

from mmcompress.core.record import Record, note_edit
from mmcompress.errors import ModelError

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_into(layer: nn.Module, norm: nn.Module) -> None:
    """Fold `norm`'s inference statistics into `layer`'s weight and bias (in place).

    Example:
        >>> fold_into(conv, bn)   # then replace bn by nn.Identity()
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ModelError(f"{type(norm).__name__} tracks no running statistics; it cannot be folded")
    out = layer.weight.shape[0]
    if norm.num_features != out:
        raise ModelError(f"{type(norm).__name__}({norm.num_features}) cannot fold into a layer with {out} outputs")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))).to(layer.weight.dtype))
    bias = layer.bias.detach() * scale + shift if layer.bias is not None else shift
    layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_batchnorm(model: nn.Module) -> Record:
    """Fold every BatchNorm whose input is only a Conv/Linear output into that layer, in place; the
    BatchNorm becomes Identity. The model must be in eval mode (folding freezes the statistics).

    Returns:
        Record listing each folded (layer, norm) pair.

    Example:
        >>> rec = fold_batchnorm(cnn.eval())
        >>> len(rec.modules)
        3
    """
    if model.training:
        raise ModelError("fold_batchnorm needs model.eval(): training-mode BatchNorm uses batch statistics")
    pairs = _pairs(model)
    record = Record("fold_batchnorm", {})
    for layer_name, norm_name in pairs:
        fold_into(model.get_submodule(layer_name), model.get_submodule(norm_name))
        _set(model, norm_name, nn.Identity())
        record.modules[norm_name] = {"folded_into": layer_name}
    record.metrics["folded"] = float(len(pairs))
    note_edit(model, record)
    return record


def replay_fold(model: nn.Module, record: Record) -> None:
    """Give a fresh model the structure `fold_batchnorm` left (BatchNorm -> Identity, a bias on the
    layer it went into); the values come from a checkpoint.

    Example:
        >>> replay_fold(build_cnn(), Record.from_dict(saved))
    """
    for norm_name, info in record.modules.items():
        _set(model, norm_name, nn.Identity())
        layer = model.get_submodule(info["folded_into"])
        if layer.bias is None:  # folding gave the layer a bias; its value comes from the checkpoint
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) name pairs: from a torch.fx trace, or Sequential order when tracing fails."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models: fall back to Sequential neighbours
        return _sequential_pairs(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), NORMS):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), FOLDABLE)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    return sequential_pairs(model, lambda m: isinstance(m, FOLDABLE))


def sequential_pairs(model: nn.Module, is_layer: Callable[[nn.Module], bool]) -> list[tuple[str, str]]:
    """(layer, norm) names of a BatchNorm right after a layer `is_layer` accepts, in any Sequential.

    Example:
        >>> sequential_pairs(model, lambda m: isinstance(m, nn.Conv2d))
        [('features.0.0', 'features.0.1'), ...]
    """
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, first), (b, second) in zip(children, children[1:], strict=False):
                if is_layer(first) and isinstance(second, NORMS):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def drop_identities(model: nn.Module) -> int:
    """Remove Identity and Dropout modules from Sequential containers (inference no-ops); returns
    how many. A Sequential that would become empty keeps one Identity.

    Example:
        >>> drop_identities(cnn.eval())
        3
    """
    removed = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = [n for n, c in module.named_children() if isinstance(c, (nn.Identity, nn.Dropout))]
        if len(names) == len(module):
            names = names[1:]
        for name in names:
            del module._modules[name]
            removed += 1
    return removed
