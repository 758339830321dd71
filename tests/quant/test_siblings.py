"""Attention's query/key/value as one int8 GEMM (quant/siblings.py): bit-identical to separate
calls, joined only when the three read the same tensor, never serving a stale or foreign input."""

import copy
import io

import pytest
import torch
from torch import nn

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.quant.api import quantize
from mmcompress.quant.kernel_select import ONEDNN
from mmcompress.quant.kernels import SIBLINGS, set_kernel

pytestmark = pytest.mark.skipif(not ONEDNN, reason="the joint GEMM runs on oneDNN's int8 kernel (x86)")


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        weights = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, -1)
        return weights @ v


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(memory), self.v_proj(memory)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


BITS = integer_weight_bits()  # the joint GEMM is oneDNN's: codes it sums exactly on this CPU (7 on AVX2 alone)
W4A8 = {"weight_bits": 4, "granularity": "per_group", "group_size": 16, "scheme": "asymmetric"}
W4A8["activations"] = "dynamic"


def _quantized(module: nn.Module, config: dict | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """(joined, separate) copies of `module` quantized W8A8 dynamic (or `config`), and the record's info."""
    torch.manual_seed(0)
    rec = quantize(module.eval(), config or {"activations": "dynamic", "weight_bits": BITS})
    separate = copy.deepcopy(module)
    for m in separate.modules():
        m.__dict__.pop(SIBLINGS, None)
    return module, separate, rec.info


def _group(model: nn.Module):
    return next(m.__dict__[SIBLINGS] for m in model.modules() if SIBLINGS in m.__dict__)


@pytest.mark.parametrize("config", [None, W4A8], ids=["w8a8", "w4a8-grouped"])
def test_joint_qkv_equals_separate_calls_bit_for_bit(config):
    joined, separate, info = _quantized(SelfAttention(), config)
    if config is not None:  # 32 outputs are too few for "auto" to pick per-group GEMMs: force them
        set_kernel(joined, "onednn"), set_kernel(separate, "onednn")
    assert info["joint_qkv"] == [["query", "key", "value"]]
    x = torch.randn(4, 64, 32)  # 256 rows: oneDNN's kernel (per-group GEMMs too)
    with torch.no_grad():
        first = joined(x)  # the observed round runs the three separately
        assert _group(joined).state == "joint"
        for batch in (x, torch.randn(4, 64, 32), torch.randn(2, 160, 32)):
            assert torch.equal(joined(batch), separate(batch))
    assert torch.equal(first, separate(x))


def test_cross_attention_whose_query_reads_another_input_runs_alone():
    joined, separate, _ = _quantized(CrossAttention())
    x, memory = torch.randn(2, 20, 32), torch.randn(2, 24, 32)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(joined(x, memory), separate(x, memory))
    assert _group(joined).state == "alone"


def test_a_hook_that_replaces_the_keys_input_gets_the_key_of_that_input():
    joined, separate, _ = _quantized(SelfAttention())
    x = torch.randn(4, 16, 32)
    with torch.no_grad():
        joined(x)  # joined from now on
        for model in (joined, separate):
            model.key.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
        assert torch.equal(joined(x), separate(x))


def test_an_input_edited_in_place_between_the_calls_is_not_served_from_the_joint_result():
    joined, separate, _ = _quantized(SelfAttention())
    x = torch.randn(64, 32)
    with torch.no_grad():
        joined(x)
        q = joined.query(x)  # the leader computes all three
        x.add_(0.5)
        assert torch.equal(q, separate.query(x - 0.5)) and torch.equal(joined.key(x), separate.key(x))


def test_copies_and_saved_models_join_their_own_layers_and_new_codes_are_used():
    joined, separate, _ = _quantized(SelfAttention())
    x = torch.randn(4, 16, 32)
    with torch.no_grad():
        joined(x)
        buffer = io.BytesIO()
        torch.save(joined, buffer)
        buffer.seek(0)
        for copied in (copy.deepcopy(joined), torch.load(buffer, weights_only=False)):
            group = _group(copied)
            members = zip(group.members, ("query", "key", "value"), strict=True)
            assert group.state == "observe" and all(m is getattr(copied, n) for m, n in members)
            copied(x)
            assert torch.equal(copied(x), separate(x))
        joined(x)
        for model in (joined, separate):
            model.key.qweight.mul_(-1)  # new codes after joining: the joint weight is rebuilt
        assert torch.equal(joined(x), separate(x))


def test_smoothquant_gives_the_three_one_factor_and_they_still_join():
    torch.manual_seed(0)
    model = SelfAttention().eval()
    calib = [torch.randn(4, 16, 32) * torch.linspace(0.1, 8, 32) for _ in range(2)]  # outlier channels
    reference = copy.deepcopy(model)
    rec = quantize(model, {"activations": "dynamic", "smoothquant": 0.5, "weight_bits": BITS}, calib=calib)
    assert rec.info["joint_qkv"] == [["query", "key", "value"]]
    assert torch.equal(model.query.act_smooth, model.key.act_smooth) and torch.equal(
        model.key.act_smooth, model.value.act_smooth
    )
    separate = copy.deepcopy(model)
    for m in separate.modules():
        m.__dict__.pop(SIBLINGS, None)
    with torch.no_grad():
        model(calib[0])
        assert _group(model).state == "joint"
        x = calib[1]
        assert torch.equal(model(x), separate(x))
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), reference(x).flatten(), 0)
    assert cos > 0.99


def test_inference_mode_tensors_join_without_hooks_and_run_alone_with_one():
    joined, separate, _ = _quantized(SelfAttention())
    with torch.inference_mode():
        x = torch.randn(4, 16, 32)
        joined(x)
        assert _group(joined).state == "joint" and torch.equal(joined(x), separate(x))
        for model in (joined, separate):  # edits the input in place: unseen without a version counter
            model.key.register_forward_pre_hook(_double_in_place)
        assert torch.equal(joined(x.clone()), separate(x.clone()))


def _double_in_place(module, args) -> None:
    args[0].mul_(2.0)
