"""Whisper (WhisperModel, WhisperForConditionalGeneration): audio encoder, text decoder, and the
decoder's cross-attention (where audio meets text) as the fusion tower."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmcompress.audio.features import log_mel, pad_waveforms
from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import layer_paths, need, random_audio, random_texts, token_ids, towers


@register_adapter("whisper")
def whisper_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' Whisper models.

    Example:
        >>> adapter_for(WhisperForConditionalGeneration(config)).towers["audio"]
        ('model.encoder',)
    """
    config = model.config
    root = "model." if hasattr(model, "model") else ""
    cross = [f"{root}decoder.layers.{i}.{part}" for i in range(config.decoder_layers)
             for part in ("encoder_attn", "encoder_attn_layer_norm")]  # fmt: skip
    frames = config.max_source_positions * 2  # two stride-1/stride-2 convolutions halve the frames once

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        waves = [w.float().flatten() for w in need(raw, "audio", "Whisper")]
        audio, _ = pad_waveforms(waves)
        out = {"input_features": log_mel(audio, config.num_mel_bins, frames)}
        if raw.get("text") is not None:  # teacher forcing: decoder start token + transcript tokens
            ids = token_ids(model, raw["text"], config.vocab_size, config.max_target_positions - 1)["input_ids"]
            start = torch.full((ids.shape[0], 1), config.decoder_start_token_id)
            out["decoder_input_ids"] = torch.cat([start, ids], 1)
        else:
            out["decoder_input_ids"] = torch.full((len(waves), 1), config.decoder_start_token_id)
        return out

    return Adapter(
        towers=towers(
            model,
            {
                "audio": (f"{root}encoder",),
                "text": (f"{root}decoder", "proj_out"),
                "fusion": tuple(cross),
            },
        ),  # fmt: skip
        layers=layer_paths(model, {"audio": f"{root}encoder.layers", "text": f"{root}decoder.layers"}),
        example_inputs=lambda b: prepare({"audio": random_audio(b), "text": random_texts(b)}),
        prepare=prepare,
    )
