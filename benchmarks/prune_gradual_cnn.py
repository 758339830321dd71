"""Gradual pruning of a trained CNN to 90% sparsity (Zhu & Gupta start from a trained model and
prune while fine-tuning), against the small dense CNN with as many weights trained as long.

Run: .venv/bin/python benchmarks/prune_gradual_cnn.py   (about 25 minutes on 2 cores)
Writes the `prune-gradual-cnn` section of docs/benchmarks.md. Complements `prune_gradual.py`,
whose CNN row prunes from scratch in 6 epochs.
"""

from __future__ import annotations

import time

from _results import machine, table, update_section
from prune_gradual import nonzero_weights, weights

from mmcompress.data.registry import load_dataset
from mmcompress.models.zoo import ImageClassifier
from mmcompress.prune.schedule import gradual_prune
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

DENSE = TrainConfig(epochs=6, batch_size=256, lr=3e-3, seed=0)
PRUNE = TrainConfig(epochs=8, batch_size=256, lr=1e-3, seed=1)
PRUNE_EPOCHS = 5  # sparsity rises over these, then 3 epochs at 90%


def main() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    task = ClassificationTask()
    rows = [["model", "weights", "non-zero weights", "epochs", "test accuracy", "train s"]]

    def row(label, model, epochs, seconds):
        acc = task.evaluate(model, test)["accuracy"]
        rows.append([label, f"{weights(model):,}", f"{nonzero_weights(model):,}", str(epochs), f"{acc:.4f}",
                     f"{seconds:.0f}"])  # fmt: skip
        print(rows[-1], flush=True)
        return acc

    start, model = time.perf_counter(), ImageClassifier((16, 32, 64))
    fit(model, task, train, DENSE, progress=False)
    dense = row("CNN 16-32-64, dense", model, DENSE.epochs, time.perf_counter() - start)
    start = time.perf_counter()
    gradual_prune(model, task, train, PRUNE, {"sparsity": 0.9}, prune_epochs=PRUNE_EPOCHS, progress=False)
    sparse = row("  then gradual magnitude pruning to 90%", model, f"{DENSE.epochs} + {PRUNE.epochs}",
                 time.perf_counter() - start)  # fmt: skip
    start, small = time.perf_counter(), ImageClassifier((5, 10, 20))
    total = DENSE.model_copy(update={"epochs": DENSE.epochs + PRUNE.epochs})
    fit(small, task, train, total, progress=False)
    row("CNN 5-10-20, small dense", small, total.epochs, time.perf_counter() - start)
    body = (
        "## Gradual pruning of a trained CNN on Fashion-MNIST (`benchmarks/prune_gradual_cnn.py`)\n\n"
        f"{machine()}. The dense CNN trains {DENSE.epochs} epochs (AdamW lr {DENSE.lr}); gradual "
        f"magnitude pruning (one global threshold over every Linear/Conv2d weight) then fine-tunes it "
        f"{PRUNE.epochs} epochs at lr {PRUNE.lr}, sparsity rising on the cubic schedule over the first "
        f"{PRUNE_EPOCHS} and held at 90% for the rest. The small dense CNN has about as many weights as "
        f"the sparse one keeps and trains for all {total.epochs} epochs. Accuracy drop at 90% sparsity: "
        f"{100 * (dense - sparse):.2f} points.\n\n"
        f"{table(rows)}\n"
    )
    update_section("prune-gradual-cnn", body)
    print(body)


if __name__ == "__main__":
    main()
