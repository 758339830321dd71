"""Attention heads for structured pruning: find a module's q/k/v/o through the adapter's attention
specs (`models/attention_specs.py`, or an adapter's own), score heads, shrink them.

Each attention module is scored and cut on its own: heads are never ranked against another
layer's (so an encoder's self-attention and a decoder's cross-attention, or two towers, cannot
take each other's budget).
"""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.models.adapter import Adapter
from mmcompress.models.attention import head_parts
from mmcompress.prune.channel_importance import normalised
from mmcompress.prune.importance import scores_for


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
