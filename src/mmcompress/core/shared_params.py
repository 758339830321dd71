"""Tensors that several names share (tied weights: Whisper's `proj_out` and
`decoder.embed_tokens`, a language model's head and input embedding, ALBERT's shared layers).

A shared tensor must be changed once, stored once and counted once. Two names share a tensor when
they view the same memory with the same offset, shape and strides (the same Parameter object, or a
buffer that was tied to another module's buffer).
"""

from __future__ import annotations

import torch
from torch import nn


def tensor_key(t: torch.Tensor) -> tuple:
    """Identity of the memory a tensor views: equal keys mean one shared tensor.

    Example:
        >>> w = torch.zeros(3)
        >>> tensor_key(w) == tensor_key(w.view(3)), tensor_key(w) == tensor_key(w.clone())
        (True, False)
    """
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def shared_tensor_groups(model: nn.Module) -> list[list[str]]:
    """Groups (2 or more names, in state-dict order) of parameters and buffers that are one tensor.

    Example:
        >>> shared_tensor_groups(whisper)
        [['model.decoder.embed_tokens.weight', 'proj_out.weight']]
    """
    groups: dict[tuple, list[str]] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        if t.numel() > 0:
            groups.setdefault(tensor_key(t), []).append(name)
    order = {name: i for i, name in enumerate(model.state_dict(keep_vars=True))}
    found = [sorted(set(g), key=lambda n: order.get(n, len(order))) for g in groups.values()]
    return [g for g in found if len(g) > 1]


def modules_sharing_weight(model: nn.Module) -> dict[str, list[str]]:
    """Module name -> the other modules whose `weight` is the same tensor (tied layers only).

    Example:
        >>> modules_sharing_weight(whisper)["proj_out"]
        ['model.decoder.embed_tokens']
    """
    out: dict[str, list[str]] = {}
    for group in shared_tensor_groups(model):
        owners = [n.rpartition(".")[0] for n in group if n.rpartition(".")[2] == "weight"]
        for owner in owners:
            others = [o for o in owners if o != owner]
            if others:
                out[owner] = others
    return out


def weight_groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Groups (2 or more, in the order of `names`) of the given modules whose weights are one tensor.

    Example:
        >>> weight_groups(whisper, ["model.decoder.embed_tokens", "proj_out", "model.encoder.conv1"])
        [['model.decoder.embed_tokens', 'proj_out']]
    """
    wanted = set(names)
    sharing = modules_sharing_weight(model)
    seen: set[str] = set()
    groups = []
    for name in names:
        if name in seen or name not in sharing:
            continue
        group = [name] + [o for o in names if o in sharing[name] and o in wanted]
        seen.update(group)
        if len(group) > 1:
            groups.append(group)
    return groups
