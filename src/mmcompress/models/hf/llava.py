"""LLaVA (LlavaForConditionalGeneration): vision tower, multimodal projector (fusion) and the
language model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import (
    CLIP_MEAN,
    CLIP_STD,
    layer_paths,
    need,
    pixels,
    random_images,
    random_texts,
    token_ids,
    towers,
)  # fmt: skip


def image_tokens(config: Any) -> int:
    """Placeholder tokens one image takes in the prompt (patches, plus CLS for strategy "full")."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


@register_adapter("llava")
def llava_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' LLaVA models: prompts are `<image>` x patches + the text.

    Example:
        >>> adapter_for(LlavaForConditionalGeneration(config)).towers["fusion"]
        ('model.multi_modal_projector',)
    """
    config = model.config
    vision, text = config.vision_config, config.text_config
    image_id = config.image_token_index

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        image = need(raw, "image", "LLaVA")
        enc = token_ids(model, need(raw, "text", "LLaVA"), text.vocab_size, 24)
        ids = enc["input_ids"].masked_fill(enc["input_ids"] == image_id, (image_id + 1) % text.vocab_size)
        prefix = torch.full((ids.shape[0], image_tokens(config)), image_id)
        mask = torch.cat([torch.ones_like(prefix), enc["attention_mask"]], 1)
        values = pixels(image, vision.image_size, vision.num_channels, CLIP_MEAN, CLIP_STD)
        return {"input_ids": torch.cat([prefix, ids], 1), "attention_mask": mask, "pixel_values": values}

    return Adapter(
        towers=towers(
            model,
            {
                "image": ("model.vision_tower",),
                "fusion": ("model.multi_modal_projector",),
                "text": ("model.language_model", "lm_head"),
            },
        ),  # fmt: skip
        layers=layer_paths(
            model,
            {
                "image": "model.vision_tower.vision_model.encoder.layers",
                "text": "model.language_model.layers",
            },
        ),  # fmt: skip
        example_inputs=lambda b: prepare({"image": random_images(b), "text": random_texts(b)}),
        prepare=prepare,
    )
