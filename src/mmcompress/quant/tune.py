"""Distillation tuning of a quantized model through its own integer simulation.

Post-training quantization fixes each layer on its own: rounding, ranges and GPTQ look at one
layer at a time, so the small errors of 50 layers of 8-bit activations add up (MobileNetV2 W8A8
static: top-1 agreement with float 0.88-0.89; keeping the inputs of any one of its first 29
layers float moved the KL by at most 0.004 of 0.036). `tune_quantized`
trains the quantized model end to end to read like the float model on unlabeled inputs, the way
BRECQ / QDrop reconstruct blocks, but on the whole network:

- every quantized Linear/Conv runs its simulation (static, dynamic or no input quantization, the
  weight on its integer grid) with straight-through rounding, so gradients reach every layer;
- the biases and a float copy of each weight are trained (Adam, linear warm-up, cosine decay); the
  layers' steps and zero points stay as calibrated, and so do the input ranges unless `range_lr`
  learns them (LSQ);
- `target="onnx-qdq"` trains through `quant.qdq_simulation`: the model plus the roundings its QDQ
  ONNX file adds (residual adds, clipped pooling inputs), so the file ONNX Runtime runs is what
  gets tuned;
- a held-out eighth of the batches decides: if their loss (through the real, re-rounded model) did
  not go down, the model is put back as it was, with a warning;
- at the end each weight is rounded back onto its own grid (same steps): the model keeps its
  codes' format, its kernels and its ONNX export, and runs exactly as any quantized model.

Measured on MobileNetV2 (ImageNet weights, W8A8 static, GPTQ, percentile ranges; 1024 unlabeled
photo crops, 300 steps, about 7 minutes on 2 cores), top-1 agreement with float on 300 held-out
crops: after activation equalization 0.893 -> 0.913 (KL 0.023 -> 0.016), after cross-layer
equalization 0.893 -> 0.900 (KL 0.033 -> 0.021); biases alone (`weight_lr=0`) 0.88 -> 0.90.
Tuned for the QDQ file (plain GPTQ, `target="onnx-qdq"`): the file on ONNX Runtime 0.867 -> 0.880
(KL 0.047 -> 0.038) with 1024 crops, 0.867 -> 0.910 (KL 0.034) with 4096: 1024 crops of six photos
over-fit (training loss 0.027, held-out 0.040). Learned input ranges (`range_lr=1e-3`) did not help
there (file 0.883, KL 0.038 with 1024 crops).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.core.config import FrozenConfig
from mmcompress.errors import ConfigError, DataError, ModelError
from mmcompress.quant.activations import fake_quantize_per_token, fake_quantize_static_ste
from mmcompress.quant.modules import QuantConv1d, QuantConv2d, QuantLinear
from mmcompress.quant.primitives import code_range, fake_quantize_dynamic_uint8
from mmcompress.train.reference_tasks import output_tensor


class TuneConfig(FrozenConfig):
    """Settings of `tune_quantized`.

    Attributes:
        steps: optimizer steps, one batch each (batches are drawn at random with `seed`).
        lr: Adam learning rate of the biases (cosine decay to 0).
        weight_lr: Adam learning rate of the float weight copies (0: biases only).
        loss: "kl" (KL(teacher || student) of softmax outputs, for logits) or "mse" (embeddings).
        temperature: softmax temperature of the "kl" loss.
        warmup: fraction of the steps over which the learning rates rise linearly (Adam's first
            steps move every parameter by about its learning rate at once).
        holdout: fraction of the batches (at least one, when there are 4 or more) kept out of
            training; the tuned model is kept only if its loss on them went down.
        range_lr: learning rate of the static input steps (LSQ: the straight-through rounding's
            gradient), relative to each step (0: the calibrated ranges stay).
        target: what the loss is measured through: "pytorch" (the model's own simulation) or
            "onnx-qdq" (plus the roundings its QDQ ONNX file adds at residual adds and clipped
            pooling inputs, `quant.qdq_simulation`: tune for the file ONNX Runtime runs).
        seed: the order of the batches.

    Example:
        >>> TuneConfig(steps=100).weight_lr
        2e-05
    """

    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_lr: float = Field(2e-5, ge=0.0)
    loss: str = Field("kl", pattern="^(kl|mse)$")
    temperature: float = Field(1.0, gt=0.0)
    warmup: float = Field(0.1, ge=0.0, lt=1.0)
    holdout: float = Field(0.125, ge=0.0, lt=1.0)
    range_lr: float = Field(0.0, ge=0.0)
    target: str = Field("pytorch", pattern="^(pytorch|onnx-qdq)$")
    seed: int = 0


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as its simulation quantizes it, with straight-through gradients."""
    smooth = getattr(module, "act_smooth", None)
    if smooth is not None:
        x = x * smooth
    act = getattr(module, "act", None)
    if act is None:
        return x
    if act.mode == "static":
        return fake_quantize_static_ste(x, module.act_step, module.act_zero)
    quantized = fake_quantize_per_token(x) if act.granularity == "per_token" else fake_quantize_dynamic_uint8(x)
    return x + (quantized - x).detach()


def _weight(module: nn.Module, shadow: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """`shadow` on the module's grid (its steps and zero points): dequantized (straight-through)
    or, with `exact`, the integer codes."""
    lo, hi = code_range(module.grid.bits, module.grid.symmetric)
    scale, zero = module.scale, module._zero().to(shadow.dtype)
    groups = shadow.reshape(shadow.shape[0], scale.shape[1], -1)
    rounded = torch.round if exact else _ste_round
    codes = torch.clamp(rounded(groups / scale[..., None]) + zero[..., None], lo, hi)
    if exact:
        return codes.view(shadow.shape)
    return ((codes - zero[..., None]) * scale[..., None]).view(shadow.shape)


def _static_input(module: nn.Module) -> bool:
    act = getattr(module, "act", None)
    return act is not None and act.mode == "static"


def _tunable(module: nn.Module) -> bool:
    """Linear / Conv1d / Conv2d layers with integer codes (embeddings and LSTM/GRU keep theirs)."""
    return isinstance(module, (QuantLinear, QuantConv1d, QuantConv2d))


def _install(module: nn.Module, shadow: torch.Tensor) -> None:
    """Replace the module's forward by its differentiable simulation (removed by `_remove`)."""
    if module.qweight.dim() == 2:

        def forward(x: torch.Tensor) -> torch.Tensor:
            return F.linear(_input(module, x), _weight(module, shadow), module.bias)
    else:
        conv = F.conv1d if module.qweight.dim() == 3 else F.conv2d

        def forward(x: torch.Tensor) -> torch.Tensor:
            w, m = _weight(module, shadow), module
            return conv(_input(m, x), w, m.bias, m.stride, m.padding, m.dilation, m.groups)

    module.forward = forward


def _remove(module: nn.Module) -> None:
    module.__dict__.pop("forward", None)


def _loss(student: torch.Tensor, teacher: torch.Tensor, cfg: TuneConfig) -> torch.Tensor:
    if cfg.loss == "mse":
        return F.mse_loss(student.float(), teacher.float())
    t = cfg.temperature
    s = F.log_softmax(student.float().flatten(0, -2) / t, -1)
    return F.kl_div(s, F.log_softmax(teacher.float().flatten(0, -2) / t, -1), log_target=True, reduction="batchmean")


def tune_quantized(
    student: nn.Module,
    teacher: nn.Module,
    batches: Sequence[Any],
    config: TuneConfig | dict | None = None,
    *,
    validation: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Train a quantized model in place to match its float original on unlabeled batches, through
    its integer simulation; its codes are re-rounded onto the same grids at the end.

    Args:
        student: a model `quantize` produced (Quant* layers; W8A8 static/dynamic or weight-only).
        teacher: the float model (not changed).
        batches: model inputs (tensor, tuple or dict per batch), e.g. unlabeled images; use other
            inputs than those you evaluate on.
        config: a TuneConfig or a dict of its fields.
        validation: batches that decide whether the tuned model is kept, instead of the last
            `holdout` fraction of `batches` (all of which then train). Give inputs like the
            deployment's when the tuning inputs differ from them (augmented, synthetic): a
            held-out part of the tuning inputs cannot see that mismatch.

    Returns:
        {"loss_first", "loss_last": mean training loss over the first and last tenth of the steps,
        "layers", "holdout_before", "holdout_after": loss of the held-out batches before and after
        (NaN without any), "kept": 1.0 if the tuned model was kept, 0.0 if it was put back (with
        a warning) because its held-out loss did not go down, "qdq_roundings": roundings of the QDQ
        file simulated (target "onnx-qdq"; 0 otherwise)}.

    Example:
        >>> quantize(model, QuantConfig(activations="static"), calib=calib)
        >>> tune_quantized(model, float_model, [crops[i : i + 16] for i in range(0, 1024, 16)])["loss_last"]
        0.018
    """
    cfg = config if isinstance(config, TuneConfig) else TuneConfig(**(config or {}))
    batches = _checked(batches, "batches")
    extra = [] if validation is None else _checked(validation, "validation")
    layers = [m for m in student.modules() if _tunable(m)]
    if not layers:
        raise ConfigError("tune_quantized found no quantized layers (run quantize first)")
    untuned = sorted({type(m).__name__ for m in student.modules() if hasattr(m, "qweight") and not _tunable(m)})
    if untuned:
        warnings.warn(f"tune_quantized: {', '.join(untuned)} layers keep their codes (no simulation to train through)",
                      UserWarning, stacklevel=2)  # fmt: skip
    with torch.no_grad():
        was_teacher = teacher.training
        teacher.eval()
        targets = [output_tensor(call_model(teacher, b)).detach() for b in batches + extra]
        teacher.train(was_teacher)
    if extra:
        held, train = list(range(len(batches), len(batches) + len(extra))), list(range(len(batches)))
        batches = batches + extra
    else:
        n_held = max(1, round(len(batches) * cfg.holdout)) if cfg.holdout > 0 and len(batches) >= 4 else 0
        held = list(range(len(batches) - n_held, len(batches)))
        train = list(range(len(batches) - n_held))
    forward = _forward_model(student, cfg)
    before = _held_out_loss(student, forward, batches, targets, held, cfg)
    flags = {p: p.requires_grad for p in student.parameters()}
    was_training = student.training
    shadows = {m: nn.Parameter(m.dequantized_weight().detach().float().clone()) for m in layers}
    biases = [m.bias for m in layers if isinstance(getattr(m, "bias", None), nn.Parameter)]
    steps = [m.act_step for m in layers if _static_input(m)] if cfg.range_lr > 0 else []
    biases_and_steps = biases + steps
    saved = [p.detach().clone() for p in biases_and_steps]  # restored if tuning fails: no half-tuned model
    saved_codes = [m.qweight.detach().clone() for m in layers]
    losses: list[float] = []
    done = False
    try:
        for p in flags:
            p.requires_grad_(False)
        for p in biases_and_steps:
            p.requires_grad_(True)
        for m, shadow in shadows.items():
            _install(m, shadow)
        groups = [{"params": biases, "lr": cfg.lr}]
        if cfg.weight_lr > 0:
            groups.append({"params": list(shadows.values()), "lr": cfg.weight_lr})
        groups += [{"params": [t], "lr": cfg.range_lr * float(t.detach())} for t in steps]  # relative to each step
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, steps=cfg.steps, warmup=cfg.warmup))
        order = torch.Generator().manual_seed(cfg.seed)
        student.eval()  # BatchNorm statistics and dropout as deployed
        for _ in range(cfg.steps):
            i = train[int(torch.randint(len(train), (1,), generator=order))]
            loss = _loss(output_tensor(call_model(forward, batches[i])), targets[i], cfg)
            if not torch.isfinite(loss):
                value = float(loss.detach())
                raise DataError(f"tune_quantized: the loss became {value} (try lower lr / weight_lr / range_lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for t in steps:
                    t.clamp_(min=torch.finfo(torch.float32).tiny)
            losses.append(float(loss.detach()))
        with torch.no_grad():
            for m, shadow in shadows.items():
                m.qweight.copy_(_weight(m, shadow, exact=True).to(m.qweight.dtype))
        done = True
    finally:
        if not done:
            _restore(biases_and_steps, saved, layers, saved_codes)
        for t in steps:
            t.requires_grad_(False)
            t.grad = None
        for m in layers:
            _remove(m)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        student.train(was_training)
    after = _held_out_loss(student, forward, batches, targets, held, cfg)
    kept = not held or after < before
    if not kept:
        _restore(biases_and_steps, saved, layers, saved_codes)
        warnings.warn(
            f"tune_quantized: the held-out loss did not go down ({before:.4g} -> {after:.4g}); the model is left "
            "as it was (try more steps, more batches or lower learning rates)",
            UserWarning,
            stacklevel=2,
        )
    tenth = max(1, len(losses) // 10)
    return {
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
        "layers": len(layers),
        "qdq_roundings": getattr(forward, "qdq_roundings", 0),
        "holdout_before": before,
        "holdout_after": after,
        "kept": float(kept),
    }


def _checked(batches: Any, what: str) -> list:
    """The batches as a list, or a DataError naming what is wrong with them."""
    if batches is None or isinstance(batches, (torch.Tensor, dict)):
        raise DataError(
            f"tune_quantized needs a list of {what} (model inputs), got {type(batches).__name__}: "
            "e.g. [images[i : i + 16] for i in range(0, len(images), 16)]"
        )
    batches = list(batches)
    if not batches:
        raise DataError(f"tune_quantized got no {what}")
    if any(_raw_text(b) for b in batches):
        raise DataError(
            f"tune_quantized got raw text in its {what} (strings, not token ids): collate them for the model "
            "first, e.g. mmcompress.data.collate.calibration_batches(model, raw_batches)"
        )
    return batches


def _raw_text(batch: Any) -> bool:
    """A batch holding strings (a raw {"text": [...]} batch, not model inputs)."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    return any(isinstance(v, str) or (isinstance(v, (list, tuple)) and v and isinstance(v[0], str)) for v in values)


def _forward_model(student: nn.Module, cfg: TuneConfig) -> nn.Module:
    """The model the loss runs through: the student, or its QDQ-file simulation (same parameters)."""
    if cfg.target == "pytorch":
        return student
    from mmcompress.quant.qdq_simulation import qdq_simulation  # torch.fx: imported when used

    try:
        simulation = qdq_simulation(student)
    except ModelError as err:
        raise ModelError(f"tune_quantized(target='onnx-qdq'): {err} (tune with target='pytorch' instead)") from None
    if getattr(simulation, "qdq_roundings", 0) == 0:
        warnings.warn(
            "tune_quantized(target='onnx-qdq'): the QDQ file adds no rounding to this model (no residual add or "
            "clipped pooling input next to static W8A8 layers), so it is tuned as for target='pytorch'",
            UserWarning,
            stacklevel=3,
        )
    return simulation


def _lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to 0."""
    warm = int(steps * warmup)
    if step < warm:
        return (step + 1) / (warm + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _held_out_loss(
    student: nn.Module, forward: nn.Module, batches: list, targets: list, held: list[int], cfg: TuneConfig
) -> float:
    """Mean loss of the deployed model (its real forward through `forward`, the student or its
    file simulation; the student in eval mode) on the held-out batches."""
    if not held:
        return float("nan")
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            total = sum(float(_loss(output_tensor(call_model(forward, batches[i])), targets[i], cfg)) for i in held)
    finally:
        student.train(was_training)
    return total / len(held)


def _restore(biases: list, saved: list, layers: list, saved_codes: list) -> None:
    with torch.no_grad():
        for p, value in zip(biases, saved, strict=True):
            p.copy_(value)
        for m, codes in zip(layers, saved_codes, strict=True):
            m.qweight.copy_(codes)
