"""Tiny random-config Hugging Face models, built offline (tests, examples, quick experiments)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmcompress.core.extras import require
from mmcompress.errors import ModelError, unknown_name

_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4)  # fmt: skip
_TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32)  # fmt: skip


def _clip():
    require("transformers", "hf", "Hugging Face models")
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(CLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=16))


def _siglip():
    require("transformers", "hf", "Hugging Face models")
    from transformers import SiglipConfig, SiglipModel

    return SiglipModel(SiglipConfig(text_config=_TEXT, vision_config=_VISION))


def _vit():
    require("transformers", "hf", "Hugging Face models")
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(**_VISION, num_labels=10))


def _bert():
    require("transformers", "hf", "Hugging Face models")
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**{**_TEXT, "max_position_embeddings": 64}))


def _whisper():
    require("transformers", "hf", "Hugging Face models")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=1000, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=32,
        max_target_positions=32, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1,
        suppress_tokens=None, begin_suppress_tokens=None,
    )  # fmt: skip
    return WhisperForConditionalGeneration(config)


def _llava():
    require("transformers", "hf", "Hugging Face models")
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_VISION), text_config=text, image_token_index=999,
                         vision_feature_layer=-1, projector_hidden_act="gelu")  # fmt: skip
    return LlavaForConditionalGeneration(config)


def _wav2vec2():
    require("transformers", "hf", "Hugging Face models")
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, do_stable_layer_norm=True,
    )  # fmt: skip
    return Wav2Vec2ForCTC(config)


TINY: dict[str, Callable[[], nn.Module]] = {
    "clip": _clip, "siglip": _siglip, "vit": _vit, "bert": _bert,
    "whisper": _whisper, "llava": _llava, "wav2vec2": _wav2vec2,
}  # fmt: skip


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny random-config model of a Hugging Face family (2 layers, width 32), in eval mode.

    Example:
        >>> tiny_model("clip").config.model_type
        'clip'
    """
    if family not in TINY:
        raise ModelError(unknown_name("tiny model family", family, list(TINY)))
    torch.manual_seed(seed)
    return TINY[family]().eval()
