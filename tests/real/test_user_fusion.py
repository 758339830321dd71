"""A user's own multimodal model (not a built-in): CNN image tower with BN, a depthwise conv, a residual
add and global pool + Flatten; an LSTM caption tower; a Linear over the concatenation of both.

Every technique must run on it end to end: W8 quantization covers the LSTM, structured pruning of
both towers in one call keeps the fusion Linear consistent, and the result exports to ONNX."""

import warnings

import pytest
import torch
from torch import nn

import mmcompress
from mmcompress.quant.recurrent import QuantLSTM

MIN_OUTPUT_COSINE_W8 = 0.999
MIN_ONNX_COSINE = 0.9999
FLOAT_LSTM_BYTES = 4 * (4 * 64 * (48 + 64))  # the LSTM's two weight matrices in float32


class UserFusion(nn.Module):
    def __init__(self, vocab: int = 300, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(),
            nn.Conv2d(32, 32, 1, bias=False),
            nn.BatchNorm2d(32),
        )
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.embed = nn.Embedding(vocab, 48)
        self.lstm = nn.LSTM(48, 64, batch_first=True)
        self.head = nn.Linear(64 + 64, classes)

    def forward(self, image, input_ids):
        x = self.stem(image)
        x = self.flatten(self.pool(self.down(x + self.block(x))))
        states, _ = self.lstm(self.embed(input_ids))
        return self.head(torch.cat([x, states.mean(1)], 1))


ADAPTER = {"towers": {"image": ["stem", "block", "down"], "text": ["embed", "lstm"], "fusion": ["head"]}}


def _model_and_batch():
    torch.manual_seed(0)
    model = UserFusion()
    mmcompress.attach_adapter(model, ADAPTER)
    for m in model.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 1.5)
    batch = {"image": torch.randn(4, 1, 28, 28), "input_ids": torch.randint(0, 300, (4, 12))}
    return model.eval(), batch


def test_w8_quantizes_every_layer_including_the_lstm_and_exports(tmp_path):
    model, batch = _model_and_batch()
    with torch.no_grad():
        before = model(**batch)
    float_bytes = mmcompress.measure(model).total.stored_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing targeted may stay float silently or loudly
        rec = mmcompress.quantize(model, mmcompress.QuantConfig(weight_bits=8))
    assert isinstance(model.lstm, QuantLSTM) and rec.metrics["float_left"] == 0
    saved = float_bytes - mmcompress.measure(model).total.stored_bytes
    assert saved > 0.7 * FLOAT_LSTM_BYTES  # the LSTM alone saves ~3/4 of its float bytes
    with torch.no_grad():
        after = model(**batch)
    assert torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0) > MIN_OUTPUT_COSINE_W8
    assert not any(m.training for m in model.modules())  # quantize and export keep eval mode everywhere
    with pytest.warns(UserWarning, match=r"stored as float weights in the ONNX file: \['lstm'\]"):
        result = mmcompress.export_onnx(model, batch, tmp_path / "m.onnx")  # ONNX LSTM takes float W/R
    assert result.cosine > MIN_ONNX_COSINE and result.float_layers == ("lstm",)
    assert not any(m.training for m in model.modules())


def test_both_towers_pruned_in_one_call_run_and_export(tmp_path):
    model, batch = _model_and_batch()
    mmcompress.prune_structured(
        model,
        {"modality:image": {"ratio": 0.3}, "modality:text": {"ratio": 0.5}, "_default": None},
        example_inputs=batch,
    )
    assert model.lstm.hidden_size == 32
    assert model.head.in_features == model.down[0].out_channels + 32
    with torch.no_grad():
        out = model(**batch)
    assert out.shape == (4, 10)
    assert mmcompress.export_onnx(model, batch, tmp_path / "p.onnx").cosine > MIN_ONNX_COSINE
