"""Attention modules through the adapter's attention specs: their q/k/v/o projections, head count and
head size, and how to set a new head count (structured pruning cuts heads, distillation reads maps)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmcompress.errors import UnsupportedError
from mmcompress.models.adapter import Adapter


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


def _attr(module: nn.Module, path: str) -> Any:
    owner, _, attr = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _set_attr(module: nn.Module, path: str, value: Any) -> None:
    owner, _, attr = path.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, value)
