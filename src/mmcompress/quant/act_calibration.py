"""Model plumbing for W8A8: SmoothQuant statistics and static activation ranges from calibration.

Both walk the calibration batches with `run_calibration`, so a tower that gets no data is an
error naming it. Smoothing is applied to the float model as an exact rewrite (weight columns
times s, inputs divided by s through a temporary pre-hook) so that everything calibrated after
it (static ranges, GPTQ Hessians) sees the smoothed inputs the quantized layer will see.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mmcompress.core.shared_params import modules_sharing_weight
from mmcompress.core.walker import run_calibration
from mmcompress.errors import DataError
from mmcompress.quant.activations import smoothing_factors, static_params
from mmcompress.quant.observers import RangeAccumulator
from mmcompress.quant.range_search import SEARCH_SAMPLES, RangeSearch, candidate_ranges
from mmcompress.quant.siblings import sibling_sets


def channel_absmax(
    model: nn.Module, layers: dict[str, nn.Linear], calib: Iterable[Any], modality_of: Callable, max_batches=None
) -> dict[str, torch.Tensor]:
    """Largest |input| per input channel of each Linear layer over the calibration batches.

    Example:
        >>> channel_absmax(model, {"fc": model.fc}, batches, str)["fc"].shape
        torch.Size([64])
    """
    stats: dict[str, torch.Tensor] = {}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            raise DataError(f"calibration input of layer {name!r} holds NaN or Inf")
        amax = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
        stats[name] = torch.maximum(stats[name], amax) if name in stats else amax

    run_calibration(model, layers, calib, collect, modality_of, max_batches)
    return stats


@contextmanager
def smoothed(layers: dict[str, nn.Linear], factors: dict[str, torch.Tensor]):
    """Temporarily smooth each layer: weight columns times s, inputs divided by s (exact in float).

    The original weights come back on exit, also after an error.

    Example:
        >>> with smoothed({"fc": model.fc}, {"fc": s}):
        ...     model(x)  # same output, smoothed inputs inside fc
    """
    originals = {name: layers[name].weight.data for name in factors}
    handles = []
    try:
        for name, s in factors.items():
            layer = layers[name]
            layer.weight.data = layer.weight.data * s.to(layer.weight.dtype)
            inverse = (1.0 / s).to(layer.weight.dtype)
            handles.append(layer.register_forward_pre_hook(lambda m, args, inv=inverse: (args[0] * inv, *args[1:])))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in originals.items():
            layers[name].weight.data = weight


def smoothquant_factors(
    model: nn.Module, layers: dict[str, tuple[nn.Linear, float]], calib, modality_of: Callable, max_batches=None
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors per layer from calibration: name -> s (in,), for (layer, alpha) targets.

    A layer whose weight another module shares (a tied output head and input embedding) gets no
    factor, with a warning: scaling its weight columns would scale the other module's weight too.
    Its inputs are still quantized, unsmoothed.

    Example:
        >>> smoothquant_factors(model, {"fc": (model.fc, 0.5)}, batches, str)["fc"].shape
    """
    sharing = modules_sharing_weight(model)
    tied = [n for n in layers if n in sharing]
    if tied:
        warnings.warn(
            "smoothquant: not smoothing "
            + ", ".join(f"{n!r} (weight shared with {sharing[n]})" for n in tied)
            + "; their inputs are quantized without smoothing",
            UserWarning,
            stacklevel=3,
        )
        layers = {n: v for n, v in layers.items() if n not in sharing}
    if not layers:
        return {}
    absmax = channel_absmax(model, {n: m for n, (m, _) in layers.items()}, calib, modality_of, max_batches)
    factors = {n: smoothing_factors(absmax[n], m.weight, alpha) for n, (m, alpha) in layers.items()}
    for names in sibling_sets(layers):  # query/key/value read one input: one factor, from their joint weight
        if len({layers[n][1] for n in names}) == 1:  # (SmoothQuant folds it into the LayerNorm before them)
            weight = torch.cat([layers[n][0].weight for n in names])
            joint = smoothing_factors(absmax[names[0]], weight, layers[names[0]][1])
            factors.update(dict.fromkeys(names, joint))
    return factors


def static_ranges(
    model: nn.Module, layers: dict[str, tuple[nn.Linear, str]], calib, modality_of: Callable, max_batches=None
) -> dict[str, tuple[float, int]]:
    """uint8 (step, zero point) of each layer's input from calibration with the named observer.

    Each layer's observer sees its inputs as one stream (`RangeAccumulator`), so the ranges depend
    on the calibration values, not on how they are split into batches. Observer "search" takes a
    second pass: candidate ranges (the min/max range shrunk, and the percentile range) scored by
    the layer's output error on the first calibration rows (`range_search.py`).

    Example:
        >>> static_ranges(model, {"fc": (model.fc, "percentile")}, batches, str)["fc"]
        (0.0123, 87)
    """
    observers = {
        name: RangeAccumulator("percentile" if observer == "search" else observer)
        for name, (_, observer) in layers.items()
    }

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        try:
            observers[name].update(x)  # checks for NaN/Inf in the same pass as min/max
        except ValueError:
            raise DataError(f"calibration input of layer {name!r} holds NaN or Inf") from None

    run_calibration(model, {n: m for n, (m, _) in layers.items()}, calib, collect, modality_of, max_batches)
    ranges = {name: observer.range() for name, observer in observers.items()}
    searched = [name for name, (_, observer) in layers.items() if observer == "search"]
    if searched:
        ranges.update(_searched(model, {n: layers[n][0] for n in searched}, observers, calib, modality_of))
    return {name: static_params(*r) for name, r in ranges.items()}


def _searched(model, layers: dict[str, nn.Module], observers: dict, calib, modality_of) -> dict:
    """Per layer, the candidate range with the least output error (second calibration pass)."""
    searches = {
        name: RangeSearch(module, candidate_ranges(observers[name].lo, observers[name].hi, (observers[name].range(),)))
        for name, module in layers.items()
    }

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        searches[name].update(x)

    run_calibration(model, layers, _rows(calib, SEARCH_SAMPLES), collect, modality_of)
    return {name: search.best() for name, search in searches.items()}


def _rows(calib: Iterable[Any], samples: int):
    """The calibration batches up to the one that completes `samples` rows (what `RangeSearch` reads)."""
    seen = 0
    for batch in calib:
        if seen >= samples:
            return
        yield batch
        seen += _batch_rows(batch)


def _batch_rows(batch: Any) -> int:
    first = batch if isinstance(batch, torch.Tensor) else None
    if isinstance(batch, (tuple, list)):
        first = next((b for b in batch if isinstance(b, torch.Tensor)), None)
    elif isinstance(batch, dict):
        first = next((b for b in batch.values() if isinstance(b, torch.Tensor)), None)
    return 1 if first is None or first.dim() == 0 else first.shape[0]
