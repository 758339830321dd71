"""Time one (model, part, runtime, batch) case in this process; prints one JSON line.

Run by `mmcompress.evaluate.bench` as `python -m mmcompress.evaluate.bench_worker CASE.json` so
each runtime's thread pool has the process to itself. CASE holds: runtime (eager | onnxruntime |
compile), inputs (one .pt file of named tensors per module of the part), onnx (one path per
module) or model + part + run_dir + cache_dir (+ adapter), threads, warmup, repeats.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _callable(case: dict, inputs: list[dict]):
    """One call of the part: its module(s) in forward order, each on the inputs it received."""
    if case["runtime"] == "onnxruntime":
        from mmcompress.graph.runtime import OrtModel

        sessions = [OrtModel.from_path(path, threads=case["threads"]) for path in case["onnx"]]
        calls = [(lambda s=s, x=x: s.run(x)) for s, x in zip(sessions, inputs, strict=True)]
    else:
        from mmcompress.evaluate.bench import load_part

        modules = load_part(case["model"], case["run_dir"], case["variant"], case["part"], case["cache_dir"],
                            case.get("adapter"))  # fmt: skip
        if case["runtime"] == "compile":
            modules = [torch.compile(m) for m in modules]
        calls = [(lambda m=m, x=x: m(**x)) for m, x in zip(modules, inputs, strict=True)]
    if len(calls) == 1:
        return calls[0]
    return lambda: [call() for call in calls]


def main() -> None:
    with open(sys.argv[1]) as fh:
        case = json.load(fh)
    torch.set_num_threads(case["threads"])
    inputs = [torch.load(path, weights_only=True) for path in case["inputs"]]
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
