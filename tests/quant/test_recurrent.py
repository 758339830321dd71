"""LSTM/GRU and Conv1d weights are quantized; targeted layers that stay float are warned about."""

import warnings

import pytest
import torch
from torch import nn

from mmcompress.evaluate.measure import measure
from mmcompress.graph.quant_files import load_quantized, save_quantized
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.recurrent import QuantGRU, QuantLSTM

MAX_ABS_ERR_VS_DEQUANT_REFERENCE = 1e-5
MIN_SQNR_DB_INT8 = 35.0
MIN_COMPRESSION_INT8 = 3.0  # int8 codes + fp32 per-row steps and biases, vs fp32 weights


class TextRNN(nn.Module):
    """A user-style text tower: embedding -> 2-layer bidirectional LSTM -> GRU -> Conv1d -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 48, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(96, 32, batch_first=True)
        self.conv = nn.Conv1d(32, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, ids):
        h, _ = self.lstm(self.emb(ids))
        h, _ = self.gru(h)
        return self.head(self.conv(h.transpose(1, 2)).mean(-1))


def _dequantized_reference(model: TextRNN) -> TextRNN:
    """A float TextRNN holding exactly the dequantized weights of the quantized one."""
    ref = TextRNN()
    ref.load_state_dict(model.state_dict(), strict=False)  # biases; weights are set below
    for name in ("lstm", "gru"):
        q = model.get_submodule(name)
        for w in q.weight_names:
            getattr(ref, name).__getattr__(w).data = q.codes[w].dequantized_weight()
        for b in q.bias_names:
            getattr(ref, name).__getattr__(b).data = getattr(q, b).detach().clone()
    for name in ("emb", "conv", "head"):
        ref.get_submodule(name).weight.data = model.get_submodule(name).dequantized_weight()
        if getattr(ref.get_submodule(name), "bias", None) is not None:
            ref.get_submodule(name).bias.data = model.get_submodule(name).bias.detach().clone()
    return ref.eval()


def test_lstm_gru_conv1d_quantized_equal_float_with_dequantized_weights(tmp_path):
    torch.manual_seed(0)
    model, ids = TextRNN().eval(), torch.randint(0, 100, (4, 9))
    before_bytes = measure(model).total.stored_bytes
    rec = quantize(model, QuantConfig(weight_bits=8))
    assert isinstance(model.lstm, QuantLSTM) and isinstance(model.gru, QuantGRU)
    assert model.lstm.codes["weight_hh_l1_reverse"].qweight.dtype == torch.int8
    assert set(rec.modules) == {"emb", "lstm", "gru", "conv", "head"}
    assert all(entry["sqnr_db"] > MIN_SQNR_DB_INT8 for entry in rec.modules.values())
    with torch.no_grad():
        out, ref = model(ids), _dequantized_reference(model)(ids)
    assert (out - ref).abs().max() < MAX_ABS_ERR_VS_DEQUANT_REFERENCE
    assert before_bytes / measure(model).total.stored_bytes > MIN_COMPRESSION_INT8
    save_quantized(model, tmp_path)  # the saved file round-trips bit-exactly
    torch.manual_seed(1)
    with torch.no_grad():
        assert torch.equal(load_quantized(TextRNN(), tmp_path)(ids), out)


def test_packed_sequences_and_initial_state_pass_through():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, batch_first=True)
    q = QuantLSTM.from_float(lstm, QuantConfig().grid())
    x = torch.randn(3, 6, 8)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True)
    h0 = (torch.randn(1, 3, 16), torch.randn(1, 3, 16))
    out, (h, c) = q(packed, h0)
    ref_out, (ref_h, _) = lstm(packed, h0)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert (h - ref_h).abs().max() < 0.05  # int8 weights: close to float, not equal


def test_layer_types_recurrent_can_be_left_out():
    model = TextRNN()
    rec = quantize(model, QuantConfig(layer_types=("linear", "conv", "embedding")))
    assert isinstance(model.lstm, nn.LSTM) and "lstm" not in rec.modules


class Positions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 8))  # a raw positional table, as in many transformers


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(1, 2, 3)
        self.pos = Positions()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.conv3d(x).mean((2, 3, 4))[:, :1] + self.pos.table.mean(0))


def test_targeted_layers_that_stay_float_are_warned_and_counted():
    with pytest.warns(UserWarning, match=r"2 targeted layer\(s\) stay float.*Conv3d x1: conv3d"):
        rec = quantize(Odd(), QuantConfig(weight_bits=8))
    assert rec.metrics["float_left"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a target that skips them explicitly is not warned about
        quantize(Odd(), {"conv3d": None, "pos": None, "_default": QuantConfig()})


def test_activations_on_weight_only_layers_are_warned():
    with pytest.warns(UserWarning, match="activations stay float .* lstm"):
        quantize(TextRNN(), {"_default": {"weight_bits": 8, "activations": "dynamic"}})


def test_gptq_falls_back_to_rtn_with_a_warning_for_recurrent_layers():
    model = TextRNN()
    calib = [torch.randint(0, 100, (2, 9)) for _ in range(2)]
    with pytest.warns(UserWarning, match="rounding to nearest .* lstm"):
        rec = quantize(model, {"re:lstm|gru": {"weight_bits": 8, "method": "gptq"}, "_default": None}, calib=calib)
    assert rec.modules["lstm"]["method"] == "rtn"
