import onnx
import pytest
import torch

from mmcompress.graph.export import export_onnx
from mmcompress.graph.ort_module import OrtModule
from mmcompress.quant.api import QuantConfig, quantize

MIN_COSINE = 0.9999
MAX_ABS_ERR = 1e-4


def _inputs(b):
    return (torch.randn(b, 1, 8, 8), torch.randint(0, 50, (b, 4)))


@pytest.mark.parametrize("int8", [False, True])
def test_export_runs_in_onnxruntime_and_matches_pytorch(two_tower, tmp_path, int8):
    if int8:
        quantize(two_tower, QuantConfig())
    res = export_onnx(two_tower, _inputs(3), tmp_path / "m.onnx")
    assert res.cosine > MIN_COSINE and res.max_abs_error < MAX_ABS_ERR
    proto = onnx.load(str(tmp_path / "m.onnx"))
    int8_inits = [
        i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and not i.name.endswith("_zero")
    ]
    assert len(int8_inits) == (4 if int8 else 0) == res.int8_weights  # conv, embedding, 2 linear
    # dynamic batch: another batch size runs and matches
    x = _inputs(7)
    with torch.no_grad():
        expected = two_tower(*x)
    got = OrtModule.load(tmp_path / "m.onnx")(*x)
    assert torch.allclose(got, expected, atol=MAX_ABS_ERR)


def test_int8_file_is_about_four_times_smaller(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    x = torch.randn(2, 256)
    float_bytes = export_onnx(model, x, tmp_path / "f.onnx").file_bytes
    quantize(model, QuantConfig())
    int8_bytes = export_onnx(model, x, tmp_path / "q.onnx").file_bytes
    assert float_bytes / int8_bytes > 3.5
