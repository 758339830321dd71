"""Gradual magnitude pruning (Zhu & Gupta cubic schedule) to 90% sparsity on Fashion-MNIST, and a
large-sparse vs small-dense comparison at the same number of non-zero weights.

Run: .venv/bin/python benchmarks/prune_gradual.py   (about 25 minutes on 2 cores)
Writes the `prune-gradual` section of docs/benchmarks.md. Every model trains for the same number
of epochs from the same seed; the gradual runs raise sparsity over the first two thirds of them.
"""

from __future__ import annotations

import time

from _results import machine, table, update_section
from torch import nn

from mmcompress.data.registry import load_dataset
from mmcompress.models.zoo import ImageClassifier
from mmcompress.prune.schedule import gradual_prune
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

SPARSITY = 0.9


def mlp(hidden: tuple[int, int]) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
        nn.Linear(hidden[1], 10),
    )  # fmt: skip


ARCHS = {  # name -> (large model, small dense model with about 10% of its weights, epochs)
    "MLP 784-300-100-10": (lambda: mlp((300, 100)), lambda: mlp((32, 24)), 9),
    "CNN 16-32-64 (fashion-cnn)": (lambda: ImageClassifier((16, 32, 64)), lambda: ImageClassifier((5, 10, 20)), 6),
}


def weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def nonzero_weights(model: nn.Module) -> int:
    return sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def main() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    task = ClassificationTask()
    rows = [["model", "weights", "non-zero weights", "test accuracy", "train s"]]
    for name, (large, small, epochs) in ARCHS.items():
        config = TrainConfig(epochs=epochs, batch_size=256, lr=3e-3, seed=0)
        runs = {
            f"{name}, dense": (large(), None),
            f"{name}, gradual {SPARSITY:.0%} sparse": (large(), SPARSITY),
            f"{name.split(' ')[0]} small dense (~10% of the weights)": (small(), None),
        }
        for label, (model, sparsity) in runs.items():
            start = time.perf_counter()
            if sparsity is None:
                fit(model, task, train, config, progress=False)
            else:
                gradual_prune(model, task, train, config, {"sparsity": sparsity}, progress=False)
            seconds = time.perf_counter() - start
            accuracy = task.evaluate(model, test)["accuracy"]
            rows.append(
                [label, f"{weights(model):,}", f"{nonzero_weights(model):,}", f"{accuracy:.4f}", f"{seconds:.0f}"]
            )
            print(rows[-1], flush=True)
    body = (
        "## Gradual pruning on Fashion-MNIST (`benchmarks/prune_gradual.py`)\n\n"
        f"{machine()}. Magnitude pruning on the cubic schedule of Zhu & Gupta (sparsity of every "
        "Linear/Conv2d weight rises over the first two thirds of training, masks kept, then trains on "
        "at the final sparsity), 60,000 training / 10,000 test images, same epochs and seed for every "
        "row. The small dense models have about as many weights as the sparse ones keep.\n\n"
        f"{table(rows)}\n"
    )
    update_section("prune-gradual", body)
    print(body)


if __name__ == "__main__":
    main()
