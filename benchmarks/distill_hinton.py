"""Hinton-style logit distillation on Fashion-MNIST: a temperature sweep (T = 1, 2, 4, 8, 20) for a
small MLP student, with few labels (the regime where soft targets carry most information, like
Hinton et al.'s 3%-of-the-data experiment) and with all 60,000 labels.

Run: .venv/bin/python benchmarks/distill_hinton.py   (about 15 minutes on 2 cores)
Writes the `distill-hinton` section of docs/benchmarks.md. The teacher is cached in
/tmp/mmc-distill-bench (delete it to retrain).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _results import machine, table, update_section
from torch import nn

from mmcompress.data.registry import load_dataset
from mmcompress.distill import DistillConfig, distill
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

WORK = Path("/tmp/mmc-distill-bench")
TEMPERATURES = (1, 2, 4, 8, 20)
FEW = 2000


def mlp(hidden: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def teacher_model(train, task) -> nn.Module:
    model = mlp((1200, 1200), dropout=0.3)
    path = WORK / "teacher-mlp-1200x2.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    fit(model, task, train, TrainConfig(epochs=8, batch_size=256, lr=1e-3), progress=False)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    task = ClassificationTask()
    teacher = teacher_model(train, task)
    teacher_acc = task.evaluate(teacher, test)["accuracy"]
    few = torch.utils.data.Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:FEW])
    few_cfg = TrainConfig(epochs=30, batch_size=64, lr=2e-3, seed=1)
    all_cfg = TrainConfig(epochs=8, batch_size=256, lr=3e-3, seed=1)
    regimes = {  # name -> (hard-label images, distillation images, configs, unlabeled transfer set)
        f"{FEW:,} labelled images": (few, few, few_cfg, False),
        "all 60,000 labelled images": (train, train, all_cfg, False),
        f"{FEW:,} labels; distilled on 60,000 unlabelled images": (few, train, (few_cfg, all_cfg), True),
    }
    rows = [["training data", "student", "T", "test accuracy", "gap closed", "seconds"]]
    summary = {}
    for regime, (data, kd_data, config, unlabeled) in regimes.items():
        hard_cfg, kd_cfg = config if isinstance(config, tuple) else (config, config)
        torch.manual_seed(1)
        start, hard = time.perf_counter(), mlp((64,))
        fit(hard, task, data, hard_cfg, progress=False)
        hard_acc = task.evaluate(hard, test)["accuracy"]
        rows.append([regime, "hard labels only", "-", f"{hard_acc:.4f}", "0%", f"{time.perf_counter() - start:.0f}"])
        print(rows[-1], flush=True)
        best = 0.0
        for temperature in TEMPERATURES:
            torch.manual_seed(1)
            start, student = time.perf_counter(), mlp((64,))
            kd = DistillConfig(
                temperature=temperature, alpha=0.9, unlabeled=unlabeled, cache_teacher=True, train=kd_cfg
            )
            distill(teacher, student, kd_data, kd, task=task, progress=False)
            acc = task.evaluate(student, test)["accuracy"]
            closed = (acc - hard_acc) / (teacher_acc - hard_acc)
            best = max(best, closed)
            how = "distilled, soft targets only" if unlabeled else "distilled (alpha 0.9)"
            rows.append([regime, how, str(temperature), f"{acc:.4f}", f"{closed:.0%}",
                         f"{time.perf_counter() - start:.0f}"])  # fmt: skip
            print(rows[-1], flush=True)
        summary[regime] = best
    notes = "; ".join(
        f"{regime}: best temperature closes {closed:.0%} of the gap" for regime, closed in summary.items()
    )
    body = (
        "## Hinton-style distillation on Fashion-MNIST (`benchmarks/distill_hinton.py`)\n\n"
        f"{machine()}. Teacher: MLP 784-1200-1200-10 with dropout 0.3 ({params(teacher):,} parameters, "
        f"all 60,000 training images, test accuracy {teacher_acc:.4f}). Student: MLP 784-64-10 "
        f"({params(mlp((64,))):,} parameters, {params(teacher) / params(mlp((64,))):.0f}x smaller), the same "
        "seed with and without the teacher. In the first two blocks the distilled student sees the same "
        "images as the hard-label one (few-label rows: a fixed random subset) and steps, loss = 0.9 * "
        "T^2 KL(teacher_T || student_T) + 0.1 * cross-entropy. The last block is the data-light case "
        "(Hinton et al.'s transfer set): the hard-label student has 2,000 labels, the distilled one "
        "no labels but the teacher's soft targets on all 60,000 training images. Gap closed = "
        "(distilled - hard) / (teacher - hard).\n\n"
        f"{table(rows)}\n\n{notes}.\n"
    )
    update_section("distill-hinton", body)
    print(body)


if __name__ == "__main__":
    main()
