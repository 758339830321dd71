"""What a structured-pruning call achieved: parameters and multiply-accumulates before and after,
next to what was requested, and the layers a target asked for that kept their width.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.prune.dependency import eval_mode

log = logging.getLogger("mmcompress.prune")

RATIO_NOTE = 0.02  # an entry whose removed fraction differs more than this from its request is reported


def count_macs(model: nn.Module, inputs: Any) -> float:
    """Multiply-accumulates of one forward pass on `inputs` (per batch) in Conv1d/2d, Linear, LSTM/GRU and
    the projections of nn.MultiheadAttention.

    Runs in eval mode without gradients (BatchNorm statistics stay); restores every module's mode.

    Example:
        >>> count_macs(nn.Linear(4, 3), torch.zeros(2, 4))
        24.0
    """
    total = [0.0]

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        out = out[0] if isinstance(out, tuple) else out
        if isinstance(module, nn.MultiheadAttention):  # packed: its projections are no module calls
            total[0] += _attention_projection_macs(module, [*args, *kwargs.values()])
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            total[0] += out.numel() * module.weight[0].numel()
        elif isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features
        elif isinstance(module, (nn.LSTM, nn.GRU)):
            gates = 4 if isinstance(module, nn.LSTM) else 3
            steps = out.numel() // module.hidden_size
            total[0] += steps * gates * module.hidden_size * (module.input_size + module.hidden_size)

    counted = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM, nn.GRU, nn.MultiheadAttention)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad(), eval_mode(model):
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _attention_projection_macs(mha: nn.MultiheadAttention, inputs: list) -> float:
    """The q/k/v/out projections of an nn.MultiheadAttention call (query, key, value first)."""
    query, key, value = inputs[:3]
    rows_q, rows_k, rows_v = query.numel() / mha.embed_dim, key.numel() / mha.kdim, value.numel() / mha.vdim
    return mha.embed_dim * (2 * rows_q * mha.embed_dim + rows_k * mha.kdim + rows_v * mha.vdim)


def warn_kept(kept: dict[str, str]) -> None:
    """One UserWarning naming every targeted layer that keeps its width, grouped by reason."""
    if not kept:
        return
    by_reason: dict[str, list[str]] = {}
    for name, reason in kept.items():
        by_reason.setdefault(reason, []).append(name)
    parts = [
        f"{', '.join(repr(n) for n in names[:8])}{f' and {len(names) - 8} more' if len(names) > 8 else ''} ({reason})"
        for reason, names in by_reason.items()
    ]
    warnings.warn(
        f"structured pruning kept {len(kept)} targeted layer(s) at full width: " + "; ".join(parts),
        UserWarning,
        stacklevel=3,
    )


def warn_ratios(entries: dict[str, dict]) -> None:
    """One UserWarning for entries whose removed fraction differs from the requested ratio (rounding);
    groups allocated globally differ on purpose (their overall ratio is in the record's metrics)."""
    off = {
        n: e
        for n, e in entries.items()
        if "ratio" in e
        and e.get("scope") not in ("global", "sensitivity")
        and abs(e["removed_ratio"] - e["ratio"]) > RATIO_NOTE
    }
    if not off:
        return
    parts = []
    for name, e in off.items():
        removed = f"{e['before'] - e['kept']} of {e['before']} {e['structure']}"
        parts.append(f"{name!r}: {removed} ({e['removed_ratio']:.0%}, asked {e['ratio']:.0%})")
    warnings.warn(
        "structured pruning removed a different fraction than asked (whole units): " + "; ".join(parts[:12]),
        UserWarning,
        stacklevel=3,
    )


def summarise(metrics: dict[str, float]) -> None:
    """Log one line: removed parameters and MACs vs the requested ratio."""
    line = f"structured pruning removed {metrics['removed']:.1%} of parameters"
    if "macs_removed" in metrics:
        line += f", {metrics['macs_removed']:.1%} of MACs"
    if "requested_ratio" in metrics:
        line += f"; asked {metrics['requested_ratio']:.0%} of the units of {int(metrics['groups'])} group(s)"
        line += f", removed {metrics['units_removed']:.1%} of their units"
    log.info(line)
