"""Students built from a teacher: keep every k-th transformer layer (initialised from the
teacher's layers, as DistilBERT did), or narrow a CNN by removing channels."""

from __future__ import annotations

import copy

from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for


def layer_stack(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer layers: at `path`, the adapter's stack of a tower
    ("modality:text"), or the longest ModuleList in the model.

    Example:
        >>> layer_stack(MiniLMEncoder())[0]
        'bert.encoder.layer'
        >>> layer_stack(llava, "modality:image")[0]
        'model.vision_tower.encoder.layers'
    """
    if path is not None and path.startswith("modality:"):
        stacks = adapter_for(model).layers
        if path[9:] not in stacks:
            raise ConfigError(f"the model's adapter names no layer stack for {path!r}; known: {sorted(stacks)}")
        path = stacks[path[9:]]
    if path is not None:
        stack = model.get_submodule(path)
        if not isinstance(stack, nn.ModuleList):
            raise ConfigError(f"{path!r} is a {type(stack).__name__}, not a ModuleList of layers")
        return path, stack
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no ModuleList of layers; pass path=")
    return max(lists, key=lambda item: len(item[1]))


def every_kth(layers: int, k: int) -> list[int]:
    """Indices of every k-th layer ending with the last one: every_kth(6, 2) -> [1, 3, 5].

    Example:
        >>> every_kth(12, 3)
        [2, 5, 8, 11]
    """
    if not 1 <= k <= layers:
        raise ConfigError(f"cannot keep every {k}-th of {layers} layers")
    return list(range(k - 1, layers, k))


def keep_layers(teacher: nn.Module, keep: list[int], path: str | None = None) -> nn.Module:
    """A copy of `teacher` with only the layers `keep` of its layer stack (weights copied).

    Hugging Face configs are updated (`num_hidden_layers`) so the student saves and reloads.

    Example:
        >>> student = keep_layers(MiniLMEncoder(), every_kth(6, 2))   # 3 of 6 layers
    """
    student = copy.deepcopy(teacher)
    drop_layers(student, keep, path)
    return student


def drop_layers(model: nn.Module, keep: list[int], path: str | None = None) -> str:
    """In place: keep only the layers `keep` of the model's layer stack; returns the stack's path.

    Example:
        >>> drop_layers(model, [1, 3, 5], "text_tower.bert.encoder.layer")
        'text_tower.bert.encoder.layer'
    """
    name, stack = layer_stack(model, path)
    bad = [i for i in keep if not 0 <= i < len(stack)]
    if bad or not keep or len(set(keep)) != len(keep):
        raise ConfigError(f"layers {keep} do not fit the {len(stack)} layers of {name!r}")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(stack[i] for i in sorted(keep)))
    owner = model.get_submodule(name.split(".")[0]) if "." in name else model
    for module in [model, *owner.modules()]:
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(keep)
    for index, layer in enumerate(model.get_submodule(name)):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = index
    return name
