"""Evaluate one plan: run its recipe on a copy of the trained model, then time the exported ONNX
artifact in ONNX Runtime. Runs in the search process or in a worker process."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.auto.plan import Plan, plan_to_recipe

MetricFn = Callable[[nn.Module], float]


def ort_latency_ms(onnx_path: str | Path, inputs: Any, threads: int, repeats: int = 15) -> float:
    """Median ONNX Runtime latency of one call on a batch (3 warm-up calls first).

    Example:
        >>> ort_latency_ms("runs/x/model.onnx", batch, threads=2)
    """
    from mmcompress.graph.export import named_inputs
    from mmcompress.graph.runtime import OrtModel

    runtime = OrtModel.from_path(onnx_path, threads=threads)
    feed = {k: v for k, v in named_inputs(inputs).items() if k in runtime.input_names}
    for _ in range(3):
        runtime.run(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.run(feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def side_by_side_latency_ms(
    paths: dict[str, Path], inputs: Any, threads: int = 2, rounds: int = 7, calls: int = 8
) -> dict[str, float]:
    """Median ONNX Runtime latency of several models measured in alternating rounds (so drifts in
    machine speed hit all of them alike).

    Example:
        >>> side_by_side_latency_ms({"float": a, "int8": b}, batch)
    """
    from mmcompress.graph.export import named_inputs
    from mmcompress.graph.runtime import OrtModel

    runtimes = {k: OrtModel.from_path(p, threads=threads) for k, p in paths.items()}
    feeds = {k: {n: v for n, v in named_inputs(inputs).items() if n in r.input_names} for k, r in runtimes.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for k, r in runtimes.items():
        for _ in range(3):
            r.run(feeds[k])
    for _ in range(rounds):
        for k, r in runtimes.items():
            for _ in range(calls):
                start = time.perf_counter()
                r.run(feeds[k])
                times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def latency_inputs(task: Any, test: Any, batch: int) -> Any:
    """A real batch of `batch` test inputs."""
    return task.batch(test, torch.arange(min(batch, len(test))))[0]


def evaluate_plan(
    model: nn.Module,
    plan: Plan,
    model_spec: str | None,
    data: tuple[Any, Any],
    out_dir: Path,
    *,
    latency_batch: int = 32,
    threads: int = 2,
    metric_fn: MetricFn | None = None,
    task: Any = None,
) -> dict[str, float]:
    """Metrics of `plan` applied to a copy of `model`: metric, size_mb, latency_ms (ORT) and the
    stored bytes per tower. A metric that is not finite raises ValueError (the trial fails).

    Example:
        >>> evaluate_plan(model, plan, "fashion-clip", (train, test), Path("runs/auto/trial-1"))
    """
    from mmcompress.models.zoo import task_for
    from mmcompress.recipe.runner import compress

    torch.set_num_threads(threads)
    candidate = copy.deepcopy(model)
    train, test = data
    task = task or task_for(candidate, test)
    recipe = plan_to_recipe(plan, model_spec, onnx_eval_limit=200)
    run = compress(candidate, recipe, data=(train, test), output_dir=out_dir, task=task, progress=False)
    final = run.metrics("compressed")
    metric = metric_fn(candidate) if metric_fn is not None else final[task.primary_metric]
    if not isinstance(metric, (int, float)) or not math.isfinite(metric):
        raise ValueError(f"the evaluation returned {metric!r}, not a finite number")
    onnx_path = out_dir / "model.onnx"
    metrics = {
        "metric": float(metric),
        "size_mb": final["stored_bytes"] / 1e6,
        "latency_ms": ort_latency_ms(onnx_path, latency_inputs(task, test, latency_batch), threads),
        "ort_metric": float(run.metrics("export_onnx").get(f"ort_{task.primary_metric}", float("nan"))),
    }
    metrics.update(
        {k.replace("stored_bytes.", "mb."): v / 1e6 for k, v in final.items() if k.startswith("stored_bytes.")}
    )
    return metrics
