"""Static W8A8 Conv2d (depthwise, grouped) and Linear export as QDQ, which ONNX Runtime fuses into
QLinearConv / QLinearAdd / QGemm; int8 weight-only files keep no per-call dequantization."""

import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mmcompress.graph.export import export_onnx
from mmcompress.quant.api import QuantConfig, quantize

MIN_TOP1 = 0.9  # QDQ file vs PyTorch model: integer requantization rounds a few codes differently
MIN_COSINE = 0.995
ONE_STEP = 1.0  # a single-conv model: outputs differ by at most one input code step per product sum


class TinyNet(nn.Module):
    """Conv -> ReLU6 -> depthwise -> ReLU6 -> project (+ residual) -> grouped -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
        self.project = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, groups=4), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(x))
        return self.head(self.grouped(x).mean((2, 3)))


def _quantized(cfg: QuantConfig) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    calib = [torch.rand(8, 3, 12, 12) for _ in range(4)]
    quantize(model, cfg, calib=calib if cfg.activations else None)
    return model, torch.rand(64, 3, 12, 12)


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _optimized_ops(path, tmp_path, **config) -> Counter:
    """The ops ONNX Runtime runs after its graph optimizations (default session settings)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    for key, value in config.items():
        opts.add_session_config_entry(key, value)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / "optimized.onnx")


def test_static_w8a8_exports_qdq_that_onnx_runtime_fuses(tmp_path):
    model, x = _quantized(QuantConfig(activations="static"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(model, x, tmp_path / "q.onnx")
    proto = onnx.load(str(tmp_path / "q.onnx"))
    quantized = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    pairs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
    assert len(pairs) >= 5  # every layer's input (and the residual add's inputs)
    int8 = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8]
    # the grouped conv feeds a float mean, so ONNX Runtime cannot fuse it: its weight ships as a
    # Cast -> Mul chain that the session folds once instead of a per-call DequantizeLinear
    assert len(weight_dq) == 4 and res.int8_weights == 5 and not res.float_layers
    ops = _optimized_ops(tmp_path / "q.onnx", tmp_path)
    assert ops["QLinearConv"] == 3 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1, ops
    assert ops["FusedConv"] + ops["Conv"] == 1 and "Gemm" not in ops and "ConvInteger" not in ops
    assert ops["DequantizeLinear"] == 1 and "Cast" not in ops  # only the float conv's input
    assert res.top1_agreement >= MIN_TOP1 and res.cosine > MIN_COSINE


def test_qdq_single_conv_is_within_one_step_of_pytorch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2))
    quantize(model, QuantConfig(activations="static"), calib=[torch.randn(8, 4, 6, 6)])
    x = torch.randn(16, 4, 6, 6)
    res = export_onnx(model, x, tmp_path / "c.onnx")
    layer = model[0]
    weights = layer.qweight.float() * layer.scale.view(-1, 1, 1, 1)
    one_code = float(layer.act_step) * float(weights.abs().sum((1, 2, 3)).max())
    assert res.max_abs_error <= ONE_STEP * one_code
    assert _optimized_ops(tmp_path / "c.onnx", tmp_path)["ConvInteger"] == 0


def test_integer_format_stays_selectable_and_bad_format_is_named(tmp_path):
    model, x = _quantized(QuantConfig(activations="static"))
    res = export_onnx(model, x[:8], tmp_path / "i.onnx", static_format="integer")
    ops = _ops(tmp_path / "i.onnx")
    assert ops["ConvInteger"] == 4 and ops["MatMulInteger"] == 1 and res.cosine > 0.99999
    assert res.int8_weights == 5  # the five layers' codes, as in the QDQ file (zero points are not weights)
    with pytest.raises(ValueError, match="static_format"):
        export_onnx(model, x[:8], tmp_path / "bad.onnx", static_format="qlinear")


def test_parity_warning_names_the_qdq_rounding(tmp_path):
    from mmcompress.core.cpu import integer_weight_bits

    model, x = _quantized(QuantConfig(weight_bits=integer_weight_bits(), activations="static"))  # no saturation
    with pytest.warns(UserWarning, match="static_format='integer'"):
        export_onnx(model, x, tmp_path / "q.onnx", min_cosine=1.0)


@pytest.mark.parametrize("qdq_fusions", ["0", "1"])  # session.disable_quant_qdq: ORT's default is "0"
def test_weight_only_int8_file_folds_its_weights_at_load(tmp_path, qdq_fusions):
    model, x = _quantized(QuantConfig(weight_bits=8))
    res = export_onnx(model, x[:8], tmp_path / "w8.onnx")
    assert res.int8_weights == 5 and res.cosine > 0.99999
    ops = _optimized_ops(tmp_path / "w8.onnx", tmp_path, **{"session.disable_quant_qdq": qdq_fusions})
    assert not {"DequantizeLinear", "Cast", "Mul", "Reshape", "Sub"} & set(ops), ops
    float_model = TinyNet().eval()
    export_onnx(float_model, x[:8], tmp_path / "f.onnx")
    float_ops = _optimized_ops(tmp_path / "f.onnx", tmp_path, **{"session.disable_quant_qdq": qdq_fusions})
    assert ops == float_ops  # the same float kernels as the float file


