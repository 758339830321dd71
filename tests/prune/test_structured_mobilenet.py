"""Structured pruning of a real pretrained MobileNetV2 (ImageNet weights, depthwise convs, ReLU6,
inverted residuals, global pool + Flatten + classifier)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from _masked_reference import fill_like_record, mask_like_record

from mmcompress.errors import ModelError
from mmcompress.graph.export import export_onnx
from mmcompress.models.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD, load_mobilenet_v2
from mmcompress.prune.compensate import graph_input_stats
from mmcompress.prune.dependency import trace
from mmcompress.prune.structured import prune_structured

RATIO = 0.3
RATIO_TOLERANCE = 0.02  # whole channels: each group removes round(30%) of its units
MASKED_ATOL = 1e-3  # logits are ~10: pruned vs masked differ only by float summation order
ONNX_MAX_ABS = 1e-3


@pytest.fixture(scope="module")
def mobilenet():
    try:
        return load_mobilenet_v2()
    except ModelError as err:
        pytest.skip(f"MobileNetV2 weights are not installed: {err}")


def _images() -> torch.Tensor:
    from skimage import data

    batch = []
    for image in (data.chelsea(), data.coffee()):
        x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        batch.append((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])
    return torch.cat(batch)


def test_mobilenet_v2_prunes_every_group_runs_matches_masking_and_exports(mobilenet, tmp_path):
    model, masked, x = copy.deepcopy(mobilenet), copy.deepcopy(mobilenet), _images()
    with pytest.warns(UserWarning, match=r"'classifier.1' \(feeds the model output\)"):
        record = prune_structured(model, {"_default": {"ratio": RATIO, "compensate": False}}, example_inputs=x)
    groups = {n: e for n, e in record.modules.items() if e["structure"] == "channels"}
    depthwise = {d for e in groups.values() for d in e["group"]["depthwise"]}
    assert len(depthwise) == 17  # every inverted residual's depthwise conv shrinks with its producer
    assert model.features[1].conv[0][0].groups == model.features[0][0].out_channels == groups["features.0.0"]["kept"]
    assert "features.18.0" in groups and model.classifier[1].in_features == groups["features.18.0"]["kept"] < 1280
    assert all(abs(e["removed_ratio"] - RATIO) <= RATIO_TOLERANCE for e in groups.values())
    assert record.modules["classifier.1"] == {"structure": "kept", "reason": "feeds the model output"}
    assert len(groups) == 25 and record.metrics["macs_removed"] > RATIO
    with torch.no_grad():
        error = (model(x) - mask_like_record(masked, record)(x)).abs().max()
    assert error < MASKED_ATOL
    assert export_onnx(model, x, tmp_path / "mobilenet.onnx").max_abs_error < ONNX_MAX_ABS


def test_mobilenet_v2_compensated_equals_the_mean_filled_reference(mobilenet):
    """Every consumer of MobileNetV2 is a 1x1 conv or the classifier: compensation is exact there."""
    model, reference, x = copy.deepcopy(mobilenet), copy.deepcopy(mobilenet), _images()
    record = prune_structured(model, {"_default": {"ratio": RATIO}}, example_inputs=x)
    consumers = {c[0] for e in record.modules.values() if "group" in e for c in e["group"]["consumers"]}
    stats = graph_input_stats(trace(reference, x), dict(reference.named_modules()), consumers)
    assert all(not torch.isnan(stats[name][0]).any() for name in consumers)  # every mean is known data-free
    fill_like_record(reference, record, {name: mean for name, (mean, _) in stats.items()})
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() < MASKED_ATOL
