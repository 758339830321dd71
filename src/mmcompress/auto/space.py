"""The search space per tower, pruned by measured quantization sensitivity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mmcompress.auto.plan import Plan, TowerPlan
from mmcompress.models.adapter import adapter_for


@dataclass
class TowerSpace:
    """Options one tower may take."""

    bits: tuple[int, ...] = (0, 8, 4)
    group_size: int = 0  # sub-8-bit steps per this many inputs (0: one per channel)
    dynamic: bool = False  # W8A8 / W4A8 integer kernels are an option (towers with Linear layers)
    embeddings: bool = False  # the tower has embedding tables (their bits are searched apart)
    sparsity: tuple[float, ...] = (0.0,)
    channels: tuple[float, ...] = (0.0,)


@dataclass
class SearchSpace:
    """Per-tower options, fine-tuning options and the sensitivities they came from.

    `sensitivity[tower][bits]`: points of the task metric lost when only that tower is quantized
    at `bits`; `layer_sensitivity[tower][layer][bits]`: each layer's relative output error.
    """

    towers: dict[str, TowerSpace]
    finetune_epochs: tuple[int, ...] = (0, 1)
    finetune_freeze: tuple[str, ...] = ()
    finetune_lr: float = 5e-4
    finetune_batch_size: int = 128
    tune_steps: tuple[int, ...] = (0,)  # distillation tuning of quantized plans; (0, n) lets the search choose
    sensitivity: dict[str, dict[int, float]] = field(default_factory=dict)
    layer_sensitivity: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)

    def first_params(self) -> dict[str, Any]:
        """Trial parameters of the plan searched first: 8-bit weights everywhere, nothing pruned, no
        tuning (the plan most likely to hold the metric; a short search must not be all random draws)."""
        params: dict[str, Any] = {}
        for name, space in self.towers.items():
            params[f"{name}.bits"] = 8
            if space.dynamic:
                params[f"{name}.activations"] = "none"
            params.update({f"{name}.sparsity": 0.0, f"{name}.channels": 0.0})
            if space.embeddings:
                params[f"{name}.embedding_bits"] = 8
        if len(self.tune_steps) > 1:
            params["tune_steps"] = 0
        return params

    def suggest(self, trial: Any) -> Plan:
        """A plan drawn by an Optuna trial (define-by-run)."""
        towers = {}
        for name, space in self.towers.items():
            bits = trial.suggest_categorical(f"{name}.bits", list(space.bits))
            act = "none"
            if space.dynamic and bits in (8, 4):  # W8A8 / W4A8 integer kernels
                act = trial.suggest_categorical(f"{name}.activations", ["none", "dynamic"])
            sparsity = trial.suggest_categorical(f"{name}.sparsity", list(space.sparsity))
            channels = trial.suggest_categorical(f"{name}.channels", list(space.channels))
            tables = trial.suggest_categorical(f"{name}.embedding_bits", list(space.bits)) if space.embeddings else None
            towers[name] = TowerPlan(bits=bits, activations=act, sparsity=sparsity, channels=channels,
                                     group_size=space.group_size, embedding_bits=tables)  # fmt: skip
        prunes = any(t.sparsity or t.channels for t in towers.values())
        epochs = trial.suggest_categorical("finetune_epochs", list(self.finetune_epochs)) if prunes else 0
        tune = 0
        if any(t.bits for t in towers.values()):
            options = list(self.tune_steps)
            tune = trial.suggest_categorical("tune_steps", options) if len(options) > 1 else options[0]
        return Plan(
            towers=towers, finetune_epochs=epochs, finetune_freeze=self.finetune_freeze,
            finetune_lr=self.finetune_lr, finetune_batch_size=self.finetune_batch_size, tune_steps=tune,
        )  # fmt: skip


def build_space(model: nn.Module, calib: list[Any], task: Any, val: Any, max_tower_drop: float = 3.0) -> SearchSpace:
    """Options per tower from the model's layers, with the bit widths removed that cost more than
    `max_tower_drop` points of the task metric on `val` when only that tower is quantized (the
    float and 8-bit options always stay). Per-layer output errors are kept for the report.

    Convolutional towers may lose channels (structured pruning makes them faster); towers of
    Linear layers may run W7A8 integer kernels and take 50% unstructured sparsity; the small
    fusion tower stays float or 8-bit.

    Example:
        >>> space = build_space(load_model("fashion-clip"), calib)
        >>> space.towers["text"].bits
        (0, 8, 4)
    """
    from mmcompress.quant.analysis import analyze_quantization_error

    adapter = adapter_for(model)
    kinds: dict[str, set[type]] = {}
    widths: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        tower = adapter.modality_of(name)
        if tower and isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            kinds.setdefault(tower, set()).add(type(module))
            widths.setdefault(tower, set()).add(module.weight[0].numel())
    groups = {t: next((g for g in (128, 64, 32) if all(w % g == 0 for w in ws)), 0) for t, ws in widths.items()}
    layers: dict[str, dict[str, dict[int, float]]] = {}
    for bits in (8, 4, 3):
        mapping = {f"modality:{t}": _config(bits, g) for t, g in groups.items()}
        for row in analyze_quantization_error(model, {**mapping, "_default": None}, calib, ratios=(1.0,)):
            tower = row.modality or "other"
            layers.setdefault(tower, {}).setdefault(row.name, {})[bits] = row.output_rel_error
    sensitivity = tower_drops(model, groups, task, val)
    towers = {}
    for tower, types in sorted(kinds.items()):
        if tower == "fusion":
            towers[tower] = TowerSpace(bits=(0, 8))
            continue
        drops = sensitivity.get(tower, {})
        bits = tuple(b for b in (0, 8, 4, 3) if b in (0, 8) or drops.get(b, float("inf")) <= max_tower_drop)
        conv = nn.Conv2d in types
        towers[tower] = TowerSpace(
            bits=bits,
            group_size=groups[tower],
            embeddings=nn.Embedding in types,
            dynamic=not conv,
            sparsity=(0.0,) if conv else (0.0, 0.5),
            channels=(0.0, 0.25, 0.5) if conv else (0.0,),
        )
    return SearchSpace(towers, sensitivity=sensitivity, layer_sensitivity=layers)


def tower_drops(model: nn.Module, groups: dict[str, int], task: Any, val: Any) -> dict[str, dict[int, float]]:
    """Points of the task metric lost when only one tower is quantized, per tower and bit width
    (positive: worse, also for a lower-is-better metric such as WER)."""
    import copy

    from mmcompress.quant.api import quantize

    base = task.evaluate(model, val)[task.primary_metric]
    sign = -1.0 if getattr(task, "higher_is_better", True) is False else 1.0
    drops: dict[str, dict[int, float]] = {}
    for tower, group in groups.items():
        if tower == "fusion":
            continue
        for bits in (8, 4, 3):
            candidate = copy.deepcopy(model)
            quantize(candidate, {f"modality:{tower}": _config(bits, group), "_default": None})
            drops.setdefault(tower, {})[bits] = 100 * sign * (base - task.evaluate(candidate, val)[task.primary_metric])
    return drops


def _config(bits: int, group: int):
    from mmcompress.quant.api import QuantConfig

    if bits == 8 or group == 0:
        return QuantConfig(weight_bits=bits)
    return QuantConfig(weight_bits=bits, granularity="per_group", group_size=group)
