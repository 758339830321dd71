"""Time one MiniLM runtime in its own process (2 threads): prints JSON {median, p10, p90, times} in ms.

Usage: _minilm_worker.py KIND PATH BATCH TOKENS
KIND: torch-float | torch-peer (PATH: the peer's name in _minilm_peers.TORCH_PEERS) | torch-file (PATH: a
model pickled whole by torch.save, e.g. one of our quantized variants; PATH:simulate runs it with
kernel "simulate") | ort (PATH:
an ONNX file) | ort-gemm (PATH: a one-MatMul ONNX file fed a (BATCH*TOKENS, 384) float input).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from _minilm_data import long_batch, tokenize
from _results import time_calls


def runner(kind: str, path: str, batch: int, tokens: int):
    inputs = long_batch(batch, tokens)
    if kind in ("ort", "ort-gemm"):
        from mmcompress.graph.runtime import OrtModel

        session = OrtModel.from_path(path, threads=2)
        if kind == "ort-gemm":
            inputs = {session.input_names[0]: np.random.default_rng(0).standard_normal((batch * tokens, 384), "f4")}
        return lambda: session.run(inputs)
    if kind == "torch-file":  # PATH[:simulate]: the reference path (dequantize per call), as before the kernels
        from mmcompress.quant.kernels import set_kernel

        file, _, kernel = path.partition(":")
        model = torch.load(file, weights_only=False).eval()
        set_kernel(model, kernel or "auto")
        return lambda: model(**inputs)
    from mmcompress.models.minilm import MiniLMEncoder

    model = MiniLMEncoder().eval()
    if kind == "torch-peer":
        from _minilm_peers import TORCH_PEERS

        model = TORCH_PEERS[path](model, [tokenize(["a short calibration sentence"] * 8, 128)])
    return lambda: model(**inputs)


def main() -> None:
    kind, path, batch, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    repeats = 10 if batch * tokens > 1024 else 40
    warmup = 3 if kind != "torch-peer" else 1  # some PyTorch peers take seconds per call on CPU
    print(json.dumps(time_calls(runner(kind, path, batch, tokens), warmup=warmup, repeats=repeats, budget_s=12)))


if __name__ == "__main__":
    main()
