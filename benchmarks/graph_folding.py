"""BatchNorm folding on fashion-clip's trained image tower: exactness and eager-mode speed.

Run: .venv/bin/python benchmarks/graph_folding.py   (about a minute; run it alone)
Writes the `graph-folding` section of docs/benchmarks.md.
"""

from __future__ import annotations

import copy

import torch
from _results import machine, table, time_calls, update_section

from mmcompress.data.fashion_mnist import to_float_image
from mmcompress.data.registry import load_dataset
from mmcompress.graph.folding import drop_identities, fold_batchnorm
from mmcompress.models.zoo import load_model


def main() -> None:
    torch.set_num_threads(2)
    tower = load_model("fashion-clip", progress=False).image_tower.eval()
    folded = copy.deepcopy(tower)
    record = fold_batchnorm(folded)
    removed = drop_identities(folded)
    images = to_float_image(load_dataset("fashion-mnist", "test", limit=256).images)
    with torch.no_grad():
        ref, got = tower(images), folded(images)
    max_abs = float((ref - got).abs().max())
    relative = max_abs / float(ref.abs().max())
    rows = [["batch", "with BatchNorm ms", "folded ms", "speed-up"]]
    for batch in (1, 64, 256):
        x = images[:batch]
        times = {"bn": [], "folded": []}
        for _ in range(3):  # rounds in turn
            for name, model in (("bn", tower), ("folded", folded)):
                times[name].append(time_calls(lambda m=model, x=x: m(x), warmup=5, repeats=30)["median"])
        bn, fd = min(times["bn"]), min(times["folded"])
        rows.append([str(batch), f"{bn:.3f}", f"{fd:.3f}", f"{bn / fd:.2f}x"])
        print(rows[-1], flush=True)
    body = (
        "## BatchNorm folding (`benchmarks/graph_folding.py`)\n\n"
        f"{machine()}. fashion-clip's trained image tower (3 Conv-BN-ReLU blocks); "
        f"{int(record.metrics['folded'])} BatchNorms folded into their convolutions and {removed} "
        f"Identity modules dropped. Largest difference over 256 test images: {max_abs:.1e} "
        f"({relative:.1e} of the largest output; target <= 1e-5). PyTorch eager, median of 30 calls, "
        "best of 3 rounds in turn. ONNX Runtime folds BatchNorm itself when it loads a graph, so the "
        "exported files run at the same speed either way.\n\n"
        f"{table(rows)}\n"
    )
    update_section("graph-folding", body)
    print(body)


if __name__ == "__main__":
    main()
