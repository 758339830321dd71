"""Fusion styles vs single-modality baselines on fashion-captions (full data, default training).

Run: .venv/bin/python benchmarks/fusion.py   (about 10 minutes on 2 cores)
Writes the `fusion` section of docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
import time

from _results import machine, table, update_section

from mmcompress.evaluate.measure import measure
from mmcompress.models.zoo import load_model

MODELS = ["baseline-image", "baseline-text", "fusion-early", "fusion-late", "fusion-xattn"]


def main() -> None:
    cache = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mmc-fusion-")
    rows = [["model", "params", "test acc", "acc, ambiguous captions", "acc, specific captions", "train s"]]
    scores = {}
    for name in MODELS:
        start = time.perf_counter()
        model = load_model(name, cache_dir=cache, progress=False)
        seconds = time.perf_counter() - start
        m = model.mmcompress_info["metrics"]
        scores[name] = m["accuracy_ambiguous"]
        params = measure(model, repeats=1).total.params
        rows.append(
            [
                name,
                f"{params:,}",
                f"{m['accuracy']:.4f}",
                f"{m['accuracy_ambiguous']:.4f}",
                f"{m['accuracy_specific']:.4f}",
                f"{seconds:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    best_single = max(scores["baseline-image"], scores["baseline-text"])
    verdict = ", ".join(
        f"{n}: {'beats' if scores[n] > best_single else 'does NOT beat'} both baselines "
        f"({100 * (scores[n] - best_single):+.2f} points)"
        for n in MODELS[2:]
    )
    body = (
        "## Fusion styles vs single-modality baselines (`benchmarks/fusion.py`)\n\n"
        f"fashion-captions, 60,000 train / 10,000 test, 3 epochs each; {machine()}. "
        'About 30% of captions are ambiguous ("a top" fits t-shirt, pullover and shirt).\n\n'
        f"{table(rows)}\n\nOn the ambiguous-caption split: {verdict}.\n"
    )
    update_section("fusion", body)


if __name__ == "__main__":
    main()
