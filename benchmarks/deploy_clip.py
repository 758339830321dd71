"""A deployable fashion-clip end to end: `recipes/deploy_clip.yaml` (image tower pruned, text tower
distilled to 3 layers, W7A8, ONNX export evaluated on ONNX Runtime), then `mmcompress bench` per
tower, original vs compressed.

Run: .venv/bin/python benchmarks/deploy_clip.py [--bench-only]
     (the recipe takes about 20 minutes on 2 cores; run the bench part alone, it times)
Writes the `deploy-clip` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _results import machine, table, update_section

from mmcompress.evaluate.bench import bench

OUT = Path("/tmp/mmc-deploy-clip")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "deploy_clip.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-only", action="store_true", help="reuse the finished run in /tmp/mmc-deploy-clip")
    args = parser.parse_args()
    if not args.bench_only:
        cmd = [sys.executable, "-m", "mmcompress", "run", str(RECIPE), "--out", str(OUT), "--quiet"]
        subprocess.run(cmd, check=True)
    record = json.loads((OUT / "record.json").read_text())
    stages = {s["label"]: s for s in record["stages"]}
    rows = [["stage", "zero-shot (PyTorch)", "stored MB", "image tower MB", "text tower MB"]]
    for label in ("baseline", "smaller", "compressed"):
        m = stages[label]["metrics"]
        rows.append([label, f"{m['zero_shot_accuracy']:.4f}", f"{m['stored_bytes'] / 1e6:.2f}",
                     f"{m['stored_bytes.image'] / 1e6:.3f}", f"{m['stored_bytes.text'] / 1e6:.2f}"])  # fmt: skip
    exported = stages["export_onnx"]["metrics"]
    timing = bench("fashion-clip", OUT / "bench", run_dir=OUT, batches=(64,), repeats=20, warmup=3)
    speed = [["part", "runtime", "original ms", "compressed ms", "speed-up"]]
    original = {(r.part, r.runtime): r for r in timing if r.variant == "original"}
    for r in timing:
        if r.variant == "compressed":
            base = original[(r.part, r.runtime)]
            speed.append([r.part, r.runtime, f"{base.median_ms:.1f}", f"{r.median_ms:.1f}", f"{r.speedup:.2f}x"])
    body = (
        "## A deployable fashion-clip, end to end (`benchmarks/deploy_clip.py`)\n\n"
        f"{machine()}. `mmcompress run recipes/deploy_clip.yaml`: image tower with half its channels "
        "removed (taylor), text tower cut to 3 MiniLM layers, both trained 300 steps with CLIP-KD "
        "against the original model (alpha 0.5), then W7A8 on both towers (GPTQ, SmoothQuant, "
        "per-token steps for the FFN output layers), exported to ONNX.\n\n"
        f"{table(rows)}\n\n"
        f"The exported artifact on ONNX Runtime: zero-shot {exported['ort_zero_shot_accuracy']:.4f} vs "
        f"{exported['torch_zero_shot_accuracy']:.4f} in PyTorch on the same 10,000 test images "
        f"(difference {abs(exported['ort_zero_shot_accuracy'] - exported['torch_zero_shot_accuracy']) * 100:.2f} "
        "points; target <= 0.2).\n\n"
        "`mmcompress bench fashion-clip --run OUT --batch 64` (each case in its own process, 2 threads, "
        f"median of 20 calls):\n\n{table(speed)}\n"
    )
    update_section("deploy-clip", body)
    print(body)


if __name__ == "__main__":
    main()
