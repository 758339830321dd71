"""fashion-clip: remove 50% of the image tower's channels structurally, fine-tune, measure speed.

Run: .venv/bin/python benchmarks/prune_image_tower.py   (about 8 minutes with a cached baseline)
Writes the `prune-image-tower` section of docs/benchmarks.md. Pruning follows the channel
dependencies: each conv's BatchNorm and the next conv's inputs shrink, and the last conv takes the
image projection's inputs along (the fusion layer). Fine-tuning: 6 epochs, text tower frozen.
Speed: image encoder (tower + projection) at batch 64, eager PyTorch and ONNX Runtime, each in
its own process with 2 threads, 3 rounds in turn.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _results import machine, summarize, table, update_section

from mmcompress.data.registry import load_dataset
from mmcompress.evaluate.measure import measure
from mmcompress.graph.export import export_onnx
from mmcompress.models.zoo import load_model, task_for
from mmcompress.prune.structured import prune_structured
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit

HERE = Path(__file__).resolve().parent
FINETUNE = TrainConfig(epochs=6, batch_size=256, lr=2e-3, freeze=("text_tower",))


class ImageEncoder(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.tower, self.proj = model.image_tower, model.image_proj

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tower(image))


def widths(model) -> list[int]:
    return [m.out_channels for m in model.image_tower.modules() if isinstance(m, torch.nn.Conv2d)]


def tower_params(model) -> int:
    return sum(p.numel() for p in model.image_tower.parameters())


def timed(kind: str, arg: str) -> list[float]:
    cmd = [sys.executable, str(HERE / "_tower_worker.py"), kind, arg, "64"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=HERE)
    return json.loads(out.stdout.strip().splitlines()[-1])["times"]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mmc-tower-"))
    base = load_model("fashion-clip", progress=False)
    train, test = load_dataset("fashion-captions", "train"), load_dataset("fashion-captions", "test")
    task = task_for(base, train)
    metrics = {"dense": task.evaluate(base, test)}
    pruned = copy.deepcopy(base)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512]
    data = [task.batch(train, order[s : s + 64]) for s in range(0, 512, 64)]
    rec = prune_structured(
        pruned, {"modality:image": {"ratio": 0.5, "method": "taylor"}}, data=data,
        loss_fn=lambda m, b: task.loss(m, *b),
    )  # fmt: skip
    metrics["pruned"] = task.evaluate(pruned, test)
    fit(pruned, task, train, FINETUNE, progress=False)
    metrics["pruned + fine-tuned"] = task.evaluate(pruned, test)
    images = torch.rand(64, 1, 28, 28)
    runtimes = {}
    for label, model in (("dense", base), ("pruned", pruned)):
        path = work / f"{label}.onnx"
        export_onnx(ImageEncoder(model).eval(), images, path)
        runtimes[f"{label}, eager PyTorch"] = ("eager", ",".join(map(str, widths(model))))
        runtimes[f"{label}, ONNX Runtime"] = ("ort", str(path))
    times = {k: [] for k in runtimes}
    for _ in range(3):
        for name, (kind, arg) in runtimes.items():
            times[name] += timed(kind, arg)
    stats = {k: summarize(v) for k, v in times.items()}
    size = {
        label: measure(m, repeats=1).per_modality["image"].stored_bytes
        for label, m in (("dense", base), ("pruned", pruned))
    }
    rows = [["model", "image-tower widths", "image tower bytes", "zero-shot acc", "text->image P@10"]]
    for label, m in metrics.items():
        model = base if label == "dense" else pruned
        rows.append([label, str(widths(model)), str(size["dense" if label == "dense" else "pruned"]),
                     f"{m['zero_shot_accuracy']:.4f}", f"{m['retrieval_p@10']:.4f}"])  # fmt: skip
    speed = [["image encoder, batch 64", "median ms", "p10-p90 ms", "speed-up"]]
    for runtime in ("eager PyTorch", "ONNX Runtime"):
        ref = stats[f"dense, {runtime}"]["median"]
        for label in ("dense", "pruned"):
            s = stats[f"{label}, {runtime}"]
            speed.append(
                [
                    f"{label}, {runtime}",
                    f"{s['median']:.2f}",
                    f"{s['p10']:.2f}-{s['p90']:.2f}",
                    f"{ref / s['median']:.2f}x",
                ]
            )
    groups = sum(e["structure"] == "channels" for e in rec.modules.values())
    body = (
        "## Structured pruning of the fashion-clip image tower (`benchmarks/prune_image_tower.py`)\n\n"
        f"{machine()}. 50% of the channels of every image-tower conv removed (taylor importance on 512 "
        "training pairs; BatchNorms, next convs and the image projection shrink with them), then 6 "
        f"epochs of fine-tuning with the text tower frozen. Image tower parameters: {tower_params(base):,} -> "
        f"{tower_params(pruned):,} ({groups} channel groups). Zero-shot accuracy on the 10,000 "
        "test images.\n\n"
        f"{table(rows)}\n\n{table(speed)}\n"
    )
    update_section("prune-image-tower", body)
    print(body)


if __name__ == "__main__":
    main()
