"""GELU fused into a W8A8 layer's int8 kernel: the same outputs as unfused, the GELU skipped only
for outputs the kernel activated, every other path (simulation, export, few rows) unchanged."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.fuse_act import FusedActivation, fuse_activations, gelu_kind
from mmcompress.quant.kernel_select import MIN_ROWS, ONEDNN
from mmcompress.quant.kernels import ACTIVATED, set_kernel

QUANT_SLACK = 5e-3  # a few input steps of the layers after the fused one


class Intermediate(nn.Module):
    """transformers' BertIntermediate shape: dense + intermediate_act_fn."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.dense = nn.Linear(32, 64)
        self.intermediate_act_fn = nn.GELU(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


Intermediate.__module__ = "transformers.models.bert.modeling_bert"  # the attribute pairs apply to transformers' code


class OwnIntermediate(Intermediate):
    """A user's module with the same attribute names: its code is unknown, so it is not fused."""

    __module__ = "users_model"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense(x)
        return self.intermediate_act_fn(h) + h


def _model(approximate: str = "none") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Intermediate(approximate), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_gives_the_unfused_outputs(granularity, approximate):
    model = _model(approximate)
    record = quantize(model, QuantConfig(activations="dynamic", act_granularity=granularity))
    assert sorted(record.info["fused_activations"]) == ["0.dense", "1"]
    assert isinstance(model[0].intermediate_act_fn, FusedActivation) and isinstance(model[2], FusedActivation)
    reference = copy.deepcopy(model)
    set_kernel(reference, "simulate")
    x = torch.randn(4, MIN_ROWS, 32)
    with torch.no_grad():
        hidden = model[0].dense(x.reshape(-1, 32))
        assert model[0].dense.last_kernel == "onednn"
        assert getattr(hidden, ACTIVATED) == gelu_kind(model[0].intermediate_act_fn.inner)
        unfused = model[0].intermediate_act_fn.inner(reference[0].dense(x.reshape(-1, 32)))
        torch.testing.assert_close(hidden, unfused, rtol=1e-4, atol=1e-4)  # the fused layer itself
        # the whole model: a float difference in the last bits may flip the next layer's input code
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=QUANT_SLACK)
        small = torch.randn(1, 32)  # one row: the cache path, nothing tagged, the GELU module runs
        torch.testing.assert_close(model(small), reference(small), rtol=1e-4, atol=1e-4)
        assert model[0].dense.last_kernel == "cache"


def test_weight_only_layers_and_other_activations_are_not_fused():
    model = _model()
    model[2] = nn.ReLU()
    assert quantize(model, QuantConfig()).info.get("fused_activations") is None
    assert fuse_activations(model) == [] and isinstance(model[0].intermediate_act_fn, nn.GELU)
    w8a8 = _model()
    w8a8[2] = nn.ReLU()
    quantize(w8a8, QuantConfig(activations="dynamic"))
    assert isinstance(w8a8[2], nn.ReLU) and fuse_activations(w8a8) == []  # fused once, not wrapped twice
    own = nn.Sequential(OwnIntermediate(), nn.Linear(64, 8)).eval()
    quantize(own, QuantConfig(activations="dynamic"))
    assert isinstance(own[0].intermediate_act_fn, nn.GELU) and own[0].dense.post_act is None


def test_export_and_training_run_the_gelu_module(tmp_path):
    from mmcompress.graph.export import export_onnx

    model = _model()
    quantize(model, QuantConfig(activations="dynamic"))
    x = torch.randn(2, MIN_ROWS, 32)
    res = export_onnx(model, x, tmp_path / "m.onnx")
    assert res.cosine > 0.999
    y = model(x.requires_grad_())  # autograd: the simulation, the GELU module applies
    y.sum().backward()
    assert x.grad is not None and model[0].dense.last_kernel == "simulate"
