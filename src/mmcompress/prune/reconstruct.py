"""Least-squares reconstruction of the layers that consume removed channels (He et al. 2017,
"Channel Pruning"; ThiNet): the kept input weights are refit so the layer's output on calibration
data stays as close as possible to the unpruned output.

A consumer y = W x + b (x: its input columns; a conv's unfolded patches) loses columns R. With
z = [x; 1] and the Gram matrix G = E[z z^T] over calibration inputs, the kept columns K' (K and
the constant) that best replace all of z are

    W'_K' = W_K' + W_R G[R, K'] (G[K', K'] + lambda I)^-1

(the removed columns regressed on the kept ones; the constant's coefficient is the bias change).
When the removed channels are uncorrelated with the kept ones this is the mean compensation of
`compensate.py`; when they are correlated (BatchNorm CNNs are full of redundant channels), the
kept channels take over their share. Linear and ungrouped Conv2d consumers; others keep mean
compensation. Pure math: `refit_columns`; plumbing: `gram_matrices`, `reconstruct_consumers`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.walker import layer_columns, run_calibration
from mmcompress.errors import DataError
from mmcompress.prune.dependency import eval_mode

DAMP = 0.01  # ridge: a fraction of the mean diagonal of G[K, K]


def reconstructable(layer: nn.Module) -> bool:
    """Linear, or Conv2d without groups and with zero padding (its columns are unfolded patches)."""
    if type(layer) is nn.Linear:
        return True
    return type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"


def refit_columns(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Kept columns and the constant refit to stand in for every column: (out, k + 1), (k + 1, k + 1),
    (kept,) -> (out, kept + 1); the last column of `weight` multiplies the constant 1 (the bias).

    Example:
        >>> g = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x1 == x0, zero mean
        >>> refit_columns(torch.tensor([[1.0, 2.0, 0.0]]), g, torch.tensor([0]), damp=0.0)
        tensor([[3., 0.]])
    """
    k = weight.shape[1] - 1
    kept = torch.cat([keep.long(), torch.tensor([k])])  # the constant is always kept
    mask = torch.ones(k + 1, dtype=torch.bool)
    mask[kept] = False
    removed = mask.nonzero().flatten()
    w = weight.double()
    g = gram.double()
    g_kk = g[kept][:, kept].clone()
    diag = g_kk.diagonal()[:-1]
    g_kk.diagonal()[:-1] += damp * float(diag.mean()) if len(diag) else 0.0
    # (out, R) @ (R, K') @ (K', K')^-1, solved as (K', K') X = (K', R) G[R, K']^T
    coef = torch.linalg.solve(g_kk, g[removed][:, kept].T)  # (K', R)
    return (w[:, kept] + w[:, removed] @ coef.T).to(weight.dtype)


def _augmented(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    cols = layer_columns(layer, x.double())[0]  # (rows, k)
    return torch.cat([cols, torch.ones(cols.shape[0], 1, dtype=cols.dtype)], 1)


def gram_matrices(
    model: nn.Module, layers: dict[str, nn.Module], calib: Iterable[Any], max_batches: int | None = None
) -> dict[str, torch.Tensor]:
    """E[z z^T] of each layer's input columns plus a constant 1 over the calibration batches: (k + 1, k + 1).

    Example:
        >>> gram_matrices(model, {"head": model.head}, [x])["head"].shape
        torch.Size([65, 65])
    """
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def collect(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        z = _augmented(layer, x)
        sums[name] = sums.get(name, 0) + z.T @ z
        counts[name] += z.shape[0]

    with eval_mode(model):
        used = run_calibration(model, layers, calib, collect, max_batches=max_batches)
    if used == 0:
        raise DataError("reconstruction got no calibration batches; pass calib=[...]")
    return {name: sums[name] / counts[name] for name in layers}


@torch.no_grad()
def reconstruct_consumers(
    model: nn.Module, modules: dict[str, nn.Module], dropped: dict[str, list[int]], calib, max_batches=None
) -> dict[str, torch.Tensor]:
    """Refit each reconstructable consumer's kept input weights in place (before slicing); returns
    consumer -> the bias change (out,) to fold, for the consumers it refit.

    `dropped`: consumer -> its removed input channels (`compensate.consumers_of`).

    Example:
        >>> deltas = reconstruct_consumers(model, modules, {"head": [1, 3]}, [x])
    """
    targets = {name: modules[name] for name in dropped if reconstructable(modules[name])}
    if not targets:
        return {}
    grams = gram_matrices(model, targets, calib, max_batches)
    deltas = {}
    for name, layer in targets.items():
        taps = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
        width = layer.weight.shape[1]
        removed = torch.zeros(width, dtype=torch.bool)
        removed[dropped[name]] = True
        keep_channels = (~removed).nonzero().flatten()
        keep = (keep_channels[:, None] * taps + torch.arange(taps)).flatten()  # channel-major columns
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
        augmented = torch.cat([weight, torch.zeros(weight.shape[0], 1)], 1)  # bias handled as a delta
        refit = refit_columns(augmented, grams[name], keep)  # (out, kept + 1)
        new = torch.zeros_like(weight)
        new[:, keep] = refit[:, :-1]
        layer.weight.copy_(new.reshape(layer.weight.shape).to(layer.weight.dtype))
        deltas[name] = refit[:, -1]
    return deltas
