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
    twin = TraceableEncoder(twin)
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


class MaskedClassifier(nn.Module):  # a default encoder (nested tensors on) that takes a padding mask
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.enc(x, src_key_padding_mask=pad).mean(1))


def test_a_padding_mask_input_traces_prunes_and_exports(tmp_path):
    """The nested path's zeros are data-dependent: skipped while fx traces, kept when the model runs
    and in the ONNX file; a failed trace puts the original encoder back."""
    from mmcompress import export_onnx
    from mmcompress.graph.runtime import OrtModel

    torch.manual_seed(0)
    model = MaskedClassifier().eval()
    reference = copy.deepcopy(model)
    x, pad = torch.randn(3, 6, 32), torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    prune_structured(model, {"re:.*linear1": {"ratio": 0.5}, "_default": None}, example_inputs=(x, pad))
    assert model.enc.layers[0].linear1.out_features == 32 and isinstance(model.enc, TraceableEncoder)
    with torch.no_grad():
        assert not model.enc(x, src_key_padding_mask=pad)[1, 4:].any()  # zeros where torch's nested path had them
        assert not reference.enc(x, src_key_padding_mask=pad)[1, 4:].any()
    export_onnx(model, (x, pad), tmp_path / "m.onnx")
    (got,) = OrtModel.from_bytes((tmp_path / "m.onnx").read_bytes()).run({"input_0": x, "input_1": pad})
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(got), model(x, pad), atol=1e-5)

    class Untraceable(MaskedClassifier):
        def forward(self, x, pad=None):
            return self.head(self.enc(x, src_key_padding_mask=pad).mean(1) if x.sum() > 0 else x.mean(1))

    other = Untraceable().eval()
    with pytest.raises(Exception, match="could not trace"):
        prune_structured(other, {"re:.*linear1": {"ratio": 0.5}, "_default": None}, example_inputs=(x, pad))
    assert isinstance(other.enc, nn.TransformerEncoder)  # as the caller gave it
    assert isinstance(other.enc.layers[0].self_attn, nn.MultiheadAttention)


def test_naming_the_encoder_itself_points_to_its_layers():
    from mmcompress.errors import UnsupportedError

    model = TextClassifier().eval()
    with pytest.raises(UnsupportedError, match=r"target its layers instead \(e.g. 're:enc\\\.\.\*'\)"):
        prune_structured(model, {"enc": {"ratio": 0.5}}, example_inputs=torch.randint(0, 50, (2, 5)))


@pytest.mark.parametrize("bare", ["encoder", "layer"])
def test_a_model_that_is_itself_a_torch_nn_encoder_is_opened_in_place(bare):
    """The model a user passes may be nn.TransformerEncoder (or one layer) itself: the object becomes
    its traceable twin in place; masks left out of the example take forward's defaults; replay too."""
    torch.manual_seed(0)

    def build() -> nn.Module:
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        return (nn.TransformerEncoder(layer, 2) if bare == "encoder" else layer).eval()

    model, x = build(), torch.randn(3, 6, 32)
    model.load_state_dict(build().state_dict())
    hook_calls = []
    model.register_forward_hook(lambda *_: hook_calls.append(1))
    record = prune_structured(model, {"re:.*linear1": {"ratio": 0.5}}, example_inputs={"src": x})
    assert record.info["opened_transformers"] == [""] and record.metrics["removed"] > 0.2
    linear1 = model.layers[1].linear1 if bare == "encoder" else model.linear1
    assert linear1.out_features == 32
    with torch.no_grad():
        out = model(x)
        fresh = build()
        replay_structured(fresh, Record.from_dict(record.to_dict()))
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x), out)
    assert hook_calls  # the caller's hooks on the model survive the swap
