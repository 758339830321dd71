"""Calibration collators: raw multimodal batches from the built-in data, turned into any adapted
model's inputs by its adapter (`Adapter.prepare`).

Raw batches are dicts of "image" (B, C, H, W) floats in [0, 1], "text" (list of str) and
"audio" (list of 1-D 16 kHz waveforms). A model that needs a modality the batch lacks is a
DataError naming it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.audio.speech import pack
from mmcompress.errors import ConfigError, DataError
from mmcompress.models.adapter import adapter_for, describe_missing


def collate(model: nn.Module, raw: dict[str, Any]) -> Any:
    """One raw multimodal batch -> the model's inputs, through its adapter.

    Example:
        >>> inputs = collate(clip, {"image": torch.rand(4, 1, 28, 28), "text": ["a coat"] * 4})
        >>> sorted(inputs)
        ['attention_mask', 'input_ids', 'pixel_values']
    """
    adapter = adapter_for(model)
    if adapter.prepare is None:
        raise ConfigError(f"cannot turn raw data into inputs: {describe_missing(model)} (with a prepare function)")
    return adapter.prepare(raw)


def calibration_batches(model: nn.Module, raw_batches: Iterable[dict[str, Any]]) -> list[Any]:
    """Every raw batch collated for `model` (a list, so it can be passed over several times).

    Example:
        >>> calib = calibration_batches(clip, image_text_batches(batch_size=16, batches=4))
        >>> quantize(clip, {"_default": {"weight_bits": 8, "activations": "static"}}, calib=calib)
    """
    return [collate(model, raw) for raw in raw_batches]


def image_text_batches(split: str = "train", batch_size: int = 16, batches: int = 4, seed: int = 0) -> list[dict]:
    """Real image + caption pairs (fashion-captions), shuffled by `seed`, as raw batches.

    Example:
        >>> raw = image_text_batches(batch_size=8, batches=2)
        >>> raw[0]["image"].shape, len(raw[0]["text"])
        (torch.Size([8, 1, 28, 28]), 8)
    """
    from mmcompress.data.registry import load_dataset

    ds = load_dataset("fashion-captions", split)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: batch_size * batches]
    out = []
    for chunk in order.split(batch_size):
        images = ds.images[chunk].float().unsqueeze(1) / 255.0
        out.append({"image": images, "text": [ds.caption_text(int(i)) for i in chunk]})
    return out


def speech_batches(utterances: list, batch_size: int = 2, pack_seconds: float | None = None) -> list[dict]:
    """Real recordings with their transcripts as raw {"audio", "text"} batches (teacher forcing).

    Keep them disjoint from the evaluation clips, e.g. calibrate on the untranscribed recordings
    labelled by the float model and evaluate on the transcribed ones. Whisper encodes 30 s windows:
    a 3 s clip leaves 90% of the encoder rows silent padding, which then dominates GPTQ Hessians;
    `pack_seconds=29` joins consecutive recordings (and transcripts) into windows of that length.

    Args:
        utterances: `mmcompress.audio.speech.Utterance`s, each with a transcript.
        batch_size: recordings (or packed windows) per batch.
        pack_seconds: join consecutive recordings into windows of at most this length (None: don't).

    Example:
        >>> from mmcompress.audio.speech import load_real_speech, load_unlabeled_speech, pseudo_label
        >>> raw = speech_batches(pseudo_label(whisper, load_unlabeled_speech()))
        >>> calib = calibration_batches(whisper, raw)     # input_features + decoder_input_ids
        >>> evaluate_on = load_real_speech()
    """
    if not utterances:
        raise DataError("no recordings to calibrate with")
    untranscribed = [u.id for u in utterances if not u.text.strip()]
    if untranscribed:
        raise DataError(f"recordings without a transcript: {untranscribed}; label them first (pseudo_label)")
    if pack_seconds is not None:
        utterances = pack(utterances, pack_seconds)
    pairs = [(u.audio.float().flatten(), u.text.strip()) for u in utterances]
    return [
        {"audio": [a for a, _ in chunk], "text": [t for _, t in chunk]}
        for chunk in (pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size))
    ]
