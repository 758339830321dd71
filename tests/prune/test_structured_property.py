"""Property: any model a user would write, pruned at any ratios per tower in one call, still runs,
equals the masked reference (the same units zeroed, nothing removed) and exports to ONNX; with
mean compensation (the default) it equals the mean-filled reference (removed units replaced by
their expected value at each consumer)."""

import copy
import random

import pytest
import torch
from _masked_reference import fill_like_record, mask_like_record
from torch import nn

from mmcompress.graph.export import export_onnx
from mmcompress.prune.compensate import graph_input_stats
from mmcompress.prune.dependency import trace
from mmcompress.prune.structured import prune_structured

MASKED_ATOL = 1e-4  # pruned vs masked model: removing zeroed units only reorders float sums
ONNX_COSINE = 0.9999  # ONNX Runtime vs PyTorch on the pruned model
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.LeakyReLU)  # all map 0 to 0


class ConvTower(nn.Module):
    """Stem, inverted residual blocks (expand, depthwise, project, residual add), last conv,
    then global pool + Flatten (or Flatten of a small map)."""

    def __init__(self, rng: random.Random, width: int, pool: bool) -> None:
        super().__init__()
        act = rng.choice(ACTIVATIONS)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), act())
        self.blocks = nn.ModuleList()
        for _ in range(rng.randint(1, 2)):
            hidden = width * rng.choice((2, 3))
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
                    nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=rng.random() < 0.5),
                    nn.BatchNorm2d(hidden), act(),
                    nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width),
                )
            )  # fmt: skip
        self.last = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.BatchNorm2d(2 * width), act(), nn.Dropout(0.1))
        self.pool = nn.AdaptiveAvgPool2d(1 if pool else 2)
        self.flatten = nn.Flatten()
        self.out_dim = 2 * width * (1 if pool else 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.flatten(self.pool(self.last(x)))


class TextTower(nn.Module):
    def __init__(self, rng: random.Random, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.rnn = (nn.LSTM if rng.random() < 0.5 else nn.GRU)(12, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return out[:, -1]


class Fused(nn.Module):
    """2-3 towers whose features are concatenated into one fusion Linear."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        images = rng.randint(1, 2)
        self.images = nn.ModuleList(ConvTower(rng, rng.choice((8, 12)), (seed + i) % 2 == 0) for i in range(images))
        self.text = TextTower(rng, rng.choice((10, 16))) if images == 1 or rng.random() < 0.5 else None
        width = sum(t.out_dim for t in self.images) + (self.text.out_dim if self.text else 0)
        self.fuse = nn.Sequential(nn.Linear(width, 24), nn.ReLU(), nn.Linear(24, 5))

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        feats = [tower(image) for tower in self.images]
        if self.text is not None:
            feats.append(self.text(ids))
        return self.fuse(torch.cat(feats, 1))


@pytest.mark.parametrize("seed", range(5))
def test_random_fused_models_pruned_per_tower_run_match_masking_and_export(seed, tmp_path):
    torch.manual_seed(seed)
    rng = random.Random(100 + seed)
    model = Fused(seed).eval()
    with torch.no_grad():  # BatchNorm with non-trivial statistics and scales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.2, 1.5)
    inputs = {"image": torch.randn(2, 3, 16, 16), "ids": torch.randint(0, 50, (2, 6))}
    towers = [f"images.{i}" for i in range(len(model.images))] + (["text"] if model.text is not None else [])
    mapping = {f"re:{t}\\..*": {"ratio": rng.choice((0.25, 0.4, 0.5)), "compensate": False} for t in towers}
    masked = copy.deepcopy(model)
    record = prune_structured(model, mapping, example_inputs=inputs)
    mask_like_record(masked, record)
    shrunk = [e for e in record.modules.values() if e["structure"] == "channels"]
    assert shrunk and all(e["kept"] < e["before"] for e in shrunk)
    assert any(e["group"]["depthwise"] for e in shrunk) and any(e["group"]["consumers"] for e in shrunk)
    with torch.no_grad():
        error = (model(**inputs) - masked(**inputs)).abs().max()
    assert error < MASKED_ATOL
    assert export_onnx(model, inputs, tmp_path / "m.onnx").cosine > ONNX_COSINE


@pytest.mark.parametrize("seed", range(3))
def test_compensated_pruning_equals_the_mean_filled_reference(seed):
    torch.manual_seed(seed)
    model = Fused(seed).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.bias.uniform_(-1, 1)
    inputs = {"image": torch.randn(2, 3, 16, 16), "ids": torch.randint(0, 50, (2, 6))}
    towers = [f"images.{i}" for i in range(len(model.images))]
    reference = copy.deepcopy(model)
    record = prune_structured(model, {f"re:{t}\\..*": {"ratio": 0.4} for t in towers}, example_inputs=inputs)
    consumers = {c[0] for e in record.modules.values() if "group" in e for c in e["group"]["consumers"]}
    means = graph_input_stats(trace(reference, inputs), dict(reference.named_modules()), consumers)
    fill_like_record(reference, record, {n: mean for n, (mean, _) in means.items()})
    assert any("compensation" in e for e in record.modules.values())
    with torch.no_grad():
        error = (model(**inputs) - reference(**inputs)).abs().max()
    assert error < MASKED_ATOL
