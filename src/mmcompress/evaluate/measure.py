"""`measure(model)`: parameters, non-zeros, stored bytes (per modality) and latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import ModelCall, call_model
from mmcompress.graph.storage import stored_bytes, unique_state
from mmcompress.models.adapter import adapter_for


@dataclass
class TowerSize:
    """Size numbers for one modality tower (or the whole model)."""

    params: int = 0
    nonzeros: int = 0
    stored_bytes: int = 0
    float32_bytes: int = 0


@dataclass
class Measurement:
    """What `measure` found. `compression` = float32 bytes / stored bytes.

    Example:
        >>> m = measure(model); m.total.stored_bytes, m.per_modality["image"].params
    """

    total: TowerSize
    per_modality: dict[str, TowerSize] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.total.float32_bytes / max(1, self.total.stored_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compression": self.compression}


def measure(model: nn.Module, example_inputs: Any = None, *, repeats: int = 20, warmup: int = 3) -> Measurement:
    """Measure size (as stored: int8 codes as 1 byte, sparse tensors as bitmap + values) and latency.

    Args:
        model: any nn.Module; its adapter (if any) gives the per-modality breakdown.
        example_inputs: a batch for latency (None: the adapter's example inputs, or no latency), or
            a `ModelCall` to time instead of a forward pass (e.g. transcribing a clip).
        repeats, warmup: latency is the median of `repeats` timed calls after `warmup` calls.

    Example:
        >>> m = measure(load_model("fashion-clip"))
        >>> m.per_modality["text"].stored_bytes
    """
    adapter = adapter_for(model)
    sizes = stored_bytes(model)
    total, towers = TowerSize(), {}
    for name, t in unique_state(model).items():
        tower = towers.setdefault(adapter.modality_of(name) or "other", TowerSize())
        logical = _logical_params(name, t)
        for bucket in (total, tower):
            bucket.params += logical
            bucket.nonzeros += int((t != 0).sum()) if logical else 0
            bucket.stored_bytes += sizes[name]
            bucket.float32_bytes += 4 * logical if logical else _float_overhead(name, sizes[name])
    if example_inputs is None and adapter.example_inputs is not None:
        example_inputs = adapter.example_inputs(8)
    latency = latency_ms(model, example_inputs, repeats, warmup) if example_inputs is not None else {}
    return Measurement(total, dict(sorted(towers.items())), latency)


def _float_overhead(name: str, size: int) -> int:
    """Bytes a bookkeeping tensor would also take in the float model (quantization scales: none)."""
    return 0 if name.rpartition(".")[2] in ("scale", "zero_point") else size


def _logical_params(name: str, t: torch.Tensor) -> int:
    """Weight elements a tensor stands for (0 for bookkeeping such as scales, BN counters)."""
    leaf = name.rpartition(".")[2]
    if leaf in ("scale", "zero_point", "num_batches_tracked") or leaf.endswith(("running_mean", "running_var")):
        return 0
    if not (t.is_floating_point() or leaf == "qweight"):
        return 0
    return t.numel()


@torch.inference_mode()
def latency_ms(model: nn.Module, inputs: Any, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and p10/p90 (ms) of `repeats` calls in eval mode, the thread count pinned throughout; the
    model's modes are restored afterwards. `inputs` is a batch (one forward pass per call) or a
    `ModelCall` (its function per call, at most its own repeats and warm-up).

    Example:
        >>> latency_ms(model, batch)["median"]
    """
    modes = {m: m.training for m in model.modules()} if isinstance(model, nn.Module) else {}
    if modes:
        model.eval()  # an ONNX Runtime module has no modes
    if isinstance(inputs, ModelCall):
        run, repeats, warmup = inputs.fn, min(repeats, inputs.repeats), min(warmup, inputs.warmup)
    else:
        run = lambda m: call_model(m, inputs)  # noqa: E731 - one forward pass
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # pinned: nothing changes it between the calls
    with torch.inference_mode():
        for _ in range(warmup):
            run(model)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(model)
            times.append((time.perf_counter() - start) * 1000)
    for module, training in modes.items():
        module.train(training)
    times.sort()
    return {
        "median": statistics.median(times),
        "p10": times[len(times) // 10],
        "p90": times[min(len(times) - 1, (9 * len(times)) // 10)],
        "threads": float(threads),
    }
