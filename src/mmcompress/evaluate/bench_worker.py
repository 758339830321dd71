"""Time one (model, part, runtime, batch) case in this process; prints one JSON line.

Run by `mmcompress.evaluate.bench` as `python -m mmcompress.evaluate.bench_worker CASE.json` so
each runtime's thread pool has the process to itself. CASE holds: runtime (eager | onnxruntime |
compile), inputs (a .pt file of named tensors), onnx (path) or model + part + run_dir +
cache_dir, threads, warmup, repeats.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _callable(case: dict, inputs: dict):
    if case["runtime"] == "onnxruntime":
        from mmcompress.graph.runtime import OrtModel

        session = OrtModel.from_path(case["onnx"], threads=case["threads"])
        return lambda: session.run(inputs)
    from mmcompress.evaluate.bench import load_part

    module = load_part(case["model"], case["run_dir"], case["variant"], case["part"], case["cache_dir"])
    if case["runtime"] == "compile":
        module = torch.compile(module)
    keyword = case["keyword"]
    return (lambda: module(**inputs)) if keyword else (lambda: module(*inputs.values()))


def main() -> None:
    with open(sys.argv[1]) as fh:
        case = json.load(fh)
    torch.set_num_threads(case["threads"])
    inputs = torch.load(case["inputs"], weights_only=True)
    before = _peak_rss_mb()
    run = _callable(case, inputs)
    times = []
    with torch.inference_mode():
        for _ in range(case["warmup"]):
            run()
        for _ in range(case["repeats"]):
            start = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - start))
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    result = {"median_ms": pick(0.5), "p10_ms": pick(0.1), "p90_ms": pick(0.9), "calls": len(times)}
    result.update(peak_rss_mb=_peak_rss_mb(), rss_before_mb=before)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
