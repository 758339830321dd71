"""Report targeted layers that stay float: a target that matched a layer must never be a silent no-op."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mmcompress.core.targets import first_match


def float_left(
    model: nn.Module,
    mapping: Mapping[str, Any],
    is_supported: Callable[[nn.Module], bool],
    modality_of: Callable[[str], str | None],
) -> dict[str, str]:
    """Name -> type of every module a non-None target selects that holds a weight matrix of its own
    (a parameter with 2 or more dimensions) but that the algorithm cannot handle.

    Example:
        >>> float_left(nn.Sequential(nn.Conv3d(1, 2, 3)), {"_default": {}}, lambda m: False, lambda n: None)
        {'0': 'Conv3d'}
    """
    left = {}
    for name, module in model.named_modules():
        if not name or is_supported(module):  # the model's own parameters cannot be targeted by name
            continue
        if not any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            continue
        if first_match(mapping, name, modality_of(name)) is not None:
            left[name] = type(module).__name__
    return left


def warn_float_left(model, mapping, is_supported, modality_of, verb: str = "quantize") -> dict[str, str]:
    """`float_left`, with one UserWarning grouping the layers by type (returns the same mapping).

    Example:
        >>> left = warn_float_left(model, {"_default": {}}, supported, adapter.modality_of)
    """
    left = float_left(model, mapping, is_supported, modality_of)
    if left:
        by_type: dict[str, list[str]] = {}
        for name, kind in left.items():
            by_type.setdefault(kind, []).append(name)
        parts = "; ".join(
            f"{kind} x{len(v)}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for kind, v in by_type.items()
        )
        warnings.warn(
            f"{verb}: {len(left)} targeted layer(s) stay float (no {verb} support for their type): {parts}",
            UserWarning,
            stacklevel=3,
        )
    return left
