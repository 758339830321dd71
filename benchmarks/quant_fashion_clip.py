"""Weight-only quantization of fashion-clip: bit widths, groups, round-to-nearest vs GPTQ.

Run: .venv/bin/python benchmarks/quant_fashion_clip.py   (about 2 minutes with a cached baseline)
Writes the `quant-fashion-clip` section of docs/benchmarks.md. The image tower and the
embedding tables stay at 8 bits per channel/row; Linear layers of the MiniLM tower and the
projections take the variant's bits (groups of 128 inputs).
"""

from __future__ import annotations

import copy
import time

import torch
from _results import machine, table, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.evaluate.measure import measure
from mmcompress.models.zoo import load_model, task_for
from mmcompress.quant.api import QuantConfig, quantize

W8 = QuantConfig(weight_bits=8)


def variant(bits: int, method: str) -> dict:
    linear = QuantConfig(weight_bits=bits, granularity="per_group", group_size=128, method=method)
    return {"re:image_tower.*": W8, "re:.*embeddings.*": W8, "_default": linear}


VARIANTS = {
    "W8 per-channel, rtn": {"_default": W8},
    "W4 g128, rtn": variant(4, "rtn"),
    "W4 g128, GPTQ": variant(4, "gptq"),
    "W3 g128, rtn": variant(3, "rtn"),
    "W3 g128, GPTQ": variant(3, "gptq"),
}


def main() -> None:
    base = load_model("fashion-clip", progress=False)
    train, test = load_dataset("fashion-captions", "train"), load_dataset("fashion-captions", "test")
    task = task_for(base, train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
    calib = [task.batch(train, order[s : s + 64])[0] for s in range(0, 512, 64)]
    ref = task.evaluate(base, test)
    rows = [["variant", "stored MB", "compression", "zero-shot acc", "text->image P@10", "quantize s"]]
    rows.append(
        [
            "float32",
            f"{measure(base, repeats=1).total.stored_bytes / 1e6:.2f}",
            "1.00x",
            f"{ref['zero_shot_accuracy']:.4f}",
            f"{ref['retrieval_p@10']:.4f}",
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
            ]
        )
        print(rows[-1], flush=True)
    body = (
        "## Weight-only quantization of fashion-clip (`benchmarks/quant_fashion_clip.py`)\n\n"
        f"{machine()}. Zero-shot accuracy on the 10,000 test images; GPTQ calibrates on 512 training "
        "pairs (both towers). Image tower and embedding tables at 8 bits in every variant; sizes count "
        "packed codes, steps and zero points as stored.\n\n"
        f"{table(rows)}\n"
    )
    update_section("quant-fashion-clip", body)


if __name__ == "__main__":
    main()
