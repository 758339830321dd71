"""A smaller fashion-clip (both towers smaller) trained with contrastive cross-modal distillation
(CLIP-KD: the student's image-text similarity matrix learns the teacher's, plus feature mimicry)
against the same student trained on the contrastive task alone.

Run: .venv/bin/python benchmarks/distill_clip.py   (about 15 minutes on 2 cores)
Writes the `distill-clip` section of docs/benchmarks.md.

Student: half the image tower's channels removed (magnitude; the image projection's inputs shrink
with them) and every 2nd layer of the MiniLM text tower kept (layers 2, 4, 6, weights copied).
Both students start from these same weights and train for the same steps with the same settings;
only the loss differs. The text tower trains at 1/20 of the learning rate.
"""

from __future__ import annotations

import copy
import time

import torch
from _results import machine, table, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.distill import DistillConfig, distill, every_kth
from mmcompress.distill.students import drop_layers
from mmcompress.models.zoo import load_model
from mmcompress.models.zoo_tasks import ContrastiveTask
from mmcompress.prune.structured import prune_structured
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit

TRAIN = TrainConfig(
    epochs=2, batch_size=256, lr=2e-3, max_steps_per_epoch=150, seed=0, lr_scale={"text_tower": 0.05},
    freeze=("text_tower.bert.embeddings",),
)  # fmt: skip


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tower_params(model) -> str:
    return f"{params(model.image_tower):,} / {params(model.text_tower.bert.encoder):,}"


def student_of(teacher) -> torch.nn.Module:
    student = copy.deepcopy(teacher)
    prune_structured(student, {"modality:image": {"ratio": 0.5}})
    drop_layers(student, every_kth(6, 2), "text_tower.bert.encoder.layer")
    for param in student.parameters():  # the teacher's text tower was frozen; the student's trains
        param.requires_grad_(True)
    return student


def main() -> None:
    teacher = load_model("fashion-clip", progress=False).eval()
    train, test = load_dataset("fashion-captions", "train"), load_dataset("fashion-captions", "test")
    task = ContrastiveTask(teacher, train)
    evaluate = ContrastiveTask(teacher, test).evaluate
    rows = [["model", "image tower / text encoder params", "zero-shot", "retrieval p@10", "train s"]]

    def row(label: str, model, seconds: float | None) -> None:
        got = evaluate(model, test)
        rows.append([label, tower_params(model), f"{got['zero_shot_accuracy']:.4f}", f"{got['retrieval_p@10']:.4f}",
                     "-" if seconds is None else f"{seconds:.0f}"])  # fmt: skip
        print(rows[-1], flush=True)

    row("teacher (fashion-clip)", teacher, None)
    start_weights = student_of(teacher)
    row("student before training", start_weights, None)
    plain = copy.deepcopy(start_weights)
    start = time.perf_counter()
    fit(plain, task, train, TRAIN, progress=False)
    row("student, contrastive loss only (no teacher)", plain, time.perf_counter() - start)
    for alpha in (0.5, 1.0):
        kd = copy.deepcopy(start_weights)
        config = DistillConfig(mode="contrastive", temperature=1.0, alpha=alpha, mimic_weight=1.0, train=TRAIN)
        start = time.perf_counter()
        distill(teacher, kd, train, config, task=task, progress=False)
        label = f"student, CLIP-KD (alpha {alpha}: {'KD only' if alpha == 1 else 'half KD, half task loss'})"
        row(label, kd, time.perf_counter() - start)
    body = (
        "## Contrastive distillation of a smaller fashion-clip (`benchmarks/distill_clip.py`)\n\n"
        f"{machine()}. Student: image tower with half its channels (magnitude) and a 3-layer text "
        "encoder (layers 2, 4, 6 of MiniLM), both initialised from the teacher. Every student row trains "
        f"{TRAIN.epochs} x {TRAIN.max_steps_per_epoch} steps of {TRAIN.batch_size} image-caption pairs "
        f"(AdamW lr {TRAIN.lr}, text tower x0.05, word embeddings frozen) from the same weights; "
        "CLIP-KD = KL of the student's image->text and text->image similarity distributions to the "
        "teacher's (T = 1, logit scale 1/0.07) + MSE mimicry of both towers' embeddings, mixed with the "
        "multi-positive InfoNCE task loss by alpha. Zero-shot accuracy on the 10,000 test images.\n\n"
        f"{table(rows)}\n"
    )
    update_section("distill-clip", body)
    print(body)


if __name__ == "__main__":
    main()
