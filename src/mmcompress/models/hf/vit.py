"""ViT (ViTModel, ViTForImageClassification): one image tower, the classifier included."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import IMAGENET_MEAN, IMAGENET_STD, layer_paths, need, pixels, random_images, towers


@register_adapter("vit")
def vit_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' ViT models.

    Example:
        >>> adapter_for(ViTForImageClassification(config)).towers
        {'image': ('vit', 'classifier')}
    """
    config = model.config
    root = "vit" if hasattr(model, "vit") else ""

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        image = need(raw, "image", "ViT")
        return {"pixel_values": pixels(image, config.image_size, config.num_channels, IMAGENET_MEAN, IMAGENET_STD)}

    prefix = f"{root}." if root else ""
    stacks = [f"{prefix}layers", f"{prefix}encoder.layer"]  # transformers >= 5, older
    found = [layer_paths(model, {"image": s}) for s in stacks]
    return Adapter(
        towers={"image": ("",)} if not root else towers(model, {"image": ("vit", "classifier")}),
        layers=next((f for f in found if f), {}),
        example_inputs=lambda b: prepare({"image": random_images(b)}),
        prepare=prepare,
    )
