"""Least-squares reconstruction of the layers that consume removed channels (He et al. 2017,
"Channel Pruning"; ThiNet): the kept input weights are refit so the layer's output on calibration
data stays as close as possible to the unpruned output.

A consumer y = W x + b (x: its input columns; a conv's unfolded patches) loses columns R. With
z = [x; 1] (the unpruned model's input), z' its kept columns K' and the constant as the pruned
model sees them, the weights that best reproduce the unpruned output are

    W'_K' = W E[z z'^T] (E[z' z'^T] + lambda I)^-1

(with z' = z[K'] this is W_K' + W_R G[R, K'] G[K', K']^-1: the removed columns regressed on the
kept ones; the constant's coefficient is the bias change). When the removed channels are
uncorrelated with the kept ones this is the mean compensation of `compensate.py`; when they are
correlated (BatchNorm CNNs are full of redundant channels), the kept channels take over their
share. Consumers are refit one by one in forward order on the pruned model's inputs, so each also
corrects what the earlier layers left (sequential reconstruction). Linear and ungrouped Conv1d / Conv2d
consumers; others keep mean compensation. Pure math: `refit_to_reference`; plumbing:
`reconstruct_consumers`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model, check_finite
from mmcompress.core.walker import grouped_weight, layer_columns, run_calibration
from mmcompress.errors import DataError
from mmcompress.prune.dependency import eval_mode
from mmcompress.prune.fx_ops import CONVS

DAMP = 0.01  # ridge: a fraction of the mean diagonal of G[K, K]


def reconstructable(layer: nn.Module) -> bool:
    """Linear, or Conv1d/Conv2d without groups and with zero padding (its columns are unfolded patches)."""
    if type(layer) is nn.Linear:
        return True
    return type(layer) in (nn.Conv1d, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"


def input_grams(
    model: nn.Module, layers: dict[str, nn.Module], calib: list, max_batches: int | None = None
) -> dict[str, torch.Tensor]:
    """E[z z^T] of each layer's input columns plus a constant 1 over the calibration batches: (k + 1, k + 1).

    Example:
        >>> input_grams(model, {"head": model.head}, [x])["head"].shape
        torch.Size([65, 65])
    """
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def collect(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        z = _columns(layer, x)[0]  # (rows, k + 1): ungrouped layers
        sums[name] = sums.get(name, 0) + (z.T @ z).double()
        counts[name] += z.shape[0]

    with eval_mode(model):
        used = run_calibration(model, layers, calib, collect, max_batches=max_batches)
    if used == 0:
        raise DataError("reconstruction importance got no calibration batches; pass calib=[...]")
    return {name: sums[name] / max(counts[name], 1) for name in layers if name in sums}


def refit_to_reference(
    weight: torch.Tensor, cross: torch.Tensor, gram: torch.Tensor, damp: float = DAMP, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Kept columns (and the constant) refit so the layer's output on the *pruned* model's inputs
    matches its output on the *unpruned* model's inputs: (out, k + 1), (k + 1, K'), (K', K') -> (out, K').

    `cross` = E[z_ref z_kept^T] (unpruned inputs against the pruned model's kept inputs and 1),
    `gram` = E[z_kept z_kept^T]; the result is weight @ cross @ (gram + lambda I)^-1 (the ridge on
    the columns, not the constant). With the same inputs on both sides (cross = G[:, K'], gram =
    G[K', K']) the removed columns are regressed on the kept ones. `shift` = E[c z_kept^T] (out, K')
    aims the layer at its unpruned output plus c instead (`stream_target.py`).

    Example:
        >>> g = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x1 == x0, zero mean
        >>> refit_to_reference(torch.tensor([[1.0, 2.0, 0.0]]), g[:, [0, 2]], g[[0, 2]][:, [0, 2]], damp=0.0)
        tensor([[3., 0.]])
    """
    g = gram.double().clone()  # also batched: (groups, ...) on every argument
    diag = g.diagonal(dim1=-2, dim2=-1)[..., :-1]
    if diag.shape[-1]:
        diag += damp * diag.mean(-1, keepdim=True) + 1e-12  # (a floor: a dead input group has a zero Gram)
    rhs = weight.double() @ cross.double()
    rhs = (rhs if shift is None else rhs + shift.double()).transpose(-2, -1)  # (K', out)
    return torch.linalg.solve(g, rhs).transpose(-2, -1).to(weight.dtype)  # g symmetric: (g^-1 rhs)^T


