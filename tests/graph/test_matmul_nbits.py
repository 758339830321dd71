"""4-bit grouped Linear layers export to ONNX Runtime's MatMulNBits with exact parity."""

import onnx
import pytest
import torch
from torch import nn

from mmcompress.graph.export import export_onnx
from mmcompress.quant.api import QuantConfig, quantize

MAX_PARITY_ERR = 1e-5


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("shape", [(6, 256), (2, 3, 256)])  # Gemm and MatMul export paths
def test_w4_group_linear_runs_as_matmulnbits(tmp_path, scheme, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 32))
    quantize(model, QuantConfig(weight_bits=4, granularity="per_group", group_size=64, scheme=scheme))
    float_bytes = (256 * 128 + 128 * 32) * 4
    res = export_onnx(model, torch.randn(*shape), tmp_path / "w4.onnx")
    proto = onnx.load(str(tmp_path / "w4.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops and "Gemm" not in ops
    assert res.nbit_weights == 2 and res.int8_weights == 0  # the summary counts the 4-bit codes too
    assert res.max_abs_error < MAX_PARITY_ERR
    assert res.file_bytes < float_bytes / 5  # 4-bit codes + one step (and zero point) per 64 weights
