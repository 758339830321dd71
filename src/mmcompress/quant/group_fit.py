"""Per-group steps on layers whose inputs the group size does not divide: per-channel instead, said aloud.

Real models mix widths: MobileNetV2's 1x1 convs have 144 or 960 inputs, Whisper's first Conv1d
240; a group size of 128 fits none of them. Such a layer gets one step per output channel (finer
than or equal to any group of its row when the row is shorter than the group) and a warning.
A layer whose rows are all no longer than the group (a 3x3 conv on one channel: 9 inputs, group 32)
is one group per row, which *is* per-channel: its config says so, so the record does not claim a
group of 32 on a row of 9.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mmcompress.errors import shortened


def row_lengths(module: nn.Module) -> list[int]:
    """Inputs per output row of every weight matrix a layer quantizes (LSTM/GRU: one per matrix).

    Example:
        >>> row_lengths(nn.Conv2d(16, 8, 3))
        [144]
    """
    if isinstance(module, nn.RNNBase):
        return [getattr(module, n).shape[1] for n in module._flat_weights_names if n.startswith("weight")]
    weight: torch.Tensor = module.weight
    return [weight[0].numel()]


def fits(group_size: int, lengths: list[int]) -> bool:
    """Whether every row is either one group (shorter than or equal to it) or a whole number of groups.

    Example:
        >>> fits(128, [256, 64]), fits(128, [144])
        (True, False)
    """
    return all(n <= group_size or n % group_size == 0 for n in lengths)


def fit_group_sizes(chosen: list[tuple[str, nn.Module, object]]) -> list[tuple[str, nn.Module, object]]:
    """`chosen` (name, module, QuantConfig) with per-channel steps where a per-group config does not fit.

    Example:
        >>> chosen = fit_group_sizes([("conv1", nn.Conv1d(80, 384, 3), QuantConfig(granularity="per_group"))])
    """
    out, misfits = [], []
    for name, module, cfg in chosen:
        lengths = row_lengths(module) if cfg.granularity == "per_group" else []
        misfit = bool(lengths) and not fits(cfg.group_size, lengths)
        if misfit:
            misfits.append(f"{name} ({'/'.join(map(str, lengths))} inputs)")
        if misfit or (lengths and max(lengths) <= cfg.group_size):  # one group per row is per-channel
            cfg = cfg.model_copy(update={"granularity": "per_channel"})
        out.append((name, module, cfg))
    if misfits:
        warnings.warn(
            f"quantize: the group size does not divide the inputs of {len(misfits)} layer(s); they get one step "
            f"per output channel instead: {shortened(misfits)}",
            UserWarning,
            stacklevel=3,
        )
    return out
