"""Compress a model mmcompress has never seen: a plain nn.Module on scikit-learn digits."""

import sys

import torch
from torch import nn

import mmcompress

out_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/own-model"
train, test = mmcompress.load_dataset("digits", "train"), mmcompress.load_dataset("digits", "test")
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
torch.manual_seed(0)
mmcompress.fit(model, mmcompress.ClassificationTask(), train, mmcompress.TrainConfig(epochs=8, lr=3e-3))

recipe = {
    "stages": [
        {"name": "baseline", "pass": "evaluate"},
        {"pass": "prune", "config": {"sparsity": 0.7}},
        {"pass": "finetune", "config": {"epochs": 3, "lr": 1e-3}},
        {"pass": "quantize", "config": {"weight_bits": 8}},
        {"name": "compressed", "pass": "evaluate"},
        {"pass": "export_onnx"},
    ]
}
result = mmcompress.compress(model, recipe, data=(train, test), output_dir=out_dir)
before, after = result.metrics("baseline"), result.metrics("compressed")
print(f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, {after['compression']:.1f}x smaller")
