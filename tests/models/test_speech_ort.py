"""A Whisper encoder moved to ONNX Runtime (float and int8 weights): generation gives the tokens
PyTorch gives, the model keeps only the decoder's parameters, misuse is a clear error."""

import pytest
import torch
from torch import nn

from mmcompress.errors import ModelError
from mmcompress.models.hf.speech_ort import OrtSpeechEncoder, encoder_on_onnxruntime
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.quant.api import quantize


def _tokens(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_features=features, max_new_tokens=8, do_sample=False)


@pytest.mark.parametrize("int8", [False, True])
def test_encoder_on_onnxruntime_generates_what_pytorch_generates(tmp_path, int8):
    model = tiny_model("whisper").eval()
    if int8:
        quantize(model, {"re:model\\.encoder\\..*": {"weight_bits": 8}, "_default": None})
    features = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    expected = _tokens(model, features)
    before = sum(p.numel() for p in model.parameters())
    result = encoder_on_onnxruntime(model, tmp_path / "encoder.onnx", threads=1, example=features)
    assert result.cosine > 0.9999
    assert isinstance(model.model.encoder, OrtSpeechEncoder)
    assert sum(p.numel() for p in model.parameters()) < before  # the encoder's weights left PyTorch
    torch.testing.assert_close(_tokens(model, features), expected)


def test_encoder_on_onnxruntime_refuses_a_model_without_speech_encoder(tmp_path):
    with pytest.raises(ModelError, match="no Whisper-style speech encoder"):
        encoder_on_onnxruntime(nn.Linear(2, 2), tmp_path / "e.onnx")
    model = tiny_model("whisper").eval()
    encoder_on_onnxruntime(model, tmp_path / "e.onnx", example=torch.zeros(1, 16, 64))
    with pytest.raises(ModelError, match="already runs in ONNX Runtime"):
        encoder_on_onnxruntime(model, tmp_path / "e2.onnx")
