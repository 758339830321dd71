"""Which modules and inputs `bench` times for a part (no timing here: the CLI bench test times)."""

import torch
from torch import nn

from mmcompress.evaluate.bench import part_inputs, tower_modules
from mmcompress.models.adapter import attach_adapter


class DictEncoder(nn.Module):
    """Takes one dict of tensors, as a sentence-transformers module does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)

    def forward(self, features: dict) -> torch.Tensor:
        return self.proj(features["x"] * features["mask"])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.st = DictEncoder()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.st({"x": x, "mask": mask})


def test_a_tower_holding_every_parameter_is_timed_as_the_model_on_its_inputs():
    """MiniLM's text tower is its `st` module, fed one dict: `bench --run` failed with 'tower module
    'st' received no tensor inputs' (a new user's bench); the tower is the model itself."""
    model = Encoder()
    attach_adapter(model, {"towers": {"text": ["st"]}})
    assert tower_modules(model) == {"text": [""]}
    batch = {"x": torch.randn(2, 8), "mask": torch.ones(2, 8)}
    inputs = part_inputs(model, batch, "")
    assert set(inputs) == {"x", "mask"} and torch.equal(model.get_submodule("")(**inputs), model(**batch))


def test_towers_that_share_the_model_keep_their_modules():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    attach_adapter(model, {"towers": {"image": ["0"], "fusion": ["2"]}})
    assert tower_modules(model) == {"image": ["0"], "fusion": ["2"]}
    assert set(part_inputs(model, torch.randn(3, 8), "2")) == {"input"}
