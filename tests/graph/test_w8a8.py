"""W8A8 Linear layers (dynamic per tensor / per token, static, SmoothQuant) on ONNX Runtime integer kernels."""

import onnx
import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError, DataError
from mmcompress.graph.export import export_onnx
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.primitives import sqnr_db

MAX_PARITY_ERR = 1e-4  # same integers in both runtimes; only float summation order differs
MIN_FLOAT_COSINE = 0.99
SMOOTHQUANT_GAIN_DB = 6.0  # SmoothQuant must lift output SQNR by at least this on outlier channels

W7A8 = {"weight_bits": 7}
FORMS = {
    "dynamic per tensor": ({**W7A8, "activations": "dynamic"}, "DynamicQuantizeLinear"),
    "dynamic per token": ({**W7A8, "activations": "dynamic", "act_granularity": "per_token"}, "ReduceMax"),
    "static minmax": ({**W7A8, "activations": "static"}, "QuantizeLinear"),
    "static percentile": ({**W7A8, "activations": "static", "act_observer": "percentile"}, "QuantizeLinear"),
    "static kl + smoothquant": (
        {**W7A8, "activations": "static", "act_observer": "kl", "smoothquant": 0.5},
        "QuantizeLinear",
    ),
    "per token + smoothquant": (
        {**W7A8, "activations": "dynamic", "act_granularity": "per_token", "smoothquant": 0.5},
        "ReduceMax",
    ),
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(6, 64), (3, 5, 64)])  # Gemm and MatMul export paths
def test_w8a8_forms_run_matmulinteger_and_match_pytorch(tmp_path, form, shape):
    settings, quantize_op = FORMS[form]
    model = _mlp()
    x = torch.randn(*shape)
    calib = [torch.randn(*shape) for _ in range(4)]
    with torch.no_grad():
        float_out = model(x)
    rec = quantize(model, QuantConfig.from_dict(settings), calib=calib)
    assert {m["activations"]["mode"] for m in rec.modules.values()} == {settings["activations"]}
    res = export_onnx(model, x, tmp_path / "m.onnx", static_format="integer")  # QDQ: tests/graph/test_qdq.py
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count(quantize_op) == 2
    assert "Gemm" not in ops and "MatMul" not in ops
    assert res.max_abs_error < MAX_PARITY_ERR
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), float_out.flatten(), dim=0)
    assert cos > MIN_FLOAT_COSINE


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
def test_w4a8_grouped_layers_run_one_matmulinteger_per_group_and_match_pytorch(tmp_path, granularity):
    model = _mlp()
    x = torch.randn(3, 5, 64)
    settings = {"weight_bits": 4, "granularity": "per_group", "group_size": 32, "scheme": "asymmetric"}
    quantize(model, {**settings, "activations": "dynamic", "act_granularity": granularity})
    res = export_onnx(model, x, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 64 // 32 + 128 // 32 and "MatMul" not in ops and not res.float_layers
    assert res.max_abs_error < MAX_PARITY_ERR  # the same integers: codes - zero point, steps per group


def _outlier_inputs(n: int = 256) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(n, 64)
    x[:, [3, 17]] *= 60.0  # two outlier channels, as in transformer LayerNorm outputs
    return x


def test_smoothquant_fixes_activation_outlier_channels():
    layer = nn.Linear(64, 64)
    x = _outlier_inputs()
    with torch.no_grad():
        reference = layer(x)
    out = {}
    for alpha in (None, 0.5):
        model = nn.Sequential(nn.Linear(64, 64))
        model[0].load_state_dict(layer.state_dict())
        cfg = QuantConfig(activations="dynamic", weight_bits=8, smoothquant=alpha)
        quantize(model, cfg, calib=[x[:128]])
        with torch.no_grad():
            out[alpha] = sqnr_db(reference[128:], model(x[128:]))
    assert out[0.5] > out[None] + SMOOTHQUANT_GAIN_DB, out


def test_per_token_steps_follow_each_token():
    x = torch.randn(4, 64)
    x[0] *= 100.0  # one outlier token ruins a per-tensor step for the others
    errors = {}
    for granularity in ("per_tensor", "per_token"):
        model = nn.Sequential(nn.Linear(64, 8))
        torch.manual_seed(0)
        nn.init.normal_(model[0].weight)
        with torch.no_grad():
            reference = model(x)
        quantize(model, QuantConfig(activations="dynamic", act_granularity=granularity))
        with torch.no_grad():
            errors[granularity] = sqnr_db(reference[1:], model(x)[1:])
    assert errors["per_token"] > errors["per_tensor"] + 20.0, errors


def test_activation_settings_are_validated():
    with pytest.raises(ConfigError, match="'asymmetric' needs weight_bits <= 7"):
        QuantConfig.from_dict({"activations": "dynamic", "weight_bits": 8, "scheme": "asymmetric"})
    with pytest.raises(ConfigError, match="activations 'static' needs weight_bits 7 or 8"):
        QuantConfig.from_dict({"activations": "static", "weight_bits": 4})
    with pytest.raises(ConfigError, match="act_observer 'kl' sets the fixed input range of activations 'static'"):
        QuantConfig.from_dict({"activations": "dynamic", "act_observer": "kl"})  # not silently ignored
    auto = QuantConfig.from_dict({"weight_bits": "auto", "scheme": "asymmetric", "activations": "dynamic"})
    assert auto.weight_bits <= 7  # "auto" picks codes whose difference to the zero point fits int8
    with pytest.raises(ConfigError, match="per_channel"):
        QuantConfig.from_dict({"activations": "static", "granularity": "per_group"})
    with pytest.raises(ConfigError, match="per_token' needs activations 'dynamic'"):
        QuantConfig.from_dict({"activations": "static", "act_granularity": "per_token"})
    with pytest.raises(ConfigError, match="smoothquant"):
        QuantConfig.from_dict({"smoothquant": 0.5})
    with pytest.raises(ConfigError, match="smoothquant"):
        QuantConfig.from_dict({"activations": "dynamic", "smoothquant": 1.5})


def test_static_and_smoothquant_need_clean_calibration_data():
    with pytest.raises(ConfigError, match="need calibration data"):
        quantize(_mlp(), QuantConfig(activations="static"))
    with pytest.raises(DataError, match="empty"):
        quantize(_mlp(), QuantConfig(activations="static"), calib=[])
    bad = torch.randn(4, 64)
    bad[0, 0] = float("nan")
    model = _mlp()
    with pytest.raises(DataError, match="NaN"):
        quantize(model, QuantConfig(activations="dynamic", smoothquant=0.5), calib=[bad])
    assert isinstance(model[0], nn.Linear)  # nothing half-quantized


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_w8a8_convolutions_run_convinteger_and_match_pytorch(tmp_path, mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, groups=2),
        nn.Flatten(), nn.Linear(16 * 9, 10),
    )  # fmt: skip
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        float_out = model(x)
    cfg = QuantConfig(weight_bits=7, activations=mode, act_granularity="per_tensor")
    rec = quantize(model, cfg, calib=[torch.rand(4, 1, 8, 8) for _ in range(3)])
    assert rec.modules["2"]["activations"]["mode"] == mode
    res = export_onnx(model, x, tmp_path / "m.onnx", static_format="integer")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("ConvInteger") == 2 and ops.count("MatMulInteger") == 1 and "Conv" not in ops
    assert res.max_abs_error < MAX_PARITY_ERR
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), float_out.flatten(), dim=0)
    assert cos > MIN_FLOAT_COSINE
