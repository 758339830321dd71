"""Whisper (WhisperModel, WhisperForConditionalGeneration): audio encoder, text decoder, and the
decoder's cross-attention (where audio meets text) as the fusion tower."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmcompress.audio.features import log_mel, pad_waveforms
from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import layer_paths, need, random_audio, random_texts, token_ids, towers


def decoder_inputs(model: nn.Module, texts: list[str]) -> dict[str, torch.Tensor]:
    """Teacher-forcing decoder inputs: what the decoder reads while generating each transcript.

    With a Whisper tokenizer: its prefix (<|startoftranscript|><|notimestamps|> for tiny.en) + the
    tokens of " " + text (Whisper's words carry a leading space), no end token, right-padded with
    the end token and masked. Other tokenizers (random-config models): the decoder start token +
    their ids folded into the vocabulary.

    Example:
        >>> decoder_inputs(whisper, ["he was"])["decoder_input_ids"]
        tensor([[50257, 50362,   339,   373]])
    """
    config = model.config
    tokenizer = getattr(model, "mmcompress_tokenizer", None)
    limit = config.max_target_positions
    if tokenizer is None or not hasattr(tokenizer, "prefix_tokens"):
        enc = token_ids(model, texts, config.vocab_size, limit - 1)
        start = torch.full((enc["input_ids"].shape[0], 1), config.decoder_start_token_id)
        ones = torch.ones_like(start)
        return {
            "decoder_input_ids": torch.cat([start, enc["input_ids"]], 1),
            "decoder_attention_mask": torch.cat([ones, enc["attention_mask"]], 1),
        }
    prefix = list(tokenizer.prefix_tokens)
    rows = [(prefix + tokenizer.encode(" " + t.strip(), add_special_tokens=False))[:limit] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), config.eos_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {"decoder_input_ids": ids, "decoder_attention_mask": mask}


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
        if raw.get("text") is not None:  # teacher forcing: the generation prefix + " transcript"
            out.update(decoder_inputs(model, raw["text"]))
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
