"""Time one MiniLM runtime in its own process (2 threads): prints JSON {median, p10, p90} in ms.

Usage: _minilm_worker.py KIND PATH BATCH TOKENS   KIND: torch-float | torch-ao | ort
"""

from __future__ import annotations

import json
import sys

import torch
from _minilm_data import long_batch
from _results import time_calls


def main() -> None:
    kind, path, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    inputs = long_batch(batch, tokens)
    if kind == "ort":
        from mmcompress.graph.runtime import OrtModel

        session = OrtModel.from_path(path, threads=2)
        run = lambda: session.run(inputs)  # noqa: E731
    else:
        from mmcompress.models.minilm import MiniLMEncoder

        model = MiniLMEncoder().eval()
        if kind == "torch-ao":
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        run = lambda: model(**inputs)  # noqa: E731
    print(json.dumps(time_calls(run, warmup=3, repeats=10)))


if __name__ == "__main__":
    main()
