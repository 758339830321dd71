"""Time the fashion-clip image encoder (SmallCNN + projection) at given widths in its own process.

Usage: _tower_worker.py eager W1,W2,W3 BATCH | _tower_worker.py ort PATH BATCH
Prints JSON {median, p10, p90, times} in ms (2 threads). Weights are random: time does not depend on them.
"""

from __future__ import annotations

import json
import sys

import torch
from _results import time_calls


def main() -> None:
    kind, arg, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(2)
    images = torch.rand(batch, 1, 28, 28)
    if kind == "ort":
        from mmcompress.graph.runtime import OrtModel

        session = OrtModel.from_path(arg, threads=2)
        run = lambda: session.run({session.input_names[0]: images})  # noqa: E731
    else:
        from mmcompress.models.layers import SmallCNN

        widths = tuple(int(w) for w in arg.split(","))
        encoder = torch.nn.Sequential(SmallCNN(widths), torch.nn.Linear(widths[-1], 128)).eval()
        run = lambda: encoder(images)  # noqa: E731
    print(json.dumps(time_calls(run, warmup=5, repeats=30)))


if __name__ == "__main__":
    main()
