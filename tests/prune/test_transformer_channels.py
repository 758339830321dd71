"""Feed-forward channels inside torch.nn's own TransformerEncoder are pruned: the encoder is swapped
for a traceable twin (same submodules, same outputs), and the swap is recorded and replayed."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.models.traceable_transformer import TraceableEncoder, open_transformers
from mmcompress.prune.structured import prune_structured, replay_structured


class TextClassifier(nn.Module):
    def __init__(self, **layer) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, **layer), 2)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(tokens)).mean(1))


@pytest.mark.parametrize("layer", [{}, {"norm_first": True, "activation": "gelu"}])
def test_twins_give_the_same_outputs_with_masks(layer):
    torch.manual_seed(0)
    encoder = TextClassifier(**layer).enc.eval()
    twin = copy.deepcopy(encoder)
    twin = TraceableEncoder.from_encoder(twin)
    x, pad = torch.randn(3, 7, 32), torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True  # the default post-norm encoder's nested path zeroes these positions
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        for kwargs in ({}, {"src_key_padding_mask": pad}, {"mask": causal, "is_causal": True}):
            assert torch.allclose(twin(x, **kwargs), encoder(x, **kwargs), atol=1e-5), kwargs


def test_feed_forward_channels_of_a_torch_nn_encoder_shrink_exactly_and_replay():
    torch.manual_seed(0)
    model, tokens = TextClassifier().eval(), torch.randint(0, 50, (4, 9))
    masked = copy.deepcopy(model)
    config = {"ratio": 0.5, "method": "magnitude", "compensate": False}
    record = prune_structured(model, {r"re:.*linear1": config, "_default": None}, example_inputs=tokens)
    assert record.info["opened_transformers"] == ["enc"] and isinstance(model.enc, TraceableEncoder)
    assert model.enc.layers[0].linear1.out_features == 32 and model.enc.layers[1].linear2.in_features == 32
    with torch.no_grad():  # the same units zeroed in the unpruned model give the same outputs
        for i in range(2):
            keep = torch.tensor(record.modules[f"enc.layers.{i}.linear1"]["keep"])
            drop = torch.ones(64, dtype=torch.bool)
            drop[keep] = False
            masked.enc.layers[i].linear1.weight[drop] = 0
            masked.enc.layers[i].linear1.bias[drop] = 0
        assert torch.allclose(model(tokens), masked(tokens), atol=1e-5)
        fresh = TextClassifier().eval()
        replay_structured(fresh, Record.from_dict(record.to_dict()))
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(tokens), model(tokens))


def test_only_encoders_holding_a_target_are_opened():
    model = nn.ModuleDict({"a": TextClassifier(), "b": TextClassifier()})
    assert open_transformers(model, ["a.enc"]) == ["a.enc"]
    assert isinstance(model["a"].enc, TraceableEncoder) and isinstance(model["b"].enc, nn.TransformerEncoder)
