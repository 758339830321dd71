"""Quantization of fashion-clip: W8A8 on both towers, and weight-only bit widths with RTN vs GPTQ.

Run: .venv/bin/python benchmarks/quant_fashion_clip.py   (about 8 minutes with a cached baseline)
Writes the `quant-fashion-clip` section of docs/benchmarks.md. Weight-only variants: the image
tower and the embedding tables stay at 8 bits per channel/row; Linear layers of the MiniLM tower
and the projections take the variant's bits (groups of 128 inputs). W8A8 variants quantize the
inputs of every Conv2d and Linear layer of both towers too, and are also evaluated as exported
ONNX models on ONNX Runtime's integer kernels.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, table, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.evaluate.measure import measure
from mmcompress.graph.export import export_onnx
from mmcompress.graph.ort_module import OrtModule
from mmcompress.models.zoo import load_model, task_for
from mmcompress.quant.api import QuantConfig, quantize

W8 = QuantConfig(weight_bits=8)


def variant(bits: int, method: str) -> dict:
    linear = QuantConfig(weight_bits=bits, granularity="per_group", group_size=128, method=method)
    return {"re:image_tower.*": W8, "re:.*embeddings.*": W8, "_default": linear}


W7A8 = {"weight_bits": 7, "activations": "dynamic"}
W8A8_VARIANTS = {
    "W7A8 dynamic per-tensor, both towers": {"re:.*embeddings.*": W8, "_default": QuantConfig(**W7A8)},
    "W7A8 SmoothQuant 0.6 + per-token FFN-down, both towers": {
        "re:.*embeddings.*": W8,
        r"re:.*layer\.\d+\.output\.dense": QuantConfig(**W7A8, smoothquant=0.5, act_granularity="per_token"),
        "_default": QuantConfig(**W7A8, smoothquant=0.6),
    },
    "W7A8 static (KL) + SmoothQuant 0.6, both towers": {
        "re:.*embeddings.*": W8,
        "_default": QuantConfig(weight_bits=7, activations="static", act_observer="kl", smoothquant=0.6),
    },
}
VARIANTS = {
    **W8A8_VARIANTS,
    "W8 per-channel, rtn": {"_default": W8},
    "W4 g128, rtn": variant(4, "rtn"),
    "W4 g128, GPTQ": variant(4, "gptq"),
    "W3 g128, rtn": variant(3, "rtn"),
    "W3 g128, GPTQ": variant(3, "gptq"),
}


def ort_accuracy(model, task, test) -> str:
    """Zero-shot accuracy of the exported model on ONNX Runtime (integer kernels for W8A8)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, task.batch(test, torch.arange(16))[0], path)
        return f"{task.evaluate(OrtModule.load(path, model), test)['zero_shot_accuracy']:.4f}"


def main() -> None:
    base = load_model("fashion-clip", progress=False)
    train, test = load_dataset("fashion-captions", "train"), load_dataset("fashion-captions", "test")
    task = task_for(base, train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
    calib = [task.batch(train, order[s : s + 64])[0] for s in range(0, 512, 64)]
    ref = task.evaluate(base, test)
    rows = [["variant", "stored MB", "compression", "zero-shot acc", "text->image P@10", "quantize s", "ORT zero-shot"]]
    rows.append(
        [
            "float32",
            f"{measure(base, repeats=1).total.stored_bytes / 1e6:.2f}",
            "1.00x",
            f"{ref['zero_shot_accuracy']:.4f}",
            f"{ref['retrieval_p@10']:.4f}",
            "-",
            "-",
        ]
    )
    for name, mapping in VARIANTS.items():
        model = copy.deepcopy(base)
        start = time.perf_counter()
        quantize(model, mapping, calib=calib)
        seconds = time.perf_counter() - start
        m, size = task.evaluate(model, test), measure(model, repeats=1)
        rows.append(
            [
                name,
                f"{size.total.stored_bytes / 1e6:.2f}",
                f"{size.compression:.2f}x",
                f"{m['zero_shot_accuracy']:.4f}",
                f"{m['retrieval_p@10']:.4f}",
                f"{seconds:.1f}",
                ort_accuracy(model, task, test) if name in W8A8_VARIANTS else "-",
            ]
        )
        print(rows[-1], flush=True)
    body = (
        "## Quantization of fashion-clip (`benchmarks/quant_fashion_clip.py`)\n\n"
        f"{machine()}. Zero-shot accuracy on the 10,000 test images; GPTQ, SmoothQuant and static "
        "ranges calibrate on 512 training pairs (both towers). W8A8 rows quantize the inputs of every "
        "Conv2d (per tensor) and Linear layer of both towers; 'ORT zero-shot' runs the exported model "
        "on ONNX Runtime's integer kernels (ConvInteger, MatMulInteger). Weight-only rows keep the "
        "image tower and embedding tables at 8 bits. Sizes count packed codes, steps and zero points "
        "as stored.\n\n"
        f"{table(rows)}\n"
    )
    update_section("quant-fashion-clip", body)


if __name__ == "__main__":
    main()
