"""Which axes of an exported model's inputs and outputs may change length: found by running the model.

The batch axis is always dynamic. Token inputs (N, L) and float sequences (N, L, E) or (N, C, T)
may also change length along their other axes, but only the model knows whether it accepts that
(a Linear over E does not; a Conv1d over T does). Each candidate axis is shortened by one on the
example batch and the model run: the axes it accepts become dynamic, each input with its own name
(a text and an image token input of a cross-attention model may differ in length), and so do the
output axes that changed with them. Candidates of the same length (tokens and their mask) are
shortened together first. `failing_axes` then checks the written file at the shortened lengths,
since an exporter may still have fixed a length (a reshape with a constant shape).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

Axis = tuple[str, int]  # (input name, axis)


@dataclass
class Probe:
    """The example batch with `axes` shortened by one, and the PyTorch outputs for it."""

    axes: list[Axis]
    inputs: dict[str, torch.Tensor]
    outputs: list[torch.Tensor] = field(default_factory=list)


def candidate_axes(tensor: torch.Tensor) -> list[int]:
    """Axes besides the batch that may be a sequence: 1 of (N, L) integer tokens, 1 and 2 of (N, ., .) floats.

    Example:
        >>> candidate_axes(torch.zeros(2, 7, dtype=torch.long)), candidate_axes(torch.zeros(2, 7, 32))
        ([1], [1, 2])
    """
    if tensor.dim() == 2 and not tensor.is_floating_point():
        return [1]
    if tensor.dim() == 3 and tensor.is_floating_point():
        return [1, 2]
    return []


def probe_axes(
    run: Callable[..., list[torch.Tensor]],
    named: dict[str, torch.Tensor],
    reference: list[torch.Tensor],
    fixed: frozenset[Axis] = frozenset(),
) -> list[Probe]:
    """The probes whose shortened axes `run` (the model, positional tensors -> output list) accepts.

    Example:
        >>> tokens = {"x": torch.zeros(2, 5, dtype=torch.long)}
        >>> [p.axes for p in probe_axes(lambda t: [t.sum(1)], tokens, [torch.zeros(2)])]
        [[('x', 1)]]
    """
    by_length: dict[int, list[Axis]] = {}
    for name, tensor in named.items():
        for axis in candidate_axes(tensor):
            if (name, axis) not in fixed and tensor.shape[axis] >= 2:
                by_length.setdefault(int(tensor.shape[axis]), []).append((name, axis))
    probes = []
    for members in by_length.values():
        joint = _probe(run, named, reference, members)
        if joint is not None:
            probes.append(joint)
        elif len(members) > 1:
            probes += [p for p in (_probe(run, named, reference, [m]) for m in members) if p is not None]
    return probes


def dynamic_axes(named: dict[str, torch.Tensor], outputs: list[str], reference, probes: list[Probe]) -> dict:
    """torch.onnx's `dynamic_axes`: the batch axis of every input and output, and the probed axes.

    Example:
        >>> dynamic_axes({"x": torch.zeros(2, 5)}, ["output_0"], [torch.zeros(2)], [])
        {'x': {0: 'batch'}, 'output_0': {0: 'batch'}}
    """
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in [*named, *outputs]}
    for probe in probes:
        for name, axis in probe.axes:
            axes[name][axis] = f"{name}_length" if axis == 1 else f"{name}_axis{axis}"
        for out_name, before, after in zip(outputs, reference, probe.outputs, strict=False):
            for axis in range(1, min(before.dim(), after.dim())):
                if before.shape[axis] != after.shape[axis]:
                    axes[out_name].setdefault(axis, f"{out_name}_axis{axis}")
    return axes


def failing_axes(session_run: Callable[[dict], list[np.ndarray]], probes: list[Probe], min_cosine: float) -> dict:
    """Probed axes at which the exported file fails or drifts from PyTorch: {axis: why}.

    Example:
        >>> failing_axes(OrtModel.from_bytes(data).run, probes, 0.999)
        {}
    """
    failing = {}
    for probe in probes:
        try:
            got = session_run(probe.inputs)
        except Exception as err:  # ONNX Runtime raises its own types
            why = f"ONNX Runtime failed ({str(err).splitlines()[0][:160]})"
        else:
            _, cosine = compare(probe.outputs, got)
            if cosine >= min_cosine:
                continue
            why = f"ONNX Runtime's outputs differ from PyTorch's (cosine {cosine:.4f})"
        failing.update({axis: why for axis in probe.axes})
    return failing


def _probe(run, named: dict[str, torch.Tensor], reference: list[torch.Tensor], axes: list[Axis]) -> Probe | None:
    shortened = dict(named)
    for name, axis in axes:
        shortened[name] = shortened[name].narrow(axis, 0, shortened[name].shape[axis] - 1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = run(*shortened.values())
    except Exception:  # the model does not take this length: the axis stays fixed
        return None
    if len(outputs) != len(reference) or any(a.dim() != b.dim() for a, b in zip(outputs, reference, strict=True)):
        return None
    return Probe(axes, shortened, outputs)


def compare(reference: list[torch.Tensor], got: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, cosine similarity) of PyTorch's outputs and ONNX Runtime's, all outputs flattened
    together (shapes that differ: infinite error, cosine 0).

    Example:
        >>> compare([torch.ones(2)], [np.ones(2)])
        (0.0, 1.0)
    """
    ref = np.concatenate([r.detach().float().numpy().ravel() for r in reference]).astype(np.float64)
    out = np.concatenate([np.asarray(g).ravel() for g in got]).astype(np.float64)
    if ref.shape != out.shape:
        return float("inf"), 0.0
    if not ref.any() and not out.any():
        return 0.0, 1.0
    cosine = float(ref @ out / max(np.linalg.norm(ref) * np.linalg.norm(out), 1e-30))
    return float(np.abs(ref - out).max()), cosine
