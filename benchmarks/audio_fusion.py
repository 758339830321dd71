"""Image + audio fusion on spoken digits: the fusion model against each single modality, then
W8A8 on every tower (PyTorch and the ONNX Runtime artifact), sizes per tower.

Run: .venv/bin/python benchmarks/audio_fusion.py   (first run synthesizes 1,796 utterances with
espeak-ng and trains three small models: a few minutes on 2 cores; later runs use the caches)
Writes the `audio-fusion` section of docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from _results import machine, table, update_section

from mmcompress import export_onnx, load_model, measure, quantize
from mmcompress.data.registry import load_dataset
from mmcompress.graph.ort_module import OrtModule
from mmcompress.models.adapter import adapter_for
from mmcompress.train.tasks import ClassificationTask

MODELS = {"digits-image-only": "image only", "digits-audio-only": "audio only", "digits-audio-fusion": "fusion"}
W8A8 = {"_default": {"weight_bits": 7, "activations": "static", "act_observer": "percentile"}}


def main() -> None:
    train, test = load_dataset("spoken-digits", "train"), load_dataset("spoken-digits", "test")
    task = ClassificationTask()
    rows, accuracy = [], {}
    for name in MODELS:
        model = load_model(name)
        accuracy[name] = task.evaluate(model, test)["accuracy"]
    calib_index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512].split(64)
    calib = [train.inputs(i) for i in calib_index]
    for name, label in MODELS.items():
        model = load_model(name)
        quantized = copy.deepcopy(model)
        record = quantize(quantized, W8A8, calib=calib)
        modality_of = adapter_for(model).modality_of
        towers = sorted({modality_of(n) or "other" for n in record.modules})
        q_acc = task.evaluate(quantized, test)["accuracy"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(quantized, test.inputs(torch.arange(8)), path)
            ort_acc = task.evaluate(OrtModule.load(path, quantized), test)["accuracy"]
        before, after = measure(model), measure(quantized)
        tower_kb = ", ".join(
            f"{t} {s.stored_bytes / 1024:.0f}->{after.per_modality[t].stored_bytes / 1024:.0f}"
            for t, s in before.per_modality.items()
        )
        rows.append([
            label, f"{accuracy[name]:.4f}", f"{q_acc:.4f}", f"{100 * (q_acc - accuracy[name]):+.2f}",
            f"{ort_acc:.4f}", "/".join(towers), tower_kb,
        ])  # fmt: skip
        print(rows[-1], flush=True)
    fusion = accuracy["digits-audio-fusion"]
    best_single = max(accuracy["digits-image-only"], accuracy["digits-audio-only"])
    head = [["model", "float acc", "W8A8 acc", "change (pt)", "ORT W8A8 acc", "towers quantized", "KB per tower"]]
    body = (
        "## Image + audio fusion on spoken digits (`benchmarks/audio_fusion.py`)\n\n"
        f"{machine()}. Data: each scikit-learn digit image paired with the spoken digit synthesized by "
        f"espeak-ng ({len(train)} train / {len(test)} test pairs; test voices are variants unheard in "
        "training, with random speed and pitch). Audio tower: log-mel (40 x 100) CNN; image tower: the "
        "small CNN; fusion: concatenation + MLP. W8A8: 7-bit weights, static per-tensor activations "
        "(percentile calibration on 512 training pairs) on every tower; ORT = the exported ONNX model "
        "run by ONNX Runtime.\n\n" + table(head + rows) + "\n\n"
        f"Fusion {fusion:.4f} vs best single modality {best_single:.4f} "
        f"({100 * (fusion - best_single):+.2f} points).\n"
    )
    update_section("audio-fusion", body)
    print(body)


if __name__ == "__main__":
    main()
