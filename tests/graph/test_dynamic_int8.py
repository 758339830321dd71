"""W8A8-dynamic Linear layers export to ONNX Runtime integer kernels with PyTorch parity."""

import onnx
import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError
from mmcompress.graph.export import export_onnx
from mmcompress.quant.api import QuantConfig, quantize

MAX_PARITY_ERR = 1e-4  # same integers in both runtimes; only float summation order differs


@pytest.mark.parametrize("shape", [(6, 64), (3, 5, 64)])  # Gemm and MatMul export paths
def test_w7a8_dynamic_runs_matmulinteger_and_matches_pytorch(tmp_path, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    x = torch.randn(*shape)
    with torch.no_grad():
        float_out = model(x)
    rec = quantize(model, QuantConfig(activations="dynamic", weight_bits=7))
    assert {m["activations"] for m in rec.modules.values()} == {"dynamic"}
    res = export_onnx(model, x, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "Gemm" not in ops and "MatMul" not in ops
    assert res.max_abs_error < MAX_PARITY_ERR
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), float_out.flatten(), dim=0)
    assert cos > 0.99


def test_dynamic_activations_need_per_channel_symmetric_7_or_8_bits():
    with pytest.raises(ConfigError, match="activations 'dynamic' needs weight_bits 7 or 8"):
        QuantConfig.from_dict({"activations": "dynamic", "weight_bits": 4})
    with pytest.raises(ConfigError, match="per_channel"):
        QuantConfig.from_dict({"activations": "dynamic", "granularity": "per_group"})
