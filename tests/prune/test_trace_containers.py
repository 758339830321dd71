"""Tracing hands opaque leaf modules mutable containers (sentence-transformers updates its input dict)."""

import torch
from torch import nn

from mmcompress.prune.dependency import trace


class UpdatesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, features: dict) -> dict:
        features.update({"out": self.fc(features["x"])})  # as SentenceTransformer's modules do
        return features


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = UpdatesItsInput()

    def forward(self, x):
        return self.inner({"x": x})["out"]


def test_a_leaf_module_that_mutates_its_dict_input_traces(monkeypatch):
    from mmcompress.prune import dependency

    monkeypatch.setattr(dependency._Tracer, "is_leaf_module", lambda self, m, name: m is not None and name == "inner")
    graph = trace(Wrapper(), torch.randn(2, 4))
    assert any(n.op == "call_module" and n.target == "inner" for n in graph.graph.nodes)


class EncoderClassifier(nn.Module):  # a user's text model on torch.nn's own transformer blocks
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.fc, self.head = nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(torch.relu(self.fc(self.enc(self.emb(tokens)).mean(1))))


def test_layers_inside_attention_are_named_with_their_container_and_encoder_ffns_shrink():
    import pytest

    from mmcompress import prune_structured
    from mmcompress.errors import ConfigError
    from mmcompress.prune.structured import no_attention_message

    model = EncoderClassifier().eval()
    with pytest.warns(UserWarning) as caught:
        prune_structured(model, {"_default": {"ratio": 0.5}}, example_inputs=torch.randint(0, 50, (2, 7)))
    text = " ".join(str(w.message) for w in caught)
    assert "'enc.layers.0.self_attn.out_proj'" in text and "whose widths are its heads" in text
    assert model.fc.out_features == 8 and model.enc.layers[0].linear1.out_features == 32  # FFN: a traceable twin
    with pytest.raises(ConfigError, match="found no attention module in Linear"):
        prune_structured(nn.Linear(2, 2), {"_default": {"unit": "heads", "ratio": 0.25}})
    assert no_attention_message(nn.Linear(2, 2)).startswith("unit 'heads' found no attention module in Linear")
