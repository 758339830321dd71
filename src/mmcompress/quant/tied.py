"""Tied weights under quantization: layers that shared one float weight share one set of integer
codes and steps, so the weight is quantized once, stored once and counted once.

Whisper's `proj_out` (Linear, out = vocabulary) and `decoder.embed_tokens` (Embedding, a row per
token) share a (vocab, d_model) matrix; a Linear's per-output-channel steps are an Embedding's
per-row steps and per-group steps split the same columns, so one set of codes serves both.
"""

from __future__ import annotations

import warnings

from torch import nn

from mmcompress.core.shared_params import modules_sharing_weight, weight_groups

SHARED_BUFFERS = ("qweight", "scale", "zero_point")


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
