"""Weight sharing (Deep Compression, Han et al. 2016): the non-zero weights of a layer are
clustered by k-means (linear centroid initialisation) into 2^bits shared values; each weight then
stores a `bits`-bit cluster index. Fine-tuning trains the shared centroids (the gradient of a
centroid is the sum of its weights' gradients) through a parametrization, so any training loop
works unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from mmcompress.core.batches import check_finite_weights
from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.core.targets import as_mapping, resolve_targets
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for, require_matches


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means with linear initialisation over [min, max]: (n,) -> centroids (k,), codes (n,).

    Linear initialisation keeps centroids on the rare large weights, which matter most (the
    paper's finding); empty clusters keep their position.

    Example:
        >>> c, codes = kmeans_1d(torch.tensor([-1.0, -0.9, 0.5, 0.6]), 2)
        >>> c.tolist(), codes.tolist()
        ([-0.949999988079071, 0.550000011920929], [0, 0, 1, 1])
    """
    if clusters < 1:
        raise ConfigError(f"k-means needs at least one cluster, got {clusters}")
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return torch.zeros(clusters), torch.zeros(0, dtype=torch.long)
    centroids = torch.linspace(float(values.min()), float(values.max()), clusters)
    for _ in range(iterations):
        codes = _nearest(values, centroids)
        sums = torch.zeros(clusters).index_add_(0, codes, values)
        counts = torch.zeros(clusters).index_add_(0, codes, torch.ones_like(values))
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    return centroids, _nearest(values, centroids)


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value: (n,), (k,) -> (n,) (sorted search, O(n log k))."""
    order = torch.argsort(centroids)
    ordered = centroids[order]
    right = torch.searchsorted(ordered, values).clamp(1, len(ordered) - 1) if len(ordered) > 1 else None
    if right is None:
        return torch.zeros_like(values, dtype=torch.long)
    left = right - 1
    pick = torch.where((values - ordered[left]).abs() <= (ordered[right] - values).abs(), left, right)
    return order[pick]


class SharedWeights(nn.Module):
    """Parametrization: weight = centroids[codes] where the mask keeps a weight, 0 elsewhere.

    The stored parameter is the (k,) centroid vector, so an optimizer trains the shared values.
    """

    def __init__(self, codes: torch.Tensor, mask: torch.Tensor, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codes", codes.to(torch.uint8))  # at most 2^8 clusters
        self.register_buffer("mask", mask.bool())
        self._initial: torch.Tensor | None = centroids

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return centroids[self.codes.long()] * self.mask

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored parameter for a weight: the centroids, given once at registration."""
        if self._initial is None:
            raise RuntimeError("shared weights are trained through their centroids; assign those instead")
        centroids, self._initial = self._initial, None
        return centroids


class ShareConfig(FrozenConfig):
    """Weight sharing of one target: `bits` per cluster index (2^bits shared values per layer);
    convolutions use `conv_bits` when given (the paper: 8 for convolutions, 5 for fully connected).

    Example:
        >>> ShareConfig(bits=5, conv_bits=8).conv_bits
        8
    """

    bits: int = Field(5, ge=1, le=8)
    conv_bits: int | None = Field(None, ge=1, le=8)
    layer_types: tuple[str, ...] = ("Linear", "Conv2d", "Conv1d")


def share_weights(model: nn.Module, config: ShareConfig | Mapping[str, Any] | None = None) -> Record:
    """Cluster each targeted layer's non-zero weights into 2^bits shared values, in place.

    Pruned (zero) weights stay zero. The layers keep their type; `weight` becomes a
    parametrization over trainable centroids (call `fuse_shared_weights` after fine-tuning).

    Args:
        model: edited in place.
        config: a ShareConfig or a target mapping of them (`{"re:.*conv.*": {"bits": 8}, "_default": {"bits": 5}}`).

    Returns:
        Record with each layer's bits, clusters used and weight error.

    Example:
        >>> rec = share_weights(lenet, {"re:features.*": {"bits": 8}, "_default": {"bits": 5}})
    """

    mapping = as_mapping(config if config is not None else ShareConfig(), ShareConfig)
    supported = (nn.Linear, nn.Conv2d, nn.Conv1d)
    found = resolve_targets(model, mapping, lambda m: type(m) in supported, adapter_for(model).modality_of)
    chosen = [(n, m, c) for n, m, c in found if type(m).__name__ in c.layer_types]
    require_matches(chosen, mapping, model)
    check_finite_weights([(n, m) for n, m, _ in chosen], "share weights")
    record = Record("share_weights", {k: (None if c is None else c.to_dict()) for k, c in mapping.items()})
    for name, module, cfg in chosen:
        if parametrize.is_parametrized(module, "weight"):
            raise ConfigError(f"layer {name!r} already shares its weights")
        weight = module.weight.detach()
        mask = weight != 0
        bits = cfg.conv_bits if cfg.conv_bits is not None and weight.dim() > 2 else cfg.bits
        centroids, codes = kmeans_1d(weight[mask], 2**bits)
        full_codes = torch.zeros(weight.shape, dtype=torch.long)
        full_codes[mask] = codes
        shared = SharedWeights(full_codes, mask, centroids.to(weight.dtype))
        if "weight_mask" in module._buffers:  # the parametrization's own mask keeps pruned weights at zero
            del module._buffers["weight_mask"]
        parametrize.register_parametrization(module, "weight", shared, unsafe=True)
        error = float((module.weight.detach() - weight).pow(2).mean().sqrt())
        record.modules[name] = {"bits": bits, "clusters_used": int(codes.unique().numel()), "rms_error": error}
    return record


def fuse_shared_weights(model: nn.Module) -> int:
    """Replace every weight-sharing parametrization by its dense weight (exactly 2^bits values +
    zeros remain); returns how many layers.

    Example:
        >>> fuse_shared_weights(lenet)
        4
    """
    count = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, SharedWeights) for p in module.parametrizations["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            count += 1
    return count
