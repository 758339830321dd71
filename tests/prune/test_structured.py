"""Structured pruning: tensors shrink, coupled layers follow, the model keeps its contract."""

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.graph.export import export_onnx
from mmcompress.models.layers import Attention, SmallCNN
from mmcompress.prune.structured import StructuredConfig, prune_structured, replay_structured

EXACT = 1e-5  # removing units whose weights are zero must not change outputs beyond float noise


class Tower(nn.Module):
    """SmallCNN + projection: the projection consumes the tower's last channels (fusion-aware)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = SmallCNN((8, 16, 32))
        self.proj = nn.Linear(32, 12)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.cnn(image))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x)) + self.b(x))


def _inputs():
    return {"image": torch.randn(4, 1, 28, 28)}


def test_conv_channels_shrink_with_batchnorm_and_the_projection_that_consumes_them():
    torch.manual_seed(0)
    model = Tower().eval()
    rec = prune_structured(model, {"re:cnn.*": {"ratio": 0.5}}, example_inputs=_inputs())
    convs = [m for m in model.cnn.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16] and [c.in_channels for c in convs] == [1, 4, 8]
    assert [m.num_features for m in model.cnn.features if isinstance(m, nn.BatchNorm2d)] == [4, 8, 16]
    assert model.proj.in_features == 16 and model.proj.out_features == 12  # the contract stays
    assert model(**_inputs()).shape == (4, 12)
    assert rec.metrics["removed"] > 0.5


def test_zero_importance_channels_are_removed_exactly():
    torch.manual_seed(0)
    model = Tower().eval()
    with torch.no_grad():
        for conv in (model.cnn.features[0], model.cnn.features[4]):
            conv.weight[::2] = 0.0  # half the channels carry nothing
    x = _inputs()
    with torch.no_grad():
        for bn in (model.cnn.features[1], model.cnn.features[5]):
            bn.bias[::2] = 0.0  # and their BatchNorm adds nothing
        before = model(**x)
    prune_structured(model, {"cnn.features.0": {"ratio": 0.5}, "cnn.features.4": {"ratio": 0.5}}, example_inputs=x)
    with torch.no_grad():
        assert torch.allclose(model(**x), before, atol=EXACT)


def test_ratio_zero_changes_nothing_and_replay_rebuilds_the_shapes():
    torch.manual_seed(0)
    model, x = Tower().eval(), _inputs()
    with torch.no_grad():
        before = model(**x)
    prune_structured(model, {"re:cnn.*": {"ratio": 0.0}}, example_inputs=x)
    assert torch.equal(model(**x), before)
    rec = prune_structured(model, {"re:cnn.*": {"ratio": 0.75}}, example_inputs=x)
    fresh = Tower().eval()
    replay_structured(fresh, Record.from_json(rec.to_json()))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(**x), model(**x))


def test_residual_add_couples_its_producers():
    model = Residual()
    rec = prune_structured(model, {"a": {"ratio": 0.5}}, example_inputs={"x": torch.randn(2, 6)})
    assert model.a.out_features == model.b.out_features == model.c.in_features == 8
    assert set(rec.modules["a"]["group"]["producers"]) == {"a", "b"}


def test_model_outputs_and_unfollowable_ops_are_clear_errors():
    with pytest.raises(UnsupportedError, match="'proj'.*model output"):
        prune_structured(Tower(), {"proj": {"ratio": 0.5}}, example_inputs=_inputs())
    attn = nn.Sequential(Attention(16, 4))
    with pytest.raises(UnsupportedError, match=r"'0.q'.*view"):
        prune_structured(attn, {"0.q": {"ratio": 0.5}}, example_inputs={"input": torch.randn(2, 3, 16)})
    with pytest.raises(ConfigError, match="remove them all"):
        prune_structured(Tower(), {"cnn.features.0": {"ratio": 0.95}}, example_inputs=_inputs())
    with pytest.raises(ConfigError, match="ratio"):
        StructuredConfig.from_dict({"ratio": 1.0})


def test_heads_of_our_attention_shrink_and_export():
    torch.manual_seed(0)
    model = nn.Sequential(Attention(32, 4)).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        model[0].q.weight[8:16] = 0  # head 1 is dead in q
        model[0].k.weight[8:16] = 0
        model[0].v.weight[8:16] = 0
        model[0].q.bias[8:16] = 0
        model[0].k.bias[8:16] = 0
        model[0].v.bias[8:16] = 0
        before = model(x)
    rec = prune_structured(model, {"0": {"unit": "heads", "ratio": 0.25}})
    assert rec.modules["0"]["keep"] == [0, 2, 3] and model[0].heads == 3 and model[0].o.in_features == 24
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=EXACT)


def test_lstm_hidden_units_shrink_with_the_head(tmp_path):
    from mmcompress.models.recurrent import CaptionLSTM

    torch.manual_seed(0)
    model = CaptionLSTM(hidden=32).eval()
    inputs = model.example_inputs(2)
    prune_structured(model, {"lstm": {"ratio": 0.5}})
    assert model.lstm.hidden_size == 16 and model.head.in_features == 16
    assert model.lstm.weight_ih_l0.shape == (64, 64) and model.lstm.weight_hh_l0.shape == (64, 16)
    assert model(**inputs).shape == (2, 10)
    res = export_onnx(model, inputs, tmp_path / "lstm.onnx")
    assert res.cosine > 0.9999


def test_heads_of_a_cross_attention_fusion_model_shrink_and_export(tmp_path):
    from mmcompress.models.fusion import CrossAttentionFusion

    torch.manual_seed(0)
    model = CrossAttentionFusion().eval()
    inputs = model.example_inputs(2)
    rec = prune_structured(model, {"_default": {"unit": "heads", "ratio": 0.5}})
    assert rec.modules and all(e["kept"] == e["before"] // 2 for e in rec.modules.values())
    assert model(**inputs).shape == (2, 10)
    assert export_onnx(model, inputs, tmp_path / "xattn.onnx").cosine > 0.9999


@pytest.mark.slow
def test_minilm_heads_pruned_still_encode_and_export(tmp_path):
    from mmcompress.models.minilm import MiniLMEncoder, load_minilm_tokenizer

    model = MiniLMEncoder().eval()
    enc = load_minilm_tokenizer()(["a red dress", "a pair of sneakers on a table"], padding=True, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        before = model(**inputs)
    rec = prune_structured(model, {r"re:.*layer\.[0-5]\.attention$": {"unit": "heads", "ratio": 0.25}})
    assert len(rec.modules) == 6 and model.bert.encoder.layer[0].attention.self.query.out_features == 9 * 32
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(**inputs), before).min()
    assert cos > 0.7  # a quarter of the heads gone, no retraining: still near (unrelated sentences: < 0.5)
    assert export_onnx(model, inputs, tmp_path / "minilm.onnx").max_abs_error < 1e-4


def test_late_fusion_concat_loses_exactly_the_pruned_tower_columns():
    from mmcompress.models.fusion import LateFusion

    torch.manual_seed(0)
    model = LateFusion().eval()
    inputs = model.example_inputs(2)
    text_columns = model.head[0].weight[:, 64:].detach().clone()
    rec = prune_structured(model, {"re:image_tower.*": {"ratio": 0.5}})
    assert model.head[0].in_features == 32 + 64 and model.image_tower.features[8].out_channels == 32
    assert torch.equal(model.head[0].weight[:, 32:], text_columns)  # the text tower's columns are untouched
    consumers = rec.modules["image_tower.features.8"]["group"]["consumers"]
    assert [list(c) for c in consumers] == [["head.0", 1, 0]]
    assert model(**inputs).shape == (2, 10)
    text_side = {"re:text_tower.*": {"ratio": 0.5}}
    with pytest.raises(UnsupportedError):
        prune_structured(LateFusion(), {"text_tower.blocks.0.mlp.2": text_side["re:text_tower.*"]})


class ImageText(nn.Module):
    """A CNN vector and an LSTM's last hidden state concatenated into one fusion Linear (issue 14.2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=2))
        self.image = nn.Sequential(nn.Conv2d(3, 12, 3), nn.BatchNorm2d(12), nn.Hardswish(), nn.AdaptiveAvgPool2d(1))
        self.lstm = nn.LSTM(5, 10, batch_first=True)
        self.fuse = nn.Linear(22, 4)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.lstm(tokens)[0][:, -1]
        vec = self.image(image).view(image.shape[0], -1)
        return self.fuse(torch.cat([vec, hidden], 1)) + self.conv(image).mean() * 0