def test_qdq_handles_dead_channels(tmp_path):
    model, x = _quantized(QuantConfig(activations="static"))
    with torch.no_grad():
        model.project.qweight[3].zero_()  # an all-zero channel (its step may be denormal)
        model.project.scale[3] = torch.finfo(torch.float32).tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(model, x, tmp_path / "q.onnx")
    assert np.isfinite(res.max_abs_error) and res.cosine > MIN_COSINE
    assert _optimized_ops(tmp_path / "q.onnx", tmp_path)["QLinearConv"] == 3


def test_clipped_conv_before_a_pooling_runs_as_an_integer_conv(tmp_path):
    """MobileNet's head (1x1 conv -> ReLU6 -> global average pool -> Linear): the conv's output is
    quantized with the ReLU6 range (no data needed) so ONNX Runtime runs it as QLinearConv."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 32, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    quantize(model, QuantConfig(activations="static"), calib=[torch.rand(8, 3, 12, 12) for _ in range(4)])
    x = torch.rand(64, 3, 12, 12)
    res = export_onnx(model, x, tmp_path / "q.onnx")
    proto = onnx.load(str(tmp_path / "q.onnx"))
    pool = next(n for n in proto.graph.node if n.op_type == "GlobalAveragePool")
    producer = {o: n for n in proto.graph.node for o in n.output}
    dq = producer[pool.input[0]]
    step = next(i for i in proto.graph.initializer if i.name == dq.input[1])
    assert dq.op_type == "DequantizeLinear" and np.isclose(onnx.numpy_helper.to_array(step), 6 / 255)
    ops = _optimized_ops(tmp_path / "q.onnx", tmp_path)
    assert ops["QLinearConv"] == 2 and ops["FusedConv"] + ops["Conv"] == 0, ops
    assert res.top1_agreement >= MIN_TOP1 and res.cosine > MIN_COSINE


def test_batchnorm_left_after_static_convs_is_named(tmp_path):
    """Unfolded BatchNorm sits between a static conv and the next quantization: ONNX Runtime runs the
    conv in float, so export says to fold first; a folded model exports without that warning."""
    from mmcompress.graph.folding import fold_batchnorm

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 1), nn.ReLU()).eval()
        model[1].running_var.uniform_(0.5, 2.0)
        return model

    calib = [torch.rand(8, 3, 10, 10)]
    unfolded = build()
    quantize(unfolded, QuantConfig(activations="static"), calib=calib)
    with pytest.warns(UserWarning, match=r"1 BatchNorm layer\(s\) follow static W8A8 convolutions \(first: '1'\)"):
        export_onnx(unfolded, calib[0], tmp_path / "u.onnx")
    folded = build()
    fold_batchnorm(folded)
    quantize(folded, QuantConfig(activations="static"), calib=calib)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(folded, calib[0], tmp_path / "f.onnx")
    assert not [w for w in caught if "BatchNorm" in str(w.message)]


def test_a_conv_before_max_pooling_keeps_its_own_codes_in_onnx_runtime(tmp_path):
    """ONNX Runtime moves a QuantizeLinear up across MaxPool and fuses Conv -> ReLU -> MaxPool into
    QLinearConv. The exporter took that Conv for unfused and folded its weight to float: ONNX Runtime
    then quantized it again itself (per tensor, 8-bit codes, zero point -3 on digits-cnn): per-channel
    precision lost, and on AVX2 without VNNI a W7A8 file read cosine 0.39 against PyTorch."""
    from mmcompress.core.cpu import integer_weight_bits

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    ).eval()  # fmt: skip
    model[0].weight.data[:8] *= 20  # per-channel steps differ 20x: one step per tensor would lose the small ones
    calib = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    quantize(model, QuantConfig(weight_bits=integer_weight_bits(), activations="static"), calib=calib)
    x = torch.randn(32, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parity warning
        res = export_onnx(model, x, tmp_path / "pool.onnx")
    assert res.cosine > 0.9999
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "pool.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    steps = {i.name: onnx.numpy_helper.to_array(i) for i in optimized.graph.initializer}
    convs = [n for n in optimized.graph.node if n.op_type == "QLinearConv"]
    # the first Conv is fused with its 16 per-channel steps; the second (MaxPool -> Flatten -> Linear: not
    # fused by ONNX Runtime) runs in float on its folded codes, not on codes ONNX Runtime made up
    assert [steps[n.input[4]].size for n in convs] == [16]


def test_the_parity_warning_names_8_bit_integer_weights_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    """ONNX Runtime's u8s8 kernels saturate 8-bit weight codes on AVX2 without VNNI: the warning says so."""
    import mmcompress.graph.export as export

    monkeypatch.setattr(export, "integer_weight_bits", lambda: 7)
    model, x = _quantized(QuantConfig(weight_bits=8, activations="static"))
    assert "no VNNI" in export._saturation_hint(model) and "weight_bits 7" in export._saturation_hint(model)
    seven, _ = _quantized(QuantConfig(weight_bits=7, activations="static"))
    assert export._saturation_hint(seven) == ""
    holder = nn.Module()
    holder.act = nn.GELU()  # transformers' GELUActivation has an `act` too: not a quantized layer
    assert export._saturation_hint(nn.Sequential(nn.Linear(4, 4), holder)) == ""
