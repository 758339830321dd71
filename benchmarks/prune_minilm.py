"""all-MiniLM-L6-v2 (real weights) pruned without retraining: unstructured 50% and 2:4 by magnitude,
Wanda and SparseGPT, plus attention heads removed structurally.

Run: .venv/bin/python benchmarks/prune_minilm.py   (about 6 minutes on 2 cores)
Writes the `prune-minilm` section of docs/benchmarks.md. Accuracy: mean/min cosine similarity of
sentence embeddings to float32 on the 504 benchmark sentences (see _minilm_data.py); Wanda and
SparseGPT calibrate on 256 other sentences of 128 tokens. Embeddings stay dense.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from _minilm_data import calibration_batches, embed, evaluation_sentences, long_batch
from _results import machine, table, update_section

from mmcompress.graph.export import export_onnx
from mmcompress.graph.storage import stored_bytes
from mmcompress.models.minilm import MiniLMEncoder
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.prune.structured import prune_structured


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(a, b)
    return float(cos.mean()), float(cos.min())


def main() -> None:
    base = MiniLMEncoder().eval()
    sentences, calib = evaluation_sentences(), calibration_batches()
    with torch.no_grad():
        reference = embed(lambda b: base(**b), sentences)
    float_bytes = sum(4 * t.numel() for t in base.state_dict().values())
    rows = [["pruning (encoder Linear layers)", "sparsity", "mean cosine", "min cosine", "stored size", "seconds"]]
    plain = [(m, False) for m in ("magnitude", "wanda", "sparsegpt")]
    runs = [("unstructured", v) for v in plain] + [("2:4", v) for v in plain]
    for pattern, (method, sequential) in runs:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        scope = "row" if method == "wanda" else "layer"  # Wanda compares weights within each output
        cfg = PruneConfig(sparsity=0.5, method=method, pattern=pattern, scope=scope, sequential=sequential)
        rec = prune(model, {"re:.*encoder.*": cfg}, data=calib)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            mean, low = cosine(embed(lambda b, m=model: m(**b), sentences), reference)
        size = sum(stored_bytes(model).values()) / float_bytes
        label = f"{method}{' sequential' if sequential else ''}, {'50%' if pattern == 'unstructured' else '2:4'}"
        rows.append(
            [label, f"{rec.metrics['sparsity']:.3f}", f"{mean:.4f}", f"{low:.4f}", f"{size:.3f}x", f"{seconds:.0f}"]
        )
        print(rows[-1], flush=True)
    head_rows = [["heads removed per layer", "params", "mean cosine", "min cosine", "ONNX vs PyTorch max abs diff"]]
    for ratio in (0.25, 0.5):
        model = copy.deepcopy(base)
        prune_structured(model, {"re:.*attention$": {"unit": "heads", "ratio": ratio}})
        with torch.no_grad():
            mean, low = cosine(embed(lambda b, m=model: m(**b), sentences), reference)
        with tempfile.TemporaryDirectory() as tmp:
            res = export_onnx(model, long_batch(2, 32), Path(tmp) / "m.onnx")
        params = sum(p.numel() for p in model.parameters())
        head_rows.append(
            [
                f"{ratio:.0%} (magnitude)",
                f"{params / 1e6:.2f} M",
                f"{mean:.4f}",
                f"{low:.4f}",
                f"{res.max_abs_error:.1e}",
            ]
        )
        print(head_rows[-1], flush=True)
    body = (
        "## Pruning all-MiniLM-L6-v2 (`benchmarks/prune_minilm.py`)\n\n"
        f"{machine()}. No retraining. Cosine similarity of sentence embeddings to float32 on 504 "
        "sentences; Wanda and SparseGPT calibrate on 256 other sentences, every layer on the float "
        "model's inputs (the `sequential` option, one calibration pass per layer in forward order, "
        "gave Wanda no gain here: 0.8760 vs 0.8763 in a 15-minute run). Wanda removes the "
        "same fraction from every output row. Stored size: bitmap + "
        "non-zero values (the compact format) against float32, embeddings dense.\n\n"
        f"{table(rows)}\n\n"
        "Attention heads removed structurally (12 per layer before; query/key/value rows and the "
        "output projection's inputs shrink), exported to ONNX and checked against PyTorch:\n\n"
        f"{table(head_rows)}\n\n"
        "Unstructured and 2:4 sparsity make the model smaller on disk, not faster on this CPU: "
        "neither PyTorch nor ONNX Runtime skips zeros in dense CPU kernels (PyTorch's 2:4 kernels "
        "are CUDA-only). Speed comes from structured pruning (see the image-tower section).\n"
    )
    update_section("prune-minilm", body)
    print(body)


if __name__ == "__main__":
    main()