def _image_text_inputs():
    return {"image": torch.randn(2, 3, 8, 8), "tokens": torch.randn(2, 4, 5)}


def test_two_concatenated_towers_pruned_in_one_call_slice_the_fusion_columns_of_each():
    torch.manual_seed(0)
    model, x = ImageText().eval(), _image_text_inputs()
    text_columns = model.fuse.weight[:, 12:].detach().clone()
    rec = prune_structured(model, {"image.0": {"ratio": 0.5}, "lstm": {"ratio": 0.3}}, example_inputs=x)
    assert model.fuse.in_features == 6 + 7 and model.lstm.hidden_size == 7
    assert torch.equal(model.fuse.weight[:, 6:], text_columns[:, rec.modules["lstm"]["keep"]])
    assert model(**x).shape == (2, 4)


def test_grouped_convolution_is_refused_by_name_or_kept_with_a_warning():
    x = _image_text_inputs()
    with pytest.raises(UnsupportedError, match=r"'conv.0'.*grouped convolution 'conv.3'"):
        prune_structured(ImageText(), {"conv.0": {"ratio": 0.5}}, example_inputs=x)
    with pytest.raises(UnsupportedError, match=r"'conv.3'.*grouped convolution \(groups=2\)"):
        prune_structured(ImageText(), {"conv.3": {"ratio": 0.5}}, example_inputs=x)
    with pytest.warns(UserWarning, match=r"'conv.0'.*grouped convolution"):
        rec = prune_structured(ImageText(), {"re:conv.*": {"ratio": 0.5}, "image.0": {"ratio": 0.5}}, example_inputs=x)
    assert rec.modules["conv.3"]["structure"] == "kept" and "groups=2" in rec.modules["conv.3"]["reason"]
    assert rec.modules["image.0"]["kept"] == 6


