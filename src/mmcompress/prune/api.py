"""`prune(model, config)`: unstructured magnitude pruning with masks kept through fine-tuning."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Literal

from pydantic import Field
from torch import nn

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.core.targets import require_matches, resolve_targets
from mmcompress.models.adapter import adapter_for
from mmcompress.prune.magnitude import layer_masks
from mmcompress.prune.masks import masks_from_zeros, set_mask
from mmcompress.quant.api import LAYER_TYPES, as_mapping


class PruneConfig(FrozenConfig):
    """Unstructured pruning settings.

    Attributes:
        sparsity: fraction of weights to remove, in [0, 1).
        method: "magnitude" (|w|).
        scope: "global" (one threshold across every layer this config targets) or "layer".
        layer_types: layer types selected by `_default`/regex/modality keys (embeddings are
            left dense by default: rows of rare tokens are not small, just rarely used).

    Example:
        >>> PruneConfig(sparsity=0.5, scope="layer").sparsity
        0.5
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    method: Literal["magnitude"] = "magnitude"
    scope: Literal["global", "layer"] = "global"
    layer_types: tuple[Literal["linear", "conv", "embedding"], ...] = ("linear", "conv")


def prune(model: nn.Module, config: PruneConfig | Mapping[str, object] | None = None) -> Record:
    """Prune weights in place by magnitude; masks stay attached so fine-tuning keeps zeros.

    Each distinct config in a target mapping forms its own group, so
    `{"modality:image": {"sparsity": 0.6}, "modality:text": {"sparsity": 0.3}}` gives per-modality
    budgets, each with a global threshold inside its tower.

    Args:
        model: edited in place.
        config: a PruneConfig or a target mapping of key -> PruneConfig / dict / None
            (default: PruneConfig()).

    Returns:
        A Record with each module's sparsity and the achieved overall sparsity.

    Example:
        >>> rec = prune(model, PruneConfig(sparsity=0.5))
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
    record = Record("prune", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    total = zeros = 0
    for cfg, members in groups.items():
        masks = layer_masks([m.weight for _, m in members], cfg.sparsity, cfg.scope)
        for (name, module), mask in zip(members, masks, strict=True):
            set_mask(module, mask)
            pruned = int((~mask).sum())
            record.modules[name] = {"sparsity": round(pruned / mask.numel(), 4), "numel": mask.numel()}
            total, zeros = total + mask.numel(), zeros + pruned
    record.metrics["sparsity"] = zeros / total if total else 0.0
    record.metrics["pruned_weights"] = float(zeros)
    return record


def replay_prune(model: nn.Module, record: Record) -> None:
    """Re-attach masks for `record`'s modules from the zeros of their (loaded) weights."""
    masks_from_zeros(model, list(record.modules))
