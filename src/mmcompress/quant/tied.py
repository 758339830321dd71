"""Tied weights under quantization: layers that shared one float weight share one set of integer
codes and steps, so the weight is quantized once, stored once and counted once.

Whisper's `proj_out` (Linear, out = vocabulary) and `decoder.embed_tokens` (Embedding, a row per
token) share a (vocab, d_model) matrix; a Linear's per-output-channel steps are an Embedding's
per-row steps and per-group steps split the same columns, so one set of codes serves both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mmcompress.core.shared_params import modules_sharing_weight, weight_groups

SHARED_BUFFERS = ("qweight", "scale", "zero_point")


def with_tied_partners(
    model: nn.Module, chosen: list[tuple], mapping: Mapping[str, Any], supported: Callable[[nn.Module], bool]
) -> list[tuple]:
    """`chosen` (name, module, config) plus the float layers whose weight is one tensor with a chosen
    layer's and that no target chose: each takes that layer's grid, weight-only, so `tie_quantized`
    gives both one set of codes. Without this a table quantized alone (auto's embedding stage on
    Whisper's token table) left its tied `proj_out` float, then a later pass quantized it again: the
    51864 x 384 matrix stored twice (58.9 MB instead of 38.8). A partner the mapping skips by its
    exact name (`{"proj_out": None}`) stays float, with `tie_quantized`'s warning.

    Example:
        >>> [n for n, _, _ in with_tied_partners(whisper, [("model.decoder.embed_tokens", emb, cfg)], {}, ok)]
        ['model.decoder.embed_tokens', 'proj_out']
    """
    names = {name for name, _, _ in chosen}
    sharing = modules_sharing_weight(model)
    partners = []
    for name, _, cfg in chosen:
        for other in sharing.get(name, ()):
            module = model.get_submodule(other)
            if other in names or (other in mapping and mapping[other] is None) or not supported(module):
                continue
            partners.append((other, module, cfg.model_copy(update={"activations": "none", "smoothquant": None})))
            names.add(other)
    return [*chosen, *partners]


def tie_quantized(model: nn.Module, built: dict[str, tuple[nn.Module, dict]]) -> list[list[str]]:
    """Make quantized replacements of tied float layers share the codes of one of them.

    The source is the member solved with GPTQ if any (its solution saw calibration data), else the
    first. Members whose grids or shapes differ stay separate with a warning (stored twice).
    Record entries of the others get `tied_to` (the source) and the source's method and SQNR.

    Args:
        model: the float model (before the replacements are swapped in).
        built: name -> (quantized replacement, record entry), edited in place.

    Returns:
        The groups that were tied, source first.

    Example:
        >>> tie_quantized(whisper, built)
        [['model.decoder.embed_tokens', 'proj_out']]
    """
    sharing = modules_sharing_weight(model)
    alone = {n: [o for o in sharing[n] if o not in built] for n in built if n in sharing}
    for name, others in alone.items():
        if others:
            warnings.warn(
                f"quantize: {name!r} shares its weight with {others}, which stay float: the weight is stored "
                f"twice (float and integer codes); target them together",
                UserWarning,
                stacklevel=3,
            )
    tied = []
    for group in weight_groups(model, list(built)):
        source = next((n for n in group if built[n][1].get("method") == "gptq"), group[0])
        members = [source]
        for name in group:
            if name == source:
                continue
            if not _compatible(built[source][0], built[name][0]):
                warnings.warn(
                    f"quantize: {name!r} shares its float weight with {source!r} but is quantized on another "
                    f"grid; both codes are kept (the weight is stored twice)",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            share_codes(built[source][0], built[name][0])
            info, source_info = built[name][1], built[source][1]
            info.update(tied_to=source, method=source_info["method"], sqnr_db=source_info["sqnr_db"])
            members.append(name)
        if len(members) > 1:
            tied.append(members)
    return tied


def _compatible(a: nn.Module, b: nn.Module) -> bool:
    if a.grid != b.grid:
        return False
    for buf in SHARED_BUFFERS:
        x, y = getattr(a, buf, None), getattr(b, buf, None)
        if (x is None) != (y is None) or (x is not None and x.shape != y.shape):
            return False
    return True


def share_codes(source: nn.Module, target: nn.Module) -> None:
    """Point `target`'s code/step/zero-point buffers at `source`'s (one tensor each, two names)."""
    for buf in SHARED_BUFFERS:
        if getattr(source, buf, None) is not None:
            target._buffers[buf] = source._buffers[buf]


def tie_replayed(model: nn.Module, groups: list[list[str]]) -> None:
    """After `replay_quantize`: tie the replayed modules of each group (from `weight_groups` on the
    float model, before the replacements) that sit on one grid, as `quantize` did.

    Example:
        >>> groups = weight_groups(fresh, list(record.modules)); ...replace...; tie_replayed(fresh, groups)
    """
    for group in groups:
        modules = [model.get_submodule(n) for n in group]
        for module in modules[1:]:
            if _compatible(modules[0], module):
                share_codes(modules[0], module)
