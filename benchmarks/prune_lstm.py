"""The recurrent text model (`caption-lstm`): half of its LSTM hidden units removed by gradient
(taylor) importance, then one epoch of fine-tuning.

Run: .venv/bin/python benchmarks/prune_lstm.py   (about 3 minutes)
Writes the `prune-lstm` section of docs/benchmarks.md. Accuracy: caption -> class on the 10,000
test captions (specific and ambiguous phrasings). Latency: eager PyTorch, batch 64, 2 threads,
dense and pruned timed in turn in one process.
"""

from __future__ import annotations

import copy

import torch
from _results import machine, table, time_calls, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.evaluate.measure import measure
from mmcompress.models.zoo import load_model, task_for
from mmcompress.prune.structured import prune_structured
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit


def main() -> None:
    torch.set_num_threads(2)
    base = load_model("caption-lstm", progress=False)
    train, test = load_dataset("fashion-captions", "train"), load_dataset("fashion-captions", "test")
    task = task_for(base, train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:1024]
    data = [task.batch(train, order[s : s + 128]) for s in range(0, 1024, 128)]
    pruned = copy.deepcopy(base)
    prune_structured(
        pruned, {"lstm": {"ratio": 0.5, "method": "taylor"}}, data=data, loss_fn=lambda m, b: task.loss(m, *b)
    )
    results = {"dense": task.evaluate(base, test), "pruned 50% of hidden units": task.evaluate(pruned, test)}
    fit(pruned, task, train, TrainConfig(epochs=1, batch_size=128, lr=1e-3), progress=False)
    results["pruned + 1 epoch fine-tuning"] = task.evaluate(pruned, test)
    inputs, _ = task.batch(test, torch.arange(64))
    latency = {"dense": [], "pruned": []}
    for _ in range(3):
        for label, model in (("dense", base), ("pruned", pruned)):
            latency[label].append(time_calls(lambda m=model: m(**inputs), warmup=3, repeats=20)["median"])
    rows = [["model", "hidden units", "stored bytes", "accuracy", "ambiguous captions", "latency ms (batch 64)"]]
    for label, metrics in results.items():
        model = base if label == "dense" else pruned
        key = "dense" if label == "dense" else "pruned"
        rows.append([
            label, str(model.lstm.hidden_size), f"{measure(model, repeats=1).total.stored_bytes:,}",
            f"{metrics['accuracy']:.4f}", f"{metrics['accuracy_ambiguous']:.4f}", f"{sorted(latency[key])[1]:.2f}",
        ])  # fmt: skip
    body = (
        "## Pruning the LSTM caption classifier (`benchmarks/prune_lstm.py`)\n\n"
        f"{machine()}. `caption-lstm` (word embedding 64, one LSTM layer of 256 units, linear head) "
        "trained on fashion-captions. Taylor importance (|w * dL/dw| summed over each unit's four gates) "
        "on 1,024 training captions; the LSTM's gate rows, recurrent columns and the head's inputs "
        "shrink together.\n\n"
        f"{table(rows)}\n"
    )
    update_section("prune-lstm", body)
    print(body)


if __name__ == "__main__":
    main()
