"""Mixed precision: per-layer bit widths chosen from measured sensitivity under a size budget.

Sensitivity of a layer at b bits = the relative error of its output on calibration data when that
layer alone is quantized at b bits (`analyze_quantization_error`), or, with `sensitivity:
fisher`, the second-order estimate of the loss increase sum_i F_ii (w_i - q_b(w_i))^2 with the
diagonal Fisher F (mean squared gradient of the task loss; HAWQ-style, needs labelled data).
A greedy allocator starts every layer at the widest option and repeatedly narrows the layer that
adds the least error per bit saved, until the average bits per weight meets the budget — per
modality tower when the tower has its own budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field
from torch import nn

from mmcompress.core.config import FrozenConfig
from mmcompress.core.layer_stats import gradient_stats
from mmcompress.core.record import Record
from mmcompress.core.targets import LAYER_TYPES, resolve_targets
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for
from mmcompress.quant.analysis import analyze_quantization_error
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.modules import FLOAT_TO_QUANT


class MixedPrecisionConfig(FrozenConfig):
    """Budget and options for mixed precision.

    Attributes:
        bits_options: candidate bit widths per layer.
        average_bits: budget, average bits per weight over every targeted layer.
        modality_budgets: tower -> its own average-bits budget (e.g. {"image": 6, "text": 4}).
        base: grid settings shared by every layer (granularity, group size, method, ...). With
            "per_group", a layer whose inputs per output the group size does not divide (e.g.
            MobileNetV2's 144-input 1x1 convs at group 128) gets per-channel steps, with a warning.
        sensitivity: "output_error" (relative output error on calibration inputs) or "fisher"
            (Fisher-weighted weight error: needs `data=` labelled batches and `loss_fn=`).

    Example:
        >>> MixedPrecisionConfig(average_bits=4.5, modality_budgets={"image": 8.0})
    """

    bits_options: tuple[int, ...] = (2, 3, 4, 8)
    average_bits: float = Field(4.5, ge=2, le=8)
    modality_budgets: dict[str, float] = Field(default_factory=dict)
    base: QuantConfig = QuantConfig(granularity="per_group", group_size=128, layer_types=("linear", "conv"))
    sensitivity: Literal["output_error", "fisher"] = "output_error"


@dataclass
class Allocation:
    """Chosen bits per layer, with the sensitivities and sizes that led to them."""

    bits: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    numel: dict[str, int]
    modality: dict[str, str | None]
    average_bits: dict[str, float] = field(default_factory=dict)


def _at_bits(base: QuantConfig, bits: int) -> QuantConfig:
    return QuantConfig.from_dict({**base.to_dict(), "weight_bits": bits}, "mixed precision bits_options")


def _base_mapping(model: nn.Module, base: QuantConfig, bits: int | None, warn: bool = True) -> dict:
    """Target mapping of `base` at `bits` (None: as is), per-channel for layers the group size misfits."""
    misfit = []
    if base.granularity == "per_group":
        kinds = tuple(LAYER_TYPES[t] for t in base.layer_types if t != "embedding")
        for name, module in model.named_modules():
            if type(module) in kinds:
                k = module.weight[0].numel()  # inputs per output (per group for a grouped conv)
                misfit += [name] if k % min(base.group_size, k) else []
    if misfit and warn:
        warnings.warn(
            f"group size {base.group_size} does not divide the inputs of {len(misfit)} layer(s) "
            f"(first: {misfit[0]!r}); they get per-channel steps",
            stacklevel=3,
        )
    at = base if bits is None else _at_bits(base, bits)
    channel = at.model_copy(update={"granularity": "per_channel"})
    return {**dict.fromkeys(misfit, channel), "_default": at}


def allocate_bits(sensitivity: dict[str, dict[int, float]], numel: dict[str, int], budget: float) -> dict[str, int]:
    """Greedy: narrow the layer with the least added error per saved bit until the budget holds.

    Example:
        >>> allocate_bits({"a": {4: 0.1, 8: 0.0}, "b": {4: 0.01, 8: 0.0}}, {"a": 10, "b": 10}, 6.0)
        {'a': 8, 'b': 4}
    """
    bits = {name: max(options) for name, options in sensitivity.items()}
    total = sum(numel.values())

    def average() -> float:
        return sum(bits[n] * numel[n] for n in bits) / total

    while average() > budget + 1e-9:
        best, best_cost = None, float("inf")
        for name, options in sensitivity.items():
            lower = [b for b in options if b < bits[name]]
            if not lower:
                continue
            nxt = max(lower)
            cost = (options[nxt] - options[bits[name]]) / ((bits[name] - nxt) * numel[name])
            if cost < best_cost:
                best, best_cost = (name, nxt), cost
        if best is None:
            raise ConfigError(f"budget {budget} bits per weight is below the narrowest option ({average():.2f})")
        bits[best[0]] = best[1]
    return bits


def plan_mixed_precision(
    model: nn.Module, config: MixedPrecisionConfig, calib: Iterable[Any], data=None, loss_fn=None
) -> Allocation:
    """Measure every target layer at every bit option and allocate bits (per tower where budgeted).

    Example:
        >>> plan = plan_mixed_precision(model, MixedPrecisionConfig(average_bits=4.5), batches)
    """
    calib = list(calib)
    if config.sensitivity == "fisher":
        sensitivity, modality = fisher_sensitivity(model, config, data, loss_fn)
    else:
        sensitivity, modality = {}, {}
        for i, b in enumerate(sorted(set(config.bits_options))):
            for row in analyze_quantization_error(model, _base_mapping(model, config.base, b, i == 0), calib):
                sensitivity.setdefault(row.name, {})[b] = row.output_rel_error
                modality[row.name] = row.modality
    modules = dict(model.named_modules())
    numel = {name: modules[name].weight.numel() for name in sensitivity}
    unknown = set(config.modality_budgets) - set(modality.values())
    if unknown:
        raise ConfigError(f"modality_budgets names towers with no target layer: {sorted(unknown)}")
    bits: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    for name in sensitivity:
        tower = modality[name] if modality[name] in config.modality_budgets else "_rest"
        groups.setdefault(tower, []).append(name)
    for tower, names in groups.items():
        budget = config.modality_budgets.get(tower, config.average_bits)
        bits.update(allocate_bits({n: sensitivity[n] for n in names}, {n: numel[n] for n in names}, budget))
    plan = Allocation(bits, sensitivity, numel, modality)
    for tower, names in groups.items():
        plan.average_bits[tower] = sum(bits[n] * numel[n] for n in names) / sum(numel[n] for n in names)
    return plan


def quantize_mixed(
    model: nn.Module, config: MixedPrecisionConfig, calib: Iterable[Any], data=None, loss_fn=None
) -> tuple[Record, Allocation]:
    """Plan bits per layer, then quantize each layer at its bits (layers outside the plan stay float).

    Example:
        >>> record, plan = quantize_mixed(model, MixedPrecisionConfig(average_bits=4.5), batches)
    """
    calib = list(calib)
    plan = plan_mixed_precision(model, config, calib, data, loss_fn)
    bases = _base_mapping(model, config.base, None, warn=False)
    mapping = {name: _at_bits(bases.get(name, config.base), b) for name, b in plan.bits.items()}
    record = quantize(model, mapping, calib=calib)
    record.metrics.update({f"average_bits.{k}": v for k, v in plan.average_bits.items()})
    return record, plan


def fisher_sensitivity(model: nn.Module, config: MixedPrecisionConfig, data, loss_fn) -> tuple[dict, dict]:
    """sum_i F_ii (w_i - q_b(w_i))^2 per target layer and bit option, and each layer's tower."""

    if data is None or loss_fn is None:
        raise ConfigError("sensitivity 'fisher' needs labelled data= and loss_fn=")
    adapter = adapter_for(model)
    kinds = tuple(LAYER_TYPES[t] for t in config.base.layer_types if t in LAYER_TYPES)
    targets = {
        name: module
        for name, module, _ in resolve_targets(model, {"_default": config.base}, lambda m: type(m) in kinds,
                                               adapter.modality_of)
    }  # fmt: skip
    stats = gradient_stats(model, {n: m.weight for n, m in targets.items()}, list(data), loss_fn, None)
    sensitivity: dict[str, dict[int, float]] = {}
    bases = _base_mapping(model, config.base, None)
    for name, module in targets.items():
        fisher = stats[name].grad_square / stats[name].batches
        for b in sorted(set(config.bits_options)):
            grid = _at_bits(bases.get(name, config.base), b).grid()
            error = module.weight.detach() - FLOAT_TO_QUANT[type(module)].from_float(module, grid).dequantized_weight()
            sensitivity.setdefault(name, {})[b] = float((fisher * error.float() ** 2).sum())
    return sensitivity, {name: adapter.modality_of(name) for name in targets}
