import json

import pytest
import torch

from mmcompress.errors import ModelError
from mmcompress.graph.quant_files import load_quantized, save_quantized
from mmcompress.quant.api import QuantConfig, quantize


def test_save_load_reproduces_outputs_bit_for_bit(two_tower, tmp_path):
    quantize(
        two_tower,
        {
            "modality:image": QuantConfig(weight_bits=3, scheme="asymmetric"),
            "text.0": QuantConfig(weight_bits=4, granularity="per_group", group_size=8),
            "head": QuantConfig(weight_bits=4, granularity="per_group", group_size=8, activations="dynamic"),
            "_default": QuantConfig(weight_bits=7, activations="dynamic"),
        },
    )
    save_quantized(two_tower, tmp_path / "q")
    loaded = load_quantized(type(two_tower)(), tmp_path / "q")
    x = (torch.randn(5, 1, 8, 8), torch.randint(0, 50, (5, 4)))
    with torch.no_grad():
        assert torch.equal(loaded(*x), two_tower(*x))
    assert loaded.head.act_dynamic and loaded.head.bits == 4 and loaded.image[0].bits == 3  # W4A8 head


def test_save_load_w8a8_static_smoothquant_bit_for_bit(two_tower, tmp_path):
    x = (torch.randn(5, 1, 8, 8), torch.randint(0, 50, (5, 4)))
    cfg = QuantConfig(weight_bits=7, activations="static", act_observer="mse", smoothquant=0.5)
    quantize(two_tower, {"re:head": cfg, "_default": QuantConfig()}, calib=[x])
    save_quantized(two_tower, tmp_path / "q")
    loaded = load_quantized(type(two_tower)(), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(*x), two_tower(*x))
    assert loaded.head.act.mode == "static" and float(loaded.head.act_step) == float(two_tower.head.act_step)


def test_load_into_wrong_model_or_corrupted_map_is_an_error(two_tower, tmp_path):
    quantize(two_tower, QuantConfig())
    save_quantized(two_tower, tmp_path / "q")
    with pytest.raises(ModelError, match="not in Sequential"):
        load_quantized(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "q")
    (tmp_path / "q" / "quant_map.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelError, match="not an mmcompress quantization map"):
        load_quantized(type(two_tower)(), tmp_path / "q")
    (tmp_path / "q" / "quant_map.json").write_text("{")
    with pytest.raises(ModelError, match="not JSON"):
        load_quantized(type(two_tower)(), tmp_path / "q")
