"""The static-cache greedy decoder returns the tokens transformers' `generate` returns: float,
quantized (integer kernels), pruned heads, and an encoder in ONNX Runtime; models it cannot decode
are a clear error. (Rows that end at different steps: tests/real/test_whisper_tiny.py.)"""

import copy

import pytest
import torch
from torch import nn

from mmcompress.audio.greedy import greedy_transcribe, matches_generate, prompt_tokens, whisper_parts
from mmcompress.core.cpu import integer_weight_bits
from mmcompress.errors import ModelError
from mmcompress.models.hf.speech_ort import encoder_on_onnxruntime
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.quant.api import quantize
from mmcompress.quant.kernel_select import ONEDNN


@pytest.fixture(scope="module")
def whisper():
    return tiny_model("whisper").eval()


def _features(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 16, 64, generator=torch.Generator().manual_seed(seed))


def _generate(model: nn.Module, features: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_features=features, max_new_tokens=n, do_sample=False)


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_equal_generate(whisper, batch):
    features = _features(batch)
    torch.testing.assert_close(greedy_transcribe(whisper, features, 12), _generate(whisper, features, 12))


def test_quantized_and_head_pruned_models_decode_like_generate(whisper):
    model = copy.deepcopy(whisper)
    encoder_w8a8 = {"weight_bits": integer_weight_bits(), "activations": "dynamic"}  # oneDNN's codes (fuses GELU)
    quantize(model, {"re:model\\.encoder\\..*": encoder_w8a8, "_default": {"weight_bits": 8}})
    features = _features(2, seed=2)
    gelus = [layer.activation_fn for layer in model.model.encoder.layers]
    calls = []
    for act in gelus:  # fused by quantize: fc1's int8 kernel applies the GELU, this module passes through
        act.inner.forward = lambda x, run=act.inner.forward: calls.append(1) or run(x)
    torch.testing.assert_close(greedy_transcribe(model, features, 10), _generate(model, features, 10))
    assert not calls or not ONEDNN  # the greedy loop's own encoder arms the fusion as layer(...) would
    from mmcompress.prune.slicing import keep_heads

    pruned = copy.deepcopy(whisper)
    for layer in [*pruned.model.decoder.layers, *pruned.model.encoder.layers]:
        for attn in (layer.self_attn, getattr(layer, "encoder_attn", None)):
            if attn is not None:
                keep_heads(attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, torch.tensor([0]), attn.head_dim)
                attn.num_heads = 1
    torch.testing.assert_close(greedy_transcribe(pruned, features, 10), _generate(pruned, features, 10))


def test_greedy_runs_an_encoder_in_onnxruntime(whisper, tmp_path):
    model = copy.deepcopy(whisper)
    features = _features(2, seed=3)
    expected = greedy_transcribe(model, features, 8)
    encoder_on_onnxruntime(model, tmp_path / "encoder.onnx", threads=1, example=features)
    torch.testing.assert_close(greedy_transcribe(model, features, 8), expected)


def test_prompt_and_misuse(whisper):
    gen = whisper.generation_config
    assert prompt_tokens(whisper)[0] == gen.decoder_start_token_id
    assert matches_generate(whisper)
    multilingual = copy.deepcopy(whisper)
    multilingual.generation_config.is_multilingual = True  # generate would detect the language
    assert not matches_generate(multilingual)
    assert whisper_parts(nn.Linear(2, 2)) is None
    with pytest.raises(ModelError, match="not a Whisper-style encoder-decoder"):
        greedy_transcribe(nn.Linear(2, 2), _features(1))
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_transcribe(whisper, _features(1), 0)


def test_bfloat16_encoder_attention_stays_close_and_is_refused_where_it_cannot_apply(whisper, tmp_path):
    from mmcompress.audio.greedy import _encode, attention_dtype_for
    from mmcompress.core.cpu import cpu_features

    features = _features(2, seed=4)
    with torch.no_grad():
        exact, bf16 = _encode(whisper.model.encoder, features), _encode(whisper.model.encoder, features, torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert 0 < (bf16 - exact).norm() / exact.norm() < 2e-2  # the attention products rounded to bf16, no more
    assert greedy_transcribe(whisper, features, 6, attention_dtype="bfloat16").shape[0] == 2
    assert attention_dtype_for("auto") == (torch.bfloat16 if cpu_features().bf16 else None)
    assert attention_dtype_for("float32") is None and attention_dtype_for(torch.bfloat16) == torch.bfloat16
    with pytest.raises(ValueError, match="attention_dtype 'fp8'"):
        greedy_transcribe(whisper, features, 6, attention_dtype="fp8")
    on_ort = copy.deepcopy(whisper)
    encoder_on_onnxruntime(on_ort, tmp_path / "encoder.onnx", threads=1, example=features)
    with pytest.raises(ModelError, match="needs a Whisper-style PyTorch encoder"):
        greedy_transcribe(on_ort, features, 6, attention_dtype="bfloat16")
    expected = greedy_transcribe(on_ort, features, 6)
    torch.testing.assert_close(greedy_transcribe(on_ort, features, 6, attention_dtype="auto"), expected)
