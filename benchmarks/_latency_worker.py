"""Time one runtime in its own process: prints JSON {median, p10, p90} in ms.

Usage: _latency_worker.py KIND PATH CACHE BATCH  (KIND: torch-float, torch-compressed, ort)
"""

from __future__ import annotations

import json
import sys

import torch
from _results import time_calls

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
    print(json.dumps(time_calls(lambda: model(**inputs), warmup=5, repeats=20)))


if __name__ == "__main__":
    main()
