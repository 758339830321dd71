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
