"""Real MobileNetV2 (torchvision ImageNet weights) on real photo crops: W8 accuracy with bias
correction, W8A8 static, bit-exact ONNX parity, file size vs measure, export leaves the model as found."""

import copy
import warnings

import pytest
import torch

from mmcompress.data.photos import photo_crops
from mmcompress.errors import ModelError
from mmcompress.evaluate.metrics import mean_kl, top1_agreement
from mmcompress.graph.export import export_onnx
from mmcompress.graph.folding import fold_batchnorm
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.equalize import correct_bias, equalize_cross_layer

W8_BC_MIN_AGREEMENT = 0.9  # W8 RTN + bias correction vs float (300 crops: see docs/benchmarks.md)
W8_BC_MAX_KL = 0.01  # mean KL(float || W8 + bias correction); RTN alone is ~0.03
W8A8_MIN_AGREEMENT = 0.7  # W8A8 static (CLE + bias correction) vs float on few crops
PARITY_MIN_COSINE = 0.99999  # BN folded: ONNX Runtime's integer kernels == PyTorch, bit for bit
FILE_OVER_MEASURE = 1.15  # ONNX file bytes / measure's stored bytes (graph + float biases on top)
CLE_MAX_ERR = 1e-3  # cross-layer equalization is exact up to float rounding
PRUNED_MIN_REMOVED = 0.28  # 30% of the hidden channels and of the 1280 features: 30.0% of parameters
PRUNED_MIN_AGREEMENT = 0.5  # reconstructed, no training (0.77 on 300 crops with 512 calibration crops;
# mean compensation alone: 0.0)
PRUNE_CALIB_CROPS = 32


@pytest.fixture(scope="module")
def float_model():
    from mmcompress.models.mobilenet_v2 import load_mobilenet_v2

    try:
        model = load_mobilenet_v2()
    except ModelError as err:
        pytest.skip(f"MobileNetV2 weights package missing: {err}")
    return model


@pytest.fixture(scope="module")
def crops():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return photo_crops(16, split="test"), photo_crops(8, split="calib")


def _folded(model):
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    return folded


@torch.no_grad()
def test_export_leaves_model_as_found(float_model, tmp_path, crops):
    model = copy.deepcopy(float_model)
    model.features[3].train()  # mixed modes must survive too (the exporter used to leave all in train mode)
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, crops[0][:1], tmp_path / "f.onnx")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.eval()
    before = model(crops[0][:4])
    export_onnx(model, crops[0][:1], tmp_path / "f.onnx")
    assert not any(m.training for m in model.modules())
    assert torch.equal(model(crops[0][:4]), before)  # BatchNorm still on running statistics


@torch.no_grad()
def test_w8_bias_correction_recovers_agreement(float_model, crops):
    test, calib = crops
    reference = _folded(float_model)
    ref_logits = float_model(test)
    model = copy.deepcopy(reference)
    quantize(model, QuantConfig())
    rtn_kl = mean_kl(ref_logits, model(test))
    correct_bias(model, reference, [calib])
    logits = model(test)
    assert mean_kl(ref_logits, logits) < min(W8_BC_MAX_KL, rtn_kl / 2)
    assert top1_agreement(ref_logits, logits) >= W8_BC_MIN_AGREEMENT


@torch.no_grad()
def test_equalization_is_exact(float_model, crops):
    model = _folded(float_model)
    rec = equalize_cross_layer(model)
    assert rec.metrics["pairs"] >= 30  # every expand -> depthwise -> project chain
    assert float((model(crops[0][:4]) - float_model(crops[0][:4])).abs().max()) < CLE_MAX_ERR


def test_w8a8_static_export_is_bit_exact_and_sized_as_measured(float_model, crops, tmp_path):
    test, calib = crops
    reference = _folded(float_model)
    equalize_cross_layer(reference)
    model = copy.deepcopy(reference)
    quantize(model, QuantConfig(activations="static"), calib=[calib])
    correct_bias(model, reference, [calib])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parity warning, no float layer
        res = export_onnx(model, test[:4], tmp_path / "q.onnx", static_format="integer")  # the bit-exact form
    assert res.cosine > PARITY_MIN_COSINE and res.top1_agreement == 1.0 and not res.float_layers
    bits = QuantConfig(activations="static").weight_bits  # auto: 7 on AVX2 without VNNI, packed by measure
    assert res.measured_bytes < res.file_bytes < FILE_OVER_MEASURE * res.measured_bytes * 8 / bits  # int8 in ONNX
    with torch.no_grad():
        assert top1_agreement(float_model(test), model(test)) >= W8A8_MIN_AGREEMENT


def test_4bit_weights_ship_packed_even_with_batchnorm(float_model, crops, tmp_path):
    model = copy.deepcopy(float_model)  # BatchNorm not folded: the exporter folds it into the codes' steps
    quantize(model, {"re:.*conv\\.1\\.0$": QuantConfig(weight_bits=4), "_default": QuantConfig(weight_bits=4)})
    res = export_onnx(model, crops[0][:1], tmp_path / "w4.onnx")
    assert not res.float_layers
    assert res.file_bytes < FILE_OVER_MEASURE * res.measured_bytes


def test_hidden_channel_pruning_with_reconstruction_keeps_agreement(float_model, crops):
    """30% of every inverted residual's hidden channels (depthwise convs included) and of the 1280
    features: least-squares reconstruction keeps most of the float model's top-1 before any training."""
    from mmcompress.prune.structured import prune_structured

    test = crops[0]
    calib = photo_crops(PRUNE_CALIB_CROPS, seed=1, split="calib")  # sequential refits need rows
    model = copy.deepcopy(float_model)
    config = {"ratio": 0.3, "reconstruct": True}
    targets = {r"re:features\.([2-9]|1[0-7])\.conv\.0\.0$": config, "features.18.0": config, "_default": None}
    rec = prune_structured(model, targets, example_inputs=test[:2], calib=list(calib.split(16)))
    assert rec.metrics["removed"] > PRUNED_MIN_REMOVED
    assert model.features[5].conv[1][0].groups == model.features[5].conv[1][0].out_channels < 192  # depthwise shrank
    with torch.no_grad():
        assert top1_agreement(float_model(test), model(test)) >= PRUNED_MIN_AGREEMENT


def test_photo_crops_dataset_evaluates_mobilenet_through_the_agreement_task(float_model):
    """`--data photo-crops --task agreement`: the CLI route to real data for an ImageNet model."""
    from mmcompress.data.registry import list_datasets, load_dataset
    from mmcompress.train.reference_tasks import AgreementTask

    assert "photo-crops" in list_datasets()
    test = load_dataset("photo-crops", "test", limit=6)
    assert len(test) == 6 and test[0].shape == (3, 224, 224)
    assert torch.equal(test.images, photo_crops(6, seed=0, split="test"))  # the conformance matrix's test crops
    assert AgreementTask(float_model).evaluate(float_model, test)["agreement"] == 1.0
