"""Wav2Vec2 (Wav2Vec2Model, Wav2Vec2ForCTC, ...): one audio tower over raw 16 kHz waveforms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmcompress.audio.features import pad_waveforms
from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import layer_paths, need, random_audio


@register_adapter("wav2vec2")
def wav2vec2_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' Wav2Vec2 models (inputs normalised per utterance like its extractor).

    Example:
        >>> adapter_for(Wav2Vec2ForCTC(config)).towers
        {'audio': ('',)}
    """
    root = "wav2vec2." if hasattr(model, "wav2vec2") else ""

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        waves = [w.float().flatten() for w in need(raw, "audio", "Wav2Vec2")]
        waves = [(w - w.mean()) / torch.sqrt(w.var() + 1e-7) for w in waves]
        audio, mask = pad_waveforms(waves)
        return {"input_values": audio, "attention_mask": mask}

    return Adapter(
        towers={"audio": ("",)},
        layers=layer_paths(model, {"audio": f"{root}encoder.layers"}),
        example_inputs=lambda b: prepare({"audio": random_audio(b)}),
        prepare=prepare,
    )
