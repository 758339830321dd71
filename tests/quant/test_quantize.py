import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError
from mmcompress.quant.api import QuantConfig, quantize, replay_quantize
from mmcompress.quant.modules import QuantConv2d, QuantEmbedding, QuantLinear

MAX_ABS_ERR_VS_DEQUANT_REFERENCE = 1e-5
MIN_OUTPUT_COSINE_8BIT = 0.999


def _inputs(b=4):
    return torch.randn(b, 1, 8, 8), torch.randint(0, 50, (b, 4))


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_quantized_model_equals_float_model_holding_dequantized_weights(two_tower):
    x = _inputs()
    reference = type(two_tower)()
    reference.load_state_dict(two_tower.state_dict())
    with torch.no_grad():
        before = two_tower(*x)
    rec = quantize(two_tower, QuantConfig(weight_bits=8))
    assert rec.metrics["modules"] == 4  # conv, embedding, 2 linear
    for name, module in two_tower.named_modules():
        if isinstance(module, (QuantLinear, QuantConv2d, QuantEmbedding)):
            assert module.qweight.dtype == torch.int8
            reference.get_submodule(name).weight.data = module.dequantized_weight()
    with torch.no_grad():
        after, ref = two_tower(*x), reference(*x)
    assert (after - ref).abs().max() < MAX_ABS_ERR_VS_DEQUANT_REFERENCE
    assert _cos(after, before) > MIN_OUTPUT_COSINE_8BIT
    assert all(m["sqnr_db"] > 30 for m in rec.modules.values())


def test_mapping_selects_by_modality_and_skips(two_tower):
    rec = quantize(two_tower, {"modality:image": None, "modality:text": {"weight_bits": 4}, "_default": QuantConfig()})
    assert set(rec.modules) == {"text.0", "text.2", "head"}
    assert rec.modules["text.2"]["bits"] == 4 and rec.modules["head"]["bits"] == 8
    assert isinstance(two_tower.image[0], nn.Conv2d)


def test_layer_types_restricts_default(two_tower):
    rec = quantize(two_tower, QuantConfig(layer_types=("linear",)))
    assert set(rec.modules) == {"text.2", "head"}


def test_replay_rebuilds_structure_and_state_loads(two_tower):
    rec = quantize(two_tower, QuantConfig())
    fresh = type(two_tower)()
    replay_quantize(fresh, Record.from_json(rec.to_json()))
    fresh.load_state_dict(two_tower.state_dict())
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(*x), two_tower(*x))


def test_bad_config_is_named(two_tower):
    with pytest.raises(ConfigError, match="weight_bits"):
        quantize(two_tower, {"weight_bits": 1})
    with pytest.raises(ConfigError, match="expected a QuantConfig"):
        quantize(two_tower, 8)  # type: ignore[arg-type]


def test_quantizing_a_quantized_model_says_so():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    quantize(model, QuantConfig())
    with pytest.raises(ConfigError, match="Sequential is already quantized"):
        quantize(model, QuantConfig())


def test_a_bare_layer_is_told_to_wrap_itself():
    layer = nn.Linear(8, 4)
    with pytest.raises(ConfigError, match=r"Linear is itself the layer: wrap it \(model = nn.Sequential"):
        quantize(layer, QuantConfig())
    wrapped = nn.Sequential(layer)
    quantize(wrapped, QuantConfig())  # what the message says works
    assert hasattr(wrapped[0], "qweight")
