"""A 2-process torchrun distillation run against the same run in 1 process (Fashion-MNIST,
Hinton-style logit distillation of the MLP student of benchmarks/distill_hinton.py).

Run: .venv/bin/python benchmarks/distill_ddp.py   (about 5 minutes on 2 cores; trains the teacher
first if benchmarks/distill_hinton.py has not cached it)
Writes the `distill-ddp` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _results import machine, table, update_section
from distill_hinton import WORK, teacher_model

from mmcompress.data.registry import load_dataset
from mmcompress.train.tasks import ClassificationTask

HERE = Path(__file__).resolve().parent


def run(nproc: int, teacher: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE / "_distill_ddp_worker.py"), str(teacher), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(out.read_text())


def main() -> None:
    teacher_model(load_dataset("fashion-mnist", "train"), ClassificationTask())  # cached under WORK
    teacher = WORK / "teacher-mlp-1200x2.pt"
    with tempfile.TemporaryDirectory() as tmp:
        one, two = run(1, teacher, Path(tmp) / "one.json"), run(2, teacher, Path(tmp) / "two.json")
        p1, p2 = torch.load(Path(tmp) / "one.json.params.pt"), torch.load(Path(tmp) / "two.json.params.pt")
    diff = float((p1 - p2).abs().max())
    rows = [["processes", "test accuracy", "final epoch loss", "seconds"]]
    for info in (one, two):
        rows.append([str(info["world_size"]), f"{info['accuracy']:.4f}", f"{info['history'][-1]['loss']:.5f}",
                     f"{info['seconds']:.0f}"])  # fmt: skip
    body = (
        "## Distillation with torchrun: 2 processes vs 1 (`benchmarks/distill_ddp.py`)\n\n"
        f"{machine()}. The student and teacher of the Hinton section, T = 4, alpha 0.9, 3 epochs of "
        "60,000 images in global batches of 256; with 2 processes (gloo, one thread each) every "
        "process takes half of each global batch and gradients are averaged.\n\n"
        f"{table(rows)}\n\nLargest difference between the two students' parameters: {diff:.1e} "
        f"(accuracy difference {abs(one['accuracy'] - two['accuracy']):.4f}). The seconds are not a speed "
        "comparison (two cores in all, shared with other jobs); the point is that a run scales out "
        "without changing its result.\n"
    )
    update_section("distill-ddp", body)
    print(body)


if __name__ == "__main__":
    main()
