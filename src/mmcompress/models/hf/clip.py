"""CLIP (CLIPModel and its single-tower variants): image and text towers, projections as fusion."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import (
    layer_paths,
    need,
    pixels,
    random_images,
    random_texts,
    sub_config,
    token_ids,
    towers,
)  # fmt: skip


def image_text_prepare(model: nn.Module, family: str, mean=None, std=None):
    """raw {"image", "text"} -> pixel_values / input_ids / attention_mask for a CLIP-like model."""
    vision, text = sub_config(model.config, "vision_config"), sub_config(model.config, "text_config")
    has = {m for m in adapter_towers(model)}
    norm = {} if mean is None else {"mean": mean, "std": std}

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "image" in has:
            image = need(raw, "image", family)
            out["pixel_values"] = pixels(image, vision.image_size, vision.num_channels, **norm)
        if "text" in has:
            length = min(16, text.max_position_embeddings)
            out.update(token_ids(model, need(raw, "text", family), text.vocab_size, length))
        return out

    return prepare


def adapter_towers(model: nn.Module) -> dict[str, tuple[str, ...]]:
    return towers(model, {
        "image": ("vision_model",), "text": ("text_model",),
        "fusion": ("visual_projection", "text_projection", "logit_scale", "logit_bias"),
    })  # fmt: skip


@register_adapter("clip", "clip_vision_model", "clip_text_model")
def clip_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' CLIP models.

    Example:
        >>> adapter_for(CLIPModel(config)).towers["image"]
        ('vision_model',)
    """
    prepare = image_text_prepare(model, "CLIP")
    return Adapter(
        towers=adapter_towers(model),
        layers=layer_paths(model, {"image": "vision_model.encoder.layers", "text": "text_model.encoder.layers"}),
        example_inputs=lambda b: prepare({"image": random_images(b), "text": random_texts(b)}),
        prepare=prepare,
    )
