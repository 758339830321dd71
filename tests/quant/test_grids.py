"""Bit widths, schemes, granularities and observers of weight quantization, end to end on layers."""

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError, DataError
from mmcompress.evaluate.measure import measure
from mmcompress.graph.storage import load_compact, save_compact
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.primitives import sqnr_db

MIN_SQNR_W4_GROUP_DB = 18.0  # ~6 dB/bit for Gaussian weights with groups of 32


def _layer(out=64, inp=256, positive=False):
    torch.manual_seed(0)
    layer = nn.Linear(inp, out)
    if positive:
        layer.weight.data = layer.weight.data.abs() + 0.05
    return layer


def _sqnr(layer, **cfg):
    model = nn.Sequential(layer)
    ref = layer.weight.detach().clone()
    quantize(model, QuantConfig(**cfg))
    return sqnr_db(ref, model[0].dequantized_weight())


def test_groups_asymmetry_and_mse_each_help_where_they_should():
    per_channel = _sqnr(_layer(), weight_bits=4)
    grouped = _sqnr(_layer(), weight_bits=4, granularity="per_group", group_size=32)
    assert grouped > per_channel and grouped > MIN_SQNR_W4_GROUP_DB
    sym = _sqnr(_layer(positive=True), weight_bits=4, scheme="symmetric")
    assert _sqnr(_layer(positive=True), weight_bits=4) > sym + 3  # scheme "auto": asymmetric at 4 bits
    asym = _sqnr(_layer(positive=True), weight_bits=4, scheme="asymmetric")
    assert asym > sym + 3  # one-sided weights waste half the symmetric grid
    assert _sqnr(_layer(), weight_bits=3, observer="mse") > _sqnr(_layer(), weight_bits=3)
    assert _sqnr(_layer(), weight_bits=8) > _sqnr(_layer(), weight_bits=8, granularity="per_tensor") - 1e-6


def test_4bit_group_weights_are_stored_packed_and_round_trip_bit_exactly(tmp_path):
    model = nn.ModuleDict({"fc": nn.Linear(256, 128, bias=False), "emb": nn.Embedding(100, 256)})
    rec = quantize(model, QuantConfig(weight_bits=4, granularity="per_group", group_size=64, scheme="asymmetric"))
    assert {m["bits"] for m in rec.modules.values()} == {4}
    m = measure(model)
    weights = 128 * 256 + 100 * 256
    overhead = (128 + 100) * (256 // 64) * (4 + 1)  # fp32 step + int8 zero point per group (at most)
    assert weights // 2 < m.total.stored_bytes <= weights // 2 + overhead
    assert m.total.float32_bytes == 4 * weights
    assert m.compression > 6.0
    path = save_compact(model, tmp_path / "w4.safetensors")
    state, _ = load_compact(path)
    for name, t in model.state_dict().items():
        assert torch.equal(state[name], t), name
    x = torch.randn(3, 256)
    fresh = nn.ModuleDict({"fc": nn.Linear(256, 128, bias=False), "emb": nn.Embedding(100, 256)})
    from mmcompress.core.record import Record
    from mmcompress.quant.api import replay_quantize

    replay_quantize(fresh, Record.from_json(rec.to_json()))
    fresh.load_state_dict(state)
    ids = torch.tensor([[1, 5, 99]])
    assert torch.equal(fresh["fc"](x), model["fc"](x)) and torch.equal(fresh["emb"](ids), model["emb"](ids))


def test_embedding_groups_dequantize_only_the_looked_up_rows():
    emb = nn.Embedding(50, 64)
    model = nn.ModuleDict({"e": emb})
    ref = emb.weight.detach().clone()
    quantize(model, QuantConfig(weight_bits=4, granularity="per_group", group_size=16))
    ids = torch.tensor([[0, 7], [49, 3]])
    assert torch.allclose(model["e"](ids), model["e"].dequantized_weight()[ids])
    assert sqnr_db(ref[ids], model["e"](ids)) > 15


def test_a_group_size_that_does_not_divide_falls_back_to_per_channel_with_a_warning():
    model = nn.Sequential(nn.Linear(100, 8), nn.Linear(8, 256), nn.Linear(256, 4))
    with pytest.warns(UserWarning, match=r"does not divide the inputs of 1 layer\(s\).*: 0 \(100 inputs\)"):
        rec = quantize(model, QuantConfig(weight_bits=4, granularity="per_group", group_size=64))
    assert model[0].scale.shape == (8, 1) and rec.modules["0"]["grid"]["group_size"] is None
    assert model[1].scale.shape == (256, 1)  # 8 inputs: one group per row, no warning needed
    assert rec.modules["1"]["grid"]["group_size"] is None  # and the record says per-channel, not "group 64"
    assert model[2].scale.shape == (4, 4) and rec.modules["2"]["grid"]["group_size"] == 64


def test_bad_inputs_name_the_layer():
    model = nn.Sequential(nn.Linear(100, 8))
    model[0].weight.data[0, 0] = float("nan")
    with pytest.raises(DataError, match="layer '0' has NaN"):
        quantize(model, QuantConfig())
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantConfig.from_dict({"weight_bits": 9})


def test_auto_weight_bits_follow_the_cpu_integer_kernels(monkeypatch):
    import mmcompress.quant.config as config

    monkeypatch.setattr(config, "integer_weight_bits", lambda: 7)  # an AVX2 CPU without VNNI
    assert QuantConfig.from_dict({"weight_bits": "auto", "activations": "dynamic"}).weight_bits == 7
    assert QuantConfig.from_dict({"weight_bits": "auto"}).weight_bits == 8  # weight-only: no kernel to saturate
    assert QuantConfig(activations="dynamic").weight_bits == 7  # "auto" is the default
    assert QuantConfig(weight_bits=8, activations="dynamic").weight_bits == 8  # asked for: kept
    monkeypatch.setattr(config, "integer_weight_bits", lambda: 8)
    assert QuantConfig.from_dict({"weight_bits": "auto", "activations": "static"}).weight_bits == 8
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantConfig.from_dict({"weight_bits": "eight"})


def test_auto_bits_give_layers_that_run_weight_only_eight_bits(monkeypatch):
    """Under activations, "auto" bits (7 on AVX2 without VNNI) follow the int8 GEMMs' limit; layers whose
    inputs stay float (embedding tables, Conv1d) run weight-only and get 8 bits; asked-for bits are kept."""
    import mmcompress.quant.config as config

    monkeypatch.setattr(config, "integer_weight_bits", lambda: 7)

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.conv, self.fc = nn.Embedding(50, 16), nn.Conv1d(16, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, ids):
            return self.fc(self.conv(self.emb(ids).transpose(1, 2)).transpose(1, 2))

    with pytest.warns(UserWarning, match="activations stay float for 1 layer"):  # the Conv1d, as before
        record = quantize(Tower(), QuantConfig(activations="dynamic"))
    assert {name: e["bits"] for name, e in record.modules.items()} == {"emb": 8, "conv": 8, "fc": 7}
    with pytest.warns(UserWarning, match="activations stay float"):
        record = quantize(Tower(), QuantConfig(weight_bits=6, activations="dynamic"))
    assert {e["bits"] for e in record.modules.values()} == {6}
