"""Whisper's attention heads pruned: the shrunk model computes what the unpruned model computes with
the same heads masked (their output-projection columns zeroed), in a forward pass and in generation
(self- and cross-attention caches)."""

from __future__ import annotations

import copy

import torch

from mmcompress import prune_structured
from mmcompress.models.adapter import adapter_for
from mmcompress.models.hf.tiny import tiny_model


def _masked_like(model, record):
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, entry in record.modules.items():
            attention = modules[name]
            width = attention.head_dim
            for head in sorted(set(range(entry["before"])) - set(entry["keep"])):
                attention.out_proj.weight[:, head * width : (head + 1) * width] = 0
    return model


def test_pruned_whisper_heads_equal_the_masked_heads():
    torch.manual_seed(0)
    model = tiny_model("whisper").eval()
    reference = copy.deepcopy(model)
    inputs = adapter_for(model).example_inputs(2)
    record = prune_structured(model, {"_default": {"ratio": 0.5, "unit": "heads"}}, example_inputs=inputs)
    assert {e["kept"] for e in record.modules.values()} == {model.config.encoder_attention_heads // 2}
    _masked_like(reference, record)
    attention = model.model.decoder.layers[0].encoder_attn
    assert attention.num_heads * attention.head_dim == attention.q_proj.out_features
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
        audio = {"input_features": inputs["input_features"]}
        ids = model.generate(**audio, max_new_tokens=6, do_sample=False)
        assert torch.equal(ids, reference.generate(**audio, max_new_tokens=6, do_sample=False))
