"""Time one runtime in its own process: prints JSON {median, p10, p90} in ms.

Usage: _latency_worker.py KIND PATH CACHE BATCH  (KIND: torch-float, torch-compressed, ort)
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from mmcompress.data.registry import load_dataset
from mmcompress.models.zoo import build_model, get_spec, load_model, task_for


def main() -> None:
    kind, path, cache, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(2)
    test = load_dataset(get_spec("fashion-clip").dataset, "test", limit=batch)
    if kind == "torch-float":
        model = load_model("fashion-clip", cache_dir=cache, progress=False)
    elif kind == "torch-compressed":
        from mmcompress.recipe.runner import load_run

        model = load_run(path, build_model("fashion-clip"))
    else:
        from mmcompress.graph.ort_module import OrtModule

        model = OrtModule.load(path, build_model("fashion-clip"), threads=2)
    inputs, _ = task_for(build_model("fashion-clip") if kind == "ort" else model, test).batch(test, torch.arange(batch))
    times = []
    with torch.inference_mode():
        for i in range(25):
            start = time.perf_counter()
            model(**inputs)
            if i >= 5:
                times.append(1000 * (time.perf_counter() - start))
    times.sort()
    print(json.dumps({"median": statistics.median(times), "p10": times[2], "p90": times[-3]}))


if __name__ == "__main__":
    main()
