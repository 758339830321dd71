"""GELU fused into a W8A8 layer's int8 kernel inside transformers' FFN modules: the same outputs
as unfused; a direct call, a hook, the simulation, export and autograd see the plain linear output;
users' own modules (and nn.Sequential, whose children user code may call) are never fused."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.fuse_act import FusedActivation, fuse_activations
from mmcompress.quant.kernel_select import MIN_ROWS, ONEDNN
from mmcompress.quant.kernels import ACTIVATED, set_kernel

QUANT_SLACK = 5e-3  # a few input steps of the layers after the fused one
BITS = integer_weight_bits()  # oneDNN (which fuses the GELU) sums these codes exactly here: 7 on AVX2 without VNNI


class Intermediate(nn.Module):
    """transformers' BertIntermediate: forward = intermediate_act_fn(dense(x))."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.dense = nn.Linear(32, 64)
        self.intermediate_act_fn = nn.GELU(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


Intermediate.__module__ = "transformers.models.bert.modeling_bert"  # pairs apply only to transformers' code


class Gated(nn.Module):
    """A user's module reading the linear's output twice: fusing it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))
        self.dense, self.intermediate_act_fn = nn.Linear(32, 64), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.mlp[0](x), self.dense(x)
        return self.mlp[2](self.mlp[1](h) * torch.sigmoid(h)) + (self.intermediate_act_fn(g) * g).sum(-1, True)


class CountingGELU(nn.GELU):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingGELU.calls += 1
        return super().forward(x)


def _model(approximate: str = "none") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(Intermediate(approximate), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    model[0].intermediate_act_fn = CountingGELU(approximate=approximate)
    return model


def _x() -> torch.Tensor:
    return torch.randn(4, MIN_ROWS, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_gives_the_unfused_outputs(granularity, approximate):
    model = _model(approximate)
    record = quantize(model, QuantConfig(weight_bits=BITS, activations="dynamic", act_granularity=granularity))
    assert record.info["fused_activations"] == ["0.dense"]  # not the Sequential's own Linear -> GELU
    assert isinstance(model[0].intermediate_act_fn, FusedActivation) and isinstance(model[2], nn.GELU)
    reference = copy.deepcopy(model)
    set_kernel(reference, "simulate")
    x = _x()
    with torch.no_grad():
        before = CountingGELU.calls
        model(x)
        assert CountingGELU.calls == before  # fused: the GELU module did not run
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=QUANT_SLACK)
        direct = model[0].dense(x)  # a direct call outside the block: the plain linear output
        assert model[0].dense.last_kernel == "onednn" and getattr(direct, ACTIVATED, None) is None
        torch.testing.assert_close(direct, reference[0].dense(x), rtol=1e-4, atol=1e-4)
        small = torch.randn(1, 32)  # one row: the cache path, the GELU module runs
        torch.testing.assert_close(model(small), reference(small), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN int8 linear")
def test_hooks_on_the_linear_or_the_gelu_stop_the_fusion():
    model = _model()
    quantize(model, QuantConfig(weight_bits=BITS, activations="dynamic"))
    reference = copy.deepcopy(model)
    set_kernel(reference, "simulate")
    model[0].dense.register_forward_hook(lambda m, i, o: o.clone())  # replaces the output
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=QUANT_SLACK)
    watched = _model()
    quantize(watched, QuantConfig(weight_bits=BITS, activations="dynamic"))
    seen = []
    watched[0].intermediate_act_fn.inner.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        watched(x)
    assert len(seen) == 1  # a hook on the GELU sees it run: no fusion while it is watched


def test_users_modules_and_weight_only_layers_are_not_fused():
    gated = Gated().eval()
    assert quantize(gated, QuantConfig(weight_bits=BITS, activations="dynamic")).info.get("fused_activations") is None
    assert isinstance(gated.mlp[1], nn.GELU) and gated.mlp[0].post_act is None and gated.dense.post_act is None
    weight_only = _model()
    assert quantize(weight_only, QuantConfig()).info.get("fused_activations") is None
    w8a8 = _model()
    quantize(w8a8, QuantConfig(weight_bits=BITS, activations="dynamic"))
    assert fuse_activations(w8a8) == []  # fused once, not wrapped twice


def test_export_and_training_run_the_gelu_module(tmp_path):
    from mmcompress.graph.export import export_onnx

    model = _model()
    quantize(model, QuantConfig(weight_bits=BITS, activations="dynamic"))
    x = _x()
    res = export_onnx(model, x, tmp_path / "m.onnx")
    assert res.cosine > 0.999
    y = model(x.requires_grad_())  # autograd: the simulation, the GELU module applies
    y.sum().backward()
    assert x.grad is not None and model[0].dense.last_kernel == "simulate"
    twin = copy.deepcopy(model).eval()  # the hooks travel with the copy and arm the copy's linear
    with torch.no_grad():
        torch.testing.assert_close(twin(x.detach()), model(x.detach()), rtol=0, atol=0)
