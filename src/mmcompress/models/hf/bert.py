"""BERT family (BertModel, BertFor*, sentence encoders built on them): one text tower."""

from __future__ import annotations

from typing import Any

from torch import nn

from mmcompress.models.adapter import Adapter, register_adapter
from mmcompress.models.hf.common import layer_paths, need, random_texts, token_ids


@register_adapter("bert")
def bert_adapter(model: nn.Module) -> Adapter:
    """Adapter of transformers' BERT models: the whole model is the text tower.

    Example:
        >>> adapter_for(BertModel(config)).towers
        {'text': ('',)}
    """
    config = model.config
    root = "bert." if hasattr(model, "bert") else ""

    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        texts = need(raw, "text", "BERT")
        return token_ids(model, texts, config.vocab_size, min(32, config.max_position_embeddings))

    return Adapter(
        towers={"text": ("",)},
        layers=layer_paths(model, {"text": f"{root}encoder.layer"}),
        example_inputs=lambda b: prepare({"text": random_texts(b)}),
        prepare=prepare,
    )
