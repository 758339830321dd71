"""Real MobileNetV2 (ImageNet weights, 17 depthwise convs) on real photo crops: GPTQ, Wanda,
SparseGPT and mixed precision handle every depthwise conv and keep the float model's top-1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcompress.models.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD, load_mobilenet_v2
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.mixed import MixedPrecisionConfig, quantize_mixed

# top-1 agreement with float on 16 held-out crops; only the 17 depthwise convs are compressed
GPTQ_DW_W4_MIN_AGREEMENT = 0.6  # W4 per-channel GPTQ (measured 0.81; round-to-nearest: 0.25)
PRUNE_DW_25_MIN_AGREEMENT = 0.4  # 25% unstructured (measured: Wanda 0.56, SparseGPT 0.75)
MIXED_5BIT_MIN_AGREEMENT = 0.5  # every conv and the classifier, 4 or 8 bits at <= 5 average (measured 0.62)


def _crops(n: int, seed: int, size: int = 224) -> torch.Tensor:
    """Random resized crops of scikit-image's bundled photos, ImageNet-normalised."""
    skimage_data = pytest.importorskip("skimage.data")
    photos = [skimage_data.chelsea(), skimage_data.astronaut(), skimage_data.coffee(), skimage_data.rocket()]
    gen = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for i in range(n):
        photo = torch.from_numpy(np.ascontiguousarray(photos[i % 4])).permute(2, 0, 1).float() / 255
        side = int(min(photo.shape[1:]) * float(torch.empty(1).uniform_(0.5, 1.0, generator=gen)))
        top = int(torch.randint(photo.shape[1] - side + 1, (1,), generator=gen))
        left = int(torch.randint(photo.shape[2] - side + 1, (1,), generator=gen))
        crop = F.interpolate(photo[None, :, top : top + side, left : left + side], size=(size, size), mode="bilinear")
        out.append((crop[0] - mean) / std)
    return torch.stack(out)


@pytest.fixture(scope="module")
def setup():
    calib, test = [_crops(4, seed=1)], _crops(16, seed=2)
    with torch.no_grad():
        reference = load_mobilenet_v2()(test).argmax(1)
    return calib, test, reference


def _agreement(model, test, reference) -> float:
    with torch.no_grad():
        return float((model(test).argmax(1) == reference).float().mean())


def _depthwise(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]


def test_gptq_on_depthwise_convs_beats_round_to_nearest(setup):
    calib, test, reference = setup
    agreement = {}
    for method in ("rtn", "gptq"):
        model = load_mobilenet_v2()
        names = _depthwise(model)
        assert len(names) == 17
        rec = quantize(model, dict.fromkeys(names, QuantConfig(weight_bits=4, method=method)), calib=calib)
        assert {rec.modules[n]["method"] for n in names} == {method}
        agreement[method] = _agreement(model, test, reference)
    assert agreement["gptq"] >= GPTQ_DW_W4_MIN_AGREEMENT and agreement["gptq"] > agreement["rtn"], agreement


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_input_driven_pruning_of_depthwise_convs(setup, method):
    calib, test, reference = setup
    model = load_mobilenet_v2()
    config = PruneConfig(sparsity=0.25, method=method, scope="layer")
    rec = prune(model, {**dict.fromkeys(_depthwise(model), config), "_default": None}, data=calib)
    assert rec.modules["features.1.conv.0.0"]["sparsity"] == pytest.approx(0.25, abs=0.01)
    assert _agreement(model, test, reference) >= PRUNE_DW_25_MIN_AGREEMENT


def test_mixed_precision_plans_five_bits_and_runs(setup):
    calib, test, reference = setup
    model = load_mobilenet_v2()
    config = MixedPrecisionConfig(bits_options=(4, 8), average_bits=5.0)
    with pytest.warns(UserWarning, match="per-channel steps"):  # 144-, 192-, ... input 1x1 convs at group 128
        record, plan = quantize_mixed(model, config, calib)
    assert 4.5 <= plan.average_bits["_rest"] <= 5.0 + 1e-9
    assert record.modules["features.1.conv.0.0"]["type"] == "QuantConv2d"
    assert _agreement(model, test, reference) >= MIXED_5BIT_MIN_AGREEMENT
