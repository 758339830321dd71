"""Test helpers: the masked reference of a structured-pruning record (same units zeroed, nothing
removed), and the mean-filled reference of a compensated record (the removed units reach their
consumers as their expected value)."""

from __future__ import annotations

import torch
from torch import nn


def mask_like_record(model: nn.Module, record) -> nn.Module:
    """Zero, in place, every parameter of the units `record` removed: producer rows (all gates of a
    recurrent unit), depthwise filters, and the scale and shift of their norms, so each removed
    unit outputs exactly 0 (the activations on the way map 0 to 0). Heads: q/k/v rows are not
    enough (softmax), so o's columns of removed heads are zeroed instead."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for _name, entry in record.modules.items():
            if entry["structure"] != "channels":
                continue
            group = entry["group"]
            drop = sorted(set(range(group["size"])) - set(entry["keep"]))
            for member in [*group["producers"], *group.get("depthwise", []), *group["norms"]]:
                _zero_units(modules[member], drop)
    return model


def _zero_units(layer: nn.Module, drop: list[int]) -> None:
    if isinstance(layer, (nn.LSTM, nn.GRU)):
        gates, hidden = (4 if isinstance(layer, nn.LSTM) else 3), layer.hidden_size
        rows = [u + g * hidden for g in range(gates) for u in drop]
        for pname in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(layer, pname)[rows] = 0
        return
    for pname in ("weight", "bias"):
        param = getattr(layer, pname, None)
        if param is not None:
            param[drop] = 0


def fill_like_record(model: nn.Module, record, means: dict[str, torch.Tensor]) -> list:
    """Mask like `record`, then make every consumer see the removed columns as `means[consumer]`
    (forward pre-hooks; returns the handles). This is what mean compensation promises, exactly for
    1x1 convolutions and Linear consumers (a padded k x k kernel sees zeros at the border)."""
    from mmcompress.prune.compensate import consumers_of
    from mmcompress.prune.dependency import ChannelGroup

    mask_like_record(model, record)
    plans = []
    for entry in record.modules.values():
        if entry["structure"] == "channels":
            group = entry["group"]
            consumers = [tuple(c) for c in group["consumers"]]
            plans.append((ChannelGroup(group["producers"], group["size"], consumers=consumers), entry["keep"]))
    modules = dict(model.named_modules())
    handles = []
    for name, cols in consumers_of(plans).items():
        fill = torch.nan_to_num(means[name][cols], nan=0.0)

        def hook(module, args, cols=cols, fill=fill):
            x = args[0].clone()
            index = [slice(None)] * x.dim()
            index[1 if isinstance(module, nn.Conv2d) else -1] = cols
            shape = [1] * x.dim()
            shape[1 if isinstance(module, nn.Conv2d) else -1] = len(cols)
            x[tuple(index)] = fill.view(shape).to(x.dtype)
            return (x, *args[1:])

        handles.append(modules[name].register_forward_pre_hook(hook))
    return handles
