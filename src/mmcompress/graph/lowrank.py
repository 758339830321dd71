"""Low-rank factorization: a Linear (or 1x1 Conv2d) layer W (out, in) becomes two smaller layers
W ~= (U_r S_r) (V_r^T) by truncated SVD, with the rank chosen per layer by an energy threshold
or a parameter budget. Layers where the factorization would not save parameters are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from mmcompress.core.batches import check_finite_weights
from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record, note_edit
from mmcompress.core.targets import as_mapping, resolve_targets
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for, require_matches


class LowRankConfig(FrozenConfig):
    """Rank rule for one target: keep `energy` of the squared singular values, or keep `params`
    (a fraction of the layer's weights), or a fixed `rank`; exactly one.

    Example:
        >>> LowRankConfig(energy=0.9).energy
        0.9
    """

    energy: float | None = Field(None, gt=0, le=1)
    params: float | None = Field(None, gt=0, lt=1)
    rank: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_rule(self) -> LowRankConfig:
        given = [k for k in ("energy", "params", "rank") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of energy, params and rank, not {given}")
        return self

    def choose_rank(self, singular: torch.Tensor, out_features: int, in_features: int) -> int:
        """The rank for a layer with these singular values (descending) and shape."""
        if self.rank is not None:
            return min(self.rank, len(singular))
        if self.params is not None:
            return max(1, int(self.params * out_features * in_features / (out_features + in_features)))
        energy = self.energy if self.energy is not None else 0.9
        cumulative = torch.cumsum(singular.double() ** 2, 0) / (singular.double() ** 2).sum().clamp_min(1e-30)
        return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64)).item()) + 1


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors of W (out, in): A (out, r) = U_r sqrt(S_r), B (r, in) = sqrt(S_r) V_r^T.

    Example:
        >>> a, b = svd_factors(torch.randn(8, 6), 6)
        >>> torch.allclose(a @ b, w)   # full rank: exact
    """
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def _matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().flatten(1)  # (out, in) for Linear and 1x1 convolutions


def _factorized(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    rank = a.shape[1]
    if isinstance(module, nn.Linear):
        first, second = nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features)
    else:
        first = nn.Conv2d(module.in_channels, rank, 1, stride=module.stride, bias=False)
        second = nn.Conv2d(rank, module.out_channels, 1)
    with torch.no_grad():
        first.weight.copy_(b.view_as(first.weight))
        second.weight.copy_(a.view_as(second.weight))
        if module.bias is not None:
            second.bias.copy_(module.bias)
        else:
            second.bias = None
    return nn.Sequential(first, second)


def _supported(module: nn.Module) -> bool:
    return type(module) is nn.Linear or (
        type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1 and module.padding == (0, 0)
    )


def factorize(model: nn.Module, config: LowRankConfig | Mapping[str, Any] | None = None) -> Record:
    """Replace targeted Linear / 1x1 Conv2d layers by two low-rank layers, in place.

    Args:
        model: edited in place.
        config: a LowRankConfig or a target mapping of them (default: energy 0.9 everywhere).

    Returns:
        Record with each layer's rank, parameters before/after and relative weight error
        ||W - AB||_F / ||W||_F; layers where rank * (in + out) >= in * out are listed as kept.

    Example:
        >>> rec = factorize(model, {"re:.*mlp.*": {"energy": 0.95}})
    """

    mapping = as_mapping(config if config is not None else LowRankConfig(), LowRankConfig)
    chosen = list(resolve_targets(model, mapping, _supported, adapter_for(model).modality_of))
    require_matches(chosen, mapping, model)
    check_finite_weights([(n, m) for n, m, _ in chosen], "be factorized")
    record = Record("factorize", {k: (None if c is None else c.to_dict()) for k, c in mapping.items()})
    plans = []
    for name, module, cfg in chosen:
        weight = _matrix(module)
        out_f, in_f = weight.shape
        singular = torch.linalg.svdvals(weight.double())
        rank = cfg.choose_rank(singular, out_f, in_f)
        if rank * (out_f + in_f) >= out_f * in_f:
            record.modules[name] = {"kept": True, "reason": f"rank {rank} saves no parameters"}
            continue
        tail = (singular[rank:] ** 2).sum().sqrt() / (singular**2).sum().sqrt().clamp_min(1e-30)
        plans.append((name, module, rank))
        record.modules[name] = {
            "rank": rank, "params_before": out_f * in_f, "params_after": rank * (out_f + in_f),
            "relative_error": float(tail),
        }  # fmt: skip
    for name, module, rank in plans:
        a, b = svd_factors(_matrix(module), rank)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, _factorized(module, a, b))
    if not plans:
        raise ConfigError("no targeted layer gets smaller under this rank rule; lower energy, params or rank")
    record.metrics["factorized"] = float(len(plans))
    note_edit(model, record)
    return record


def replay_factorize(model: nn.Module, record: Record) -> None:
    """Rebuild the factorized structure from a record (weights come from a checkpoint)."""
    for name, info in record.modules.items():
        if info.get("kept"):
            continue
        module = model.get_submodule(name)
        rank = info["rank"]
        out_f, in_f = _matrix(module).shape
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                _factorized(module, torch.zeros(out_f, rank), torch.zeros(rank, in_f)))  # fmt: skip
