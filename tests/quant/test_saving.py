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


def test_pruned_factorized_and_folded_models_save_and_load_on_the_original_architecture(tmp_path):
    """Structure changes made through the API travel with the saved model and replay on a fresh one."""
    from torch import nn

    from mmcompress import factorize, fold_batchnorm, prune_structured

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 32, batch_first=True), 1)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)
            return self.head(self.enc(tokens).mean(1))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 1, 6, 6)
    model.bn.running_var.uniform_(0.5, 2)
    fold_batchnorm(model)
    prune_structured(model, {"re:.*linear1": {"ratio": 0.5}}, example_inputs=x)
    factorize(model, {"head": {"rank": 2}})
    quantize(model, QuantConfig(weight_bits=8, activations="dynamic"))
    save_quantized(model, tmp_path / "q")
    loaded = load_quantized(Net(), tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.enc.layers[0].linear1.out_features == 16 and isinstance(loaded.bn, nn.Identity)
    save_quantized(loaded, tmp_path / "again")  # a loaded model keeps its history
    with torch.no_grad():
        assert torch.equal(load_quantized(Net(), tmp_path / "again")(x), model(x))
