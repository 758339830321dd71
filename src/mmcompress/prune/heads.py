"""Attention heads for structured pruning: find a module's q/k/v/o through the adapter's attention
specs (`models/attention_specs.py`, or an adapter's own), score heads, shrink them.

Each attention module is scored and cut on its own: heads are never ranked against another
layer's (so an encoder's self-attention and a decoder's cross-attention, or two towers, cannot
take each other's budget).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmcompress.errors import UnsupportedError
from mmcompress.models.adapter import Adapter
from mmcompress.prune.channel_importance import normalised
from mmcompress.prune.importance import scores_for


def is_attention(module: nn.Module, adapter: Adapter) -> bool:
    return adapter.attention_spec(module) is not None


def head_parts(module: nn.Module, adapter: Adapter | None = None):
    """(q, k, v, o, heads, head_dim, set_heads) for an attention module the adapter knows, else None.

    Example:
        >>> q, k, v, o, heads, head_dim, set_heads = head_parts(Attention(64, 4))
        >>> heads, head_dim
        (4, 16)
    """
    spec = (adapter or Adapter()).attention_spec(module)
    if spec is None:
        return None
    q, k, v, o = (module.get_submodule(p) for p in (spec.q, spec.k, spec.v, spec.o))
    if spec.kv_groups is not None and _attr(module, spec.kv_groups) != 1:
        raise UnsupportedError(
            f"{type(module).__name__} uses grouped-query attention ({_attr(module, spec.kv_groups)} query heads "
            "per key/value head); pruning its heads is not supported"
        )
    if spec.head_dim:
        head_dim = int(_attr(module, spec.head_dim))
    else:
        head_dim = q.out_features // int(_attr(module, spec.head_counts[0]))
    heads = q.out_features // head_dim

    def set_heads(n: int) -> None:
        for path in spec.head_counts:
            _set_attr(module, path, n)
        for path in spec.widths:
            _set_attr(module, path, n * head_dim)

    return q, k, v, o, heads, head_dim, set_heads


def head_params(name: str, module: nn.Module, adapter: Adapter) -> dict[str, torch.Tensor]:
    """The weights whose gradients score `module`'s heads, keyed for `gradient_stats`."""
    q, k, v, o, *_ = head_parts(module, adapter)
    return {f"{name}.{i}": layer.weight for i, layer in enumerate((q, k, v, o))}


def head_scores(name: str, module: nn.Module, method: str, stats: dict, adapter: Adapter) -> torch.Tensor:
    """Importance of each head of one attention module: (heads,), q/k/v rows and o columns summed."""
    q, k, v, o, heads, head_dim, _ = head_parts(module, adapter)
    score = 0
    for i, layer in enumerate((q, k, v, o)):
        s = scores_for(method, layer.weight, stats.get(f"{name}.{i}"))
        per_unit = s.sum(0) if layer is o else s.sum(1)  # o: its inputs are the heads' outputs
        score = score + normalised(per_unit.view(heads, head_dim).sum(1))
    return score


def _attr(module: nn.Module, path: str) -> Any:
    owner, _, attr = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _set_attr(module: nn.Module, path: str, value: Any) -> None:
    owner, _, attr = path.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, value)