class _Captured(Exception):
    """Stops a forward pass once the layer being refit has its input."""


def paired_inputs(model, reference, layer, ref_layer, batches: list, stop_early: bool) -> tuple[list, list]:
    """The layer's inputs in the pruned model and in the unpruned copy, over `batches` (one forward
    pass of each per batch, stopped at the layer unless it is called more than once)."""
    seen: dict[str, list[torch.Tensor]] = {"pruned": [], "reference": []}

    def grab(key: str, stop: bool):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            seen[key].append(x.detach())
            if stop:
                raise _Captured

        return hook

    handles = [
        layer.register_forward_pre_hook(grab("pruned", stop_early), with_kwargs=True),
        ref_layer.register_forward_pre_hook(grab("reference", stop_early), with_kwargs=True),
    ]
    try:
        for batch in batches:
            for net in (reference, model):
                with contextlib.suppress(_Captured):
                    call_model(net, batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen["pruned"], seen["reference"]


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(groups, rows, in / groups * taps + 1): the layer's input columns and a constant 1."""
    cols = layer_columns(layer, x.float())
    return torch.cat([cols, torch.ones(*cols.shape[:2], 1, dtype=cols.dtype)], 2)


def refit_layer(layer: nn.Module, removed: list[int], pairs: Iterable, damp: float, corrections=None) -> tuple:
    """Refit `layer` in place: its weight on the kept input columns (the `removed` input channels'
    columns zeroed) so that, on each batch's input `x` of the pairs `(x, x_ref)` (a list, or a
    generator that computes them batch by batch), it reproduces its own output on `x_ref` (plus
    `corrections`, one tensor shaped as the layer's output per batch, where given).
    Returns the bias change (out,) to fold, and the rows and kept columns per group.

    Example:
        >>> delta, rows, cols = refit_layer(model.head, [1, 3], [(x_pruned, x_unpruned)], 0.01)
    """
    weight = grouped_weight(layer, layer.weight.detach().float())  # (g, out / g, k)
    taps = layer.weight[0, 0].numel() if isinstance(layer, CONVS) else 1
    drop = torch.zeros(weight.shape[2] // taps, dtype=torch.bool)  # channels of one group (g == 1 if any)
    drop[removed] = True
    keep = ((~drop).nonzero()[:, None] * taps + torch.arange(taps)).flatten()  # channel-major columns
    kept = torch.cat([keep, torch.tensor([weight.shape[2]])])  # and the constant
    cross = gram = shift = 0
    rows = 0
    for i, (x, x_ref) in enumerate(pairs):
        z, z_ref = _columns(layer, x)[:, :, kept], _columns(layer, x_ref)
        cross = cross + (z_ref.transpose(1, 2) @ z).double()  # (g, k + 1, K' + 1)
        gram = gram + (z.transpose(1, 2) @ z).double()
        if corrections is not None:
            shift = shift + (_output_rows(layer, corrections[i]).transpose(1, 2) @ z).double()
        rows += z.shape[1]
    augmented = torch.cat([weight, torch.zeros(*weight.shape[:2], 1)], 2)  # the bias: a change, returned
    shift = None if corrections is None else shift / rows
    refit = refit_to_reference(augmented, cross / rows, gram / rows, damp, shift)  # (g, out / g, K' + 1)
    new = torch.zeros_like(weight)
    new[:, :, keep] = refit[:, :, :-1]
    layer.weight.copy_(new.reshape(layer.weight.shape).to(layer.weight.dtype))
    return refit[:, :, -1].reshape(-1), rows, len(kept)


def _output_rows(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's output, Conv2d (B, out, H, W), Conv1d (B, out, L) or Linear (..., out), as (groups,
    rows, out / groups), rows ordered as `layer_columns` orders its input rows."""
    conv = isinstance(layer, CONVS)
    rows = y.movedim(1, -1).reshape(-1, y.shape[1]) if conv else y.reshape(-1, y.shape[-1])
    groups = layer.groups if conv else 1
    return rows.float().reshape(rows.shape[0], groups, -1).transpose(0, 1)


def _forward_order(model: nn.Module, layers: dict[str, nn.Module], batch: Any) -> tuple[list[str], set[str]]:
    """The layers in the order a forward pass first calls them, and those it calls more than once."""
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return list(calls), {name for name, n in calls.items() if n > 1}


@torch.no_grad()
def reconstruct_consumers(
    model: nn.Module, modules: dict[str, nn.Module], dropped: dict[str, list[int]], calib, max_batches=None
) -> dict[str, torch.Tensor]:
    """Refit each reconstructable consumer's kept input weights in place (before slicing); returns
    consumer -> the bias change (out,) to fold, for the consumers it refit.

    `dropped`: consumer -> its removed input channels (`compensate.consumers_of`).

    The consumers are refit one after another in forward order, each on the inputs of the model
    as already refit before it (its removed columns zeroed) against its output in an unpruned copy
    of the model (sequential reconstruction, as in He et al. 2017 and SparseGPT's sequential mode):
    a later layer also corrects the error the earlier ones left. One calibration pass per consumer.
    On MobileNetV2 (30% of the hidden channels, 512 crops) this halves the KL to float against
    refitting every consumer on the unpruned inputs (0.130 vs 0.279; top-1 agreement 0.747 vs 0.673);
    it needs more rows than the consumer has columns (with 8 crops it did worse).

    Example:
        >>> deltas = reconstruct_consumers(model, modules, {"head": [1, 3]}, [x])
    """
    targets = {name: modules[name] for name in dropped if reconstructable(modules[name])}
    if not targets:
        return {}
    batches = calibration_batches(calib, max_batches)
    deltas, shifts, scarce = {}, [], []
    try:
        with eval_mode(model):
            order, repeated = _forward_order(model, targets, batches[0])
            missing = sorted(set(targets) - set(order))
            if missing:
                raise DataError(f"reconstruction: the calibration batches never reach {', '.join(missing[:5])}")
            reference = copy.deepcopy(model)  # the unpruned model: every consumer's target output
            ref_modules = dict(reference.named_modules())
            for name in order:
                layer = targets[name]
                inputs, reference_inputs = paired_inputs(
                    model, reference, layer, ref_modules[name], batches, name not in repeated
                )
                pairs = zip(inputs, reference_inputs, strict=True)
                deltas[name], rows, columns = refit_layer(layer, dropped[name], pairs, DAMP)
                shifts.append(layer.register_forward_hook(shift_output(deltas[name])))  # the caller folds it
                if rows <= columns:
                    scarce.append(f"{name} ({rows} rows, {columns} columns)")
    finally:
        for handle in shifts:
            handle.remove()
    warn_scarce(scarce)
    return deltas


def warn_scarce(scarce: list[str]) -> None:
    """Warn about refit layers that saw fewer calibration rows than they keep columns."""
    if scarce:
        warnings.warn(
            f"reconstruct: {len(scarce)} layer(s) saw fewer calibration rows than they keep input columns, so "
            f"their least-squares refit can over-fit the calibration data (pass more calib= batches): "
            f"{', '.join(scarce[:5])}",
            stacklevel=5,
        )


def calibration_batches(calib, max_batches: int | None) -> list:
    """The first `max_batches` calibration batches (all when None), checked finite; none is an error."""
    batches = list(itertools.islice(calib, max_batches))
    if not batches:
        raise DataError("reconstruction got no calibration batches; pass calib=[...]")
    for batch in batches:
        check_finite(batch, "reconstruction")
    return batches


def shift_output(delta: torch.Tensor):
    """A forward hook adding a bias change to a layer's output (channels on dim 1 for convs)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        d = delta.to(output.dtype)
        return output + (d.view(1, -1, *([1] * (output.dim() - 2))) if isinstance(module, CONVS) else d)

    return hook
