"""One distillation run, launched by benchmarks/distill_ddp.py under torchrun with 1 or 2 processes.

Usage: torchrun --standalone --nproc_per_node=N benchmarks/_distill_ddp_worker.py TEACHER.pt OUT.json
The student, data and steps are the same for every N; each process takes its share of every
global batch and gradients are averaged, so N = 1 and N = 2 should agree up to float rounding.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from distill_hinton import mlp

from mmcompress.data.registry import load_dataset
from mmcompress.distill import DistillConfig, distill
from mmcompress.train.config import TrainConfig
from mmcompress.train.distributed import init_from_env, world
from mmcompress.train.tasks import ClassificationTask


def main() -> None:
    teacher_path, out_path = sys.argv[1], sys.argv[2]
    init_from_env()
    torch.set_num_threads(max(1, 2 // world()[1]))  # the same two cores in total for every N
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    teacher = mlp((1200, 1200), dropout=0.3)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    torch.manual_seed(1)
    student = mlp((64,))
    config = TrainConfig(epochs=3, batch_size=256, lr=3e-3, seed=1)
    kd = DistillConfig(temperature=4.0, alpha=0.9, cache_teacher=True, train=config)
    task = ClassificationTask()
    start = time.perf_counter()
    result = distill(teacher.eval(), student, train, kd, task=task, progress=False)
    seconds = time.perf_counter() - start
    if world()[0] == 0:
        flat = torch.cat([p.detach().flatten() for p in student.parameters()])
        torch.save(flat, out_path + ".params.pt")
        accuracy = task.evaluate(student, test)["accuracy"]
        info = {"world_size": world()[1], "accuracy": accuracy, "seconds": seconds, "history": result.history}
        with open(out_path, "w") as f:
            json.dump(info, f)


if __name__ == "__main__":
    main()