def test_bn_aware_magnitude_drops_a_channel_whose_batchnorm_silences_it():
    torch.manual_seed(0)
    model, x = Tower().eval(), _inputs()
    with torch.no_grad():
        model.cnn.features[0].weight[3] *= 100  # the largest kernel ...
        model.cnn.features[1].weight[3] = 1e-4  # ... scaled to nothing by its BatchNorm
    magnitude = {"ratio": 0.125, "method": "magnitude"}
    rec = prune_structured(model, {"cnn.features.0": magnitude}, example_inputs=x)
    assert 3 not in rec.modules["cnn.features.0"]["keep"]
    raw = prune_structured(Tower().eval(), {"cnn.features.0": {**magnitude, "bn_aware": False}}, example_inputs=x)
    assert len(raw.modules["cnn.features.0"]["keep"]) == 7


def test_pruning_leaves_the_mode_and_batchnorm_statistics_alone():
    model, x = Tower().train(), _inputs()
    prune_structured(model, {"cnn.features.0": {"ratio": 0.5}}, example_inputs=x)
    assert model.training and all(m.training for m in model.modules())
    bn = model.cnn.features[1]
    assert torch.count_nonzero(bn.running_mean) == 0 and int(bn.num_batches_tracked) == 0  # tracing ran in eval


def test_head_rounding_is_reported_and_each_attention_module_ranks_its_own_heads():
    torch.manual_seed(0)
    model = nn.Sequential(Attention(24, 6), Attention(24, 6)).eval()
    with torch.no_grad():
        for layer in (model[1].q, model[1].k, model[1].v, model[1].o):
            layer.weight *= 1000  # a tower of much larger weights must not take the other's budget
    with pytest.warns(UserWarning, match=r"'0': 2 of 6 heads \(33%, asked 25%\)"):
        rec = prune_structured(model, {"_default": {"unit": "heads", "ratio": 0.25}})
    assert [rec.modules[n]["kept"] for n in ("0", "1")] == [4, 4] and rec.modules["0"][
        "removed_ratio"
    ] == pytest.approx(2 / 6)
    assert model(torch.randn(2, 3, 24)).shape == (2, 3, 24)
