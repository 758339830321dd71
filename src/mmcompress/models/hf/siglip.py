"""SigLIP (SiglipModel and single towers): like CLIP, with logit scale and bias as fusion."""

from __future__ import annotations

from torch import nn

from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.clip import adapter_towers, image_text_prepare
from mmcompress.models.hf.common import IMAGENET_MEAN, IMAGENET_STD, layer_paths, random_images, random_texts


@register_adapter("siglip", "siglip_vision_model", "siglip_text_model")
def siglip_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' SigLIP models (images normalised to [-1, 1] like SigLIP's processor).

    Example:
        >>> adapter_for(SiglipModel(config)).towers["fusion"]
        ('logit_scale', 'logit_bias')
    """
    prepare = image_text_prepare(model, "SigLIP", IMAGENET_MEAN, IMAGENET_STD)
    return Adapter(
        towers=adapter_towers(model),
        layers=layer_paths(model, {"image": "vision_model.encoder.layers", "text": "text_model.encoder.layers"}),
        example_inputs=lambda b: prepare({"image": random_images(b), "text": random_texts(b)}),
        prepare=prepare,
    )
