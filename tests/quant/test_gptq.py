"""GPTQ: lower output error than round-to-nearest on a real layer, and the full quantize() path."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError, DataError, UnsupportedError
from mmcompress.quant.api import GPTQConfig, QuantConfig, quantize
from mmcompress.quant.gptq import accumulate_hessian, gptq_quantize
from mmcompress.quant.primitives import dequantize_affine, fake_quantize

GPTQ_ERROR_RATIO_VS_RTN = 0.5  # GPTQ must at least halve RTN's output error on calibration inputs


@pytest.fixture(scope="module")
def minilm_ffn():
    """The real first FFN layer of all-MiniLM-L6-v2 and its real inputs on caption sentences."""
    from mmcompress.data.captions import caption_vocabulary
    from mmcompress.models.minilm import MiniLMEncoder, load_minilm_tokenizer

    enc, tok = MiniLMEncoder(), load_minilm_tokenizer()
    layer = enc.bert.encoder.layer[0].intermediate.dense
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    batch = tok([t for t, _, _ in caption_vocabulary()], padding=True, return_tensors="pt")
    with torch.no_grad():
        enc(batch["input_ids"], batch["attention_mask"])
    handle.remove()
    return layer.weight.detach().clone(), seen[0].reshape(-1, 384)


def _rel_err(x, w, wq):
    ref = x @ w.T
    return float((x @ wq.T - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize(("bits", "group"), [(4, 128), (3, None)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_real_minilm_layer(minilm_ffn, bits, group, act_order):
    w, x = minilm_ffn
    h, _ = accumulate_hessian(torch.zeros(384, 384, dtype=torch.float64), 0, x)
    codes, scale, zero = gptq_quantize(w, h, bits, group_size=group, act_order=act_order)
    wq = dequantize_affine(codes.view(w.shape[0], scale.shape[1], -1), scale, zero).view_as(w)
    rtn = fake_quantize(w, bits, True, group)
    assert _rel_err(x, w, wq) < GPTQ_ERROR_RATIO_VS_RTN * _rel_err(x, w, rtn)
    lo = -(2 ** (bits - 1)) + 1
    assert int(codes.min()) >= lo and int(codes.max()) <= -lo


def test_quantize_with_gptq_on_linear_and_conv_uses_calibration(two_tower):
    torch.manual_seed(0)
    calib = [(torch.randn(16, 1, 8, 8), torch.randint(0, 50, (16, 4))) for _ in range(4)]
    with pytest.warns(UserWarning, match="embeddings"):
        rec = quantize(two_tower, QuantConfig(weight_bits=4, method="gptq"), calib=calib)
    assert rec.modules["head"]["method"] == "gptq" and rec.modules["image.0"]["method"] == "gptq"
    assert rec.modules["text.0"]["method"] == "rtn"


def test_gptq_errors(two_tower):
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize(two_tower, {"modality:fusion": QuantConfig(method="gptq"), "_default": None})
    with pytest.raises(DataError, match="calibration never reached 1 module.*first: unused"):
        model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
        model.forward = lambda x: model["used"](x)  # type: ignore[method-assign]
        quantize(model, QuantConfig(method="gptq"), calib=[torch.randn(2, 4)])
    with pytest.raises(DataError, match="empty"):
        quantize(two_tower, {"head": QuantConfig(method="gptq"), "_default": None}, calib=[])
    conv = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, padding=1, padding_mode="circular"))
    with pytest.raises(UnsupportedError, match="zero padding; Conv2d '0'"):
        quantize(conv, QuantConfig(method="gptq"), calib=[torch.randn(1, 4, 8, 8)])
    assert GPTQConfig.from_dict(GPTQConfig(act_order=True).to_dict()).act_order


class _TiedLM(nn.Module):
    """An embedding lookup whose matrix is also the output Linear's weight (Whisper's proj_out)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.embed(ids))))


def test_gptq_rounds_a_weight_tied_to_an_embedding_to_nearest_and_names_it():
    torch.manual_seed(0)
    model = _TiedLM().eval()
    calib = [torch.randint(0, 40, (8, 6)) for _ in range(4)]
    cfg = {"weight_bits": 4, "granularity": "per_group", "group_size": 8}
    rtn = copy.deepcopy(model)
    quantize(rtn, {**cfg, "method": "rtn"})
    with pytest.warns(UserWarning, match=r"tied to a layer GPTQ does not solve.*: head"):
        rec = quantize(model, {**cfg, "method": "gptq"}, calib=calib)
    assert rec.modules["head"]["method"] == "rtn" and rec.modules["hidden"]["method"] == "gptq"
    assert torch.equal(model.head.qweight, rtn.head.qweight) and torch.equal(model.head.scale, rtn.head.scale)
    assert model.embed.qweight is model.head.qweight  # still one set of codes
    assert not torch.equal(model.hidden.qweight, rtn.hidden.qweight)  # the other Linear is still solved


def test_gptq_takes_the_mse_observer_steps(minilm_ffn):
    """observer "mse" is honoured by GPTQ (it was silently ignored): each group's step is searched for the
    least Hessian-weighted weight error, so steps shrink below the full range where clipping pays.
    (Act-order's static groups: steps from the original weight, so they compare with minmax's.)"""
    w, x = minilm_ffn
    h, _ = accumulate_hessian(torch.zeros(384, 384, dtype=torch.float64), 0, x)
    _, full, _ = gptq_quantize(w, h, 4, True, 128, act_order=True)
    codes, searched, zero = gptq_quantize(w, h, 4, True, 128, act_order=True, observer="mse")
    assert (searched <= full * (1 + 1e-6)).all()
    assert (searched < full * 0.99).float().mean() > 0.1  # a real layer's groups are clipped, not all kept
    wq = dequantize_affine(codes.view(w.shape[0], searched.shape[1], -1), searched, zero).view_as(w)
    assert _rel_err(x, w, wq) < GPTQ_ERROR_RATIO_VS_RTN * _rel_err(x, w, fake_quantize(w, 4, True, 128))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_rounds_inputs_that_never_fire_to_nearest_instead_of_zeroing_them(act_order):
    """An input that calibration never exercises (a ReLU channel a few batches never open) keeps its
    weights, rounded to nearest: the reference implementation zeroed them (exact on the calibration
    data, wrong wherever the input fires; a small CNN's classifier read 16 dB weight SQNR at 8 bits)."""
    torch.manual_seed(0)
    w, x = torch.randn(6, 32), torch.randn(256, 32)
    x[:, [3, 17]] = 0.0  # two dead inputs
    h, _ = accumulate_hessian(torch.zeros(32, 32, dtype=torch.float64), 0, x)
    codes, scale, zero = gptq_quantize(w, h, 8, True, None, act_order=act_order)
    wq = dequantize_affine(codes.view(6, 1, 32), scale, zero).view_as(w)
    rtn = fake_quantize(w, 8, True, None)
    assert torch.allclose(wq[:, [3, 17]], rtn[:, [3, 17]])  # rounded to nearest, not zeroed
    live = [i for i in range(32) if i not in (3, 17)]
    assert _rel_err(x, w, wq) < _rel_err(x, w, rtn)  # the live inputs are still solved
    assert not torch.allclose(wq[:, live], rtn[:, live])
