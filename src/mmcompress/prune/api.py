"""`prune(model, config, data=)`: unstructured and N:M pruning by an importance criterion, with
masks kept through fine-tuning (zeros stay zeros)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmcompress.core.batches import check_finite_weights
from mmcompress.core.config import FrozenConfig
from mmcompress.core.layer_stats import LossFn, gradient_stats, input_stats
from mmcompress.core.record import Record
from mmcompress.core.targets import LAYER_TYPES, as_mapping, resolve_targets
from mmcompress.core.walker import grouped_weight
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.models.adapter import adapter_for, require_matches
from mmcompress.prune.importance import Stats, scores_for
from mmcompress.prune.masks import masks_from_zeros, set_mask
from mmcompress.prune.patterns import nm_mask, parse_nm, threshold_masks
from mmcompress.prune.sequential import sequential_plans
from mmcompress.prune.sparsegpt import sparsegpt_prune

METHODS = ("magnitude", "taylor", "fisher", "wanda", "sparsegpt")
NEEDS_GRADIENTS = ("taylor", "fisher")


EMPTIED = 0.99  # a layer pruned this far is gone: warn


class PruneConfig(FrozenConfig):
    """Unstructured / N:M pruning settings.

    Attributes:
        sparsity: fraction of weights to remove, in [0, 1) (ignored by an N:M pattern).
        method: importance: "magnitude" (|w|), "taylor" (|w * dL/dw|), "fisher" (1/2 w^2 F,
            optimal brain damage), "wanda" (|w| * ||x||) or "sparsegpt" (second-order pruning
            that also updates the kept weights; Linear and Conv2d, grouped and depthwise included:
            each group of a grouped conv has its own input norms / Hessian). Data-driven methods need `data=`
            (taylor/fisher also `loss_fn=`).
        pattern: "unstructured" or "N:M" (e.g. "2:4": keep N of every M consecutive inputs).
        scope: "global" (one threshold across every layer this config targets), "layer" or
            "row" (the same fraction from every output row; what Wanda compares within, and
            Wanda's default). A layer left with (almost) no weights is warned about.
        layer_types: layer types selected by `_default`/regex/modality keys (embeddings are
            left dense by default: rows of rare tokens are not small, just rarely used).
        sequential: wanda/sparsegpt: prune layers in forward order, each calibrated on the
            inputs the already-pruned earlier layers give (one calibration pass per layer).

    Example:
        >>> PruneConfig(sparsity=0.5, method="wanda", scope="layer").method
        'wanda'
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    method: Literal["magnitude", "taylor", "fisher", "wanda", "sparsegpt"] = "magnitude"
    pattern: str = Field("unstructured", pattern=r"^(unstructured|\d+:\d+)$")
    scope: Literal["global", "layer", "row"] = "global"
    layer_types: tuple[Literal["linear", "conv", "embedding"], ...] = ("linear", "conv")
    sequential: bool = False

    @model_validator(mode="before")
    @classmethod
    def _wanda_compares_within_rows(cls, data: Any) -> Any:
        """Wanda's scores are comparable within an output row (its paper), not across layers: "row" by default."""
        if isinstance(data, dict) and data.get("method") == "wanda" and "scope" not in data:
            return {**data, "scope": "row"}
        return data

    @model_validator(mode="after")
    def _check_pattern(self) -> PruneConfig:
        if self.pattern != "unstructured":
            parse_nm(self.pattern)
        if self.sequential and self.method not in ("wanda", "sparsegpt"):
            raise ValueError("sequential calibration applies to the input-driven methods wanda and sparsegpt")
        if self.sequential and self.scope == "global":
            raise ValueError("sequential pruning decides layer by layer: use scope 'layer' or 'row'")
        return self

    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else parse_nm(self.pattern)


def prune(
    model: nn.Module,
    config: PruneConfig | Mapping[str, object] | None = None,
    *,
    data: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
) -> Record:
    """Prune weights in place by an importance criterion; masks stay attached so fine-tuning keeps zeros.

    Each distinct config in a target mapping forms its own group, so
    `{"modality:image": {"sparsity": 0.6}, "modality:text": {"sparsity": 0.3}}` gives per-modality
    budgets, each with a global threshold inside its tower.

    Args:
        model: edited in place.
        config: a PruneConfig or a target mapping of key -> PruneConfig / dict / None
            (default: PruneConfig()).
        data: batches for data-driven criteria: inputs (wanda, sparsegpt; every targeted tower
            must receive data) or whatever `loss_fn` takes (taylor, fisher).
        loss_fn: `loss_fn(model, batch) -> scalar loss` for taylor/fisher.
        max_batches: use at most this many batches.

    Returns:
        A Record with each module's sparsity and the achieved overall sparsity.

    Example:
        >>> rec = prune(model, PruneConfig(sparsity=0.5, method="wanda"), data=calib_batches)
        >>> round(rec.metrics["sparsity"], 2)
        0.5
    """
    mapping = as_mapping(config if config is not None else PruneConfig(), PruneConfig)
    adapter = adapter_for(model)

    def supported(module: nn.Module) -> bool:
        return type(module) in LAYER_TYPES.values()

    groups: dict[PruneConfig, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, module, cfg in resolve_targets(model, mapping, supported, adapter.modality_of):
        if any(type(module) is LAYER_TYPES[t] for t in cfg.layer_types):
            groups[cfg].append((name, module))
    require_matches([m for members in groups.values() for m in members], mapping, model)
    check_finite_weights([m for members in groups.values() for m in members], "be pruned")
    _check_inputs(groups, data, loss_fn)
    parallel = {cfg: members for cfg, members in groups.items() if not cfg.sequential}
    stats = _collect(model, parallel, data, loss_fn, adapter.modality_of, max_batches)
    planned = {}  # name -> (mask, new weight or None); nothing changes until every group is planned
    for cfg, members in groups.items():
        if cfg.sequential:
            planned.update(sequential_plans(model, cfg, members, data, adapter.modality_of, max_batches, _plan_group))
        else:
            planned.update(_plan_group(cfg, members, stats))
    record = Record("prune", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    total = zeros = 0
    modules = dict(model.named_modules())
    for name, (mask, new_weight) in planned.items():
        if new_weight is not None:
            with torch.no_grad():
                modules[name].weight.copy_(new_weight)
        set_mask(modules[name], mask)
        pruned = int((~mask).sum())
        record.modules[name] = {"sparsity": round(pruned / mask.numel(), 4), "numel": mask.numel()}
        total, zeros = total + mask.numel(), zeros + pruned
    record.metrics["sparsity"] = zeros / total if total else 0.0
    emptied = [n for n, entry in record.modules.items() if entry["sparsity"] >= EMPTIED]
    if emptied:
        warnings.warn(
            f"prune: {len(emptied)} layer(s) lost (almost) every weight, the model may be broken: {emptied[:6]} "
            "(a global threshold compares scores across layers; try scope 'layer' or 'row')",
            UserWarning,
            stacklevel=2,
        )
    record.metrics["pruned_weights"] = float(zeros)
    return record


def _check_inputs(groups, data, loss_fn) -> None:
    """Every method gets what it needs (before any pass over the data)."""
    for cfg, members in groups.items():
        if cfg.method == "sparsegpt":
            bad = [n for n, m in members if not isinstance(m, (nn.Linear, nn.Conv2d))]
            if bad:
                raise UnsupportedError(f"sparsegpt prunes Linear and Conv2d layers; {bad[0]!r} is not one")
        if cfg.method != "magnitude" and data is None:
            raise ConfigError(f"importance {cfg.method!r} needs data= (layer {members[0][0]!r})")
        if cfg.method in NEEDS_GRADIENTS and loss_fn is None:
            raise ConfigError("taylor and fisher importance need loss_fn=(model, batch) -> loss")


def _collect(model, groups, data, loss_fn, modality_of, max_batches) -> dict[str, Stats]:
    """The statistics the groups' methods need, in at most one gradient and one input pass."""
    grad_layers = {n: m.weight for cfg, ms in groups.items() if cfg.method in NEEDS_GRADIENTS for n, m in ms}
    input_layers = {n: m for cfg, ms in groups.items() if cfg.method in ("wanda", "sparsegpt") for n, m in ms}
    needs_hessian = any(cfg.method == "sparsegpt" for cfg in groups)
    stats: dict[str, Stats] = {}
    if grad_layers:
        stats.update(gradient_stats(model, grad_layers, data, loss_fn, max_batches))
    if input_layers:
        stats.update(input_stats(model, input_layers, data, modality_of, max_batches, hessian=needs_hessian))
    return stats


def _plan_group(cfg: PruneConfig, members, stats) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    if cfg.method == "sparsegpt":
        return {name: _sparsegpt_plan(cfg, name, module, stats[name]) for name, module in members}
    try:
        scores = [scores_for(cfg.method, m.weight, stats.get(n)) for n, m in members]
        if cfg.nm() is not None:
            masks = [nm_mask(s, *cfg.nm()) for s in scores]
        else:
            masks = threshold_masks(scores, cfg.sparsity, cfg.scope)
    except ValueError as err:
        raise ConfigError(f"{err} (layers {', '.join(n for n, _ in members[:3])})") from None
    return {name: (mask, None) for (name, _), mask in zip(members, masks, strict=True)}


def _sparsegpt_plan(cfg: PruneConfig, name: str, module: nn.Module, stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on the layer's groups: weight (g, out / g, k) with Hessians (g, k, k)."""
    try:
        weight, keep = sparsegpt_prune(grouped_weight(module), stats.extra["hessian"][0], cfg.sparsity, cfg.nm())
    except ValueError as err:
        raise ConfigError(f"layer {name!r} ({type(module).__name__}): {err}") from None
    return keep.reshape(module.weight.shape), weight.reshape(module.weight.shape)


def replay_prune(model: nn.Module, record: Record) -> None:
    """Re-attach masks for `record`'s modules from the zeros of their (loaded) weights."""
    masks_from_zeros(model, list(record.modules))
