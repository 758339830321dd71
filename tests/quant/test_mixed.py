import pytest
import torch

from mmcompress.errors import ConfigError
from mmcompress.evaluate.measure import measure
from mmcompress.quant.api import QuantConfig
from mmcompress.quant.mixed import MixedPrecisionConfig, allocate_bits, plan_mixed_precision, quantize_mixed

BASE = QuantConfig(granularity="per_channel", layer_types=("linear", "conv"))


@pytest.fixture
def calib():
    torch.manual_seed(0)
    return [(torch.randn(16, 1, 8, 8), torch.randint(0, 50, (16, 4))) for _ in range(3)]


def test_allocator_narrows_the_least_sensitive_layer_first_and_meets_budget():
    sens = {"robust": {2: 0.02, 4: 0.005, 8: 0.0}, "fragile": {2: 0.9, 4: 0.1, 8: 0.0}}
    numel = {"robust": 100, "fragile": 100}
    assert allocate_bits(sens, numel, 6.0) == {"robust": 4, "fragile": 8}
    bits = allocate_bits(sens, numel, 3.0)
    assert (bits["robust"] * 100 + bits["fragile"] * 100) / 200 <= 3.0 and bits["robust"] <= bits["fragile"]
    with pytest.raises(ConfigError, match="below the narrowest option"):
        allocate_bits(sens, numel, 1.5)


def test_mixed_precision_meets_per_modality_budgets(two_tower, calib):
    config = MixedPrecisionConfig(bits_options=(2, 4, 8), average_bits=4.0, modality_budgets={"image": 8.0}, base=BASE)
    plan = plan_mixed_precision(two_tower, config, calib)
    assert plan.bits["image.0"] == 8 and plan.average_bits["image"] == 8.0
    assert plan.average_bits["_rest"] <= 4.0 + 1e-9
    assert all(set(s) == {2, 4, 8} for s in plan.sensitivity.values())
    record, _ = quantize_mixed(two_tower, config, calib)
    assert {name: m["bits"] for name, m in record.modules.items()} == plan.bits
    assert measure(two_tower, repeats=1).compression > 2  # the float embedding table and steps remain


def test_bad_budgets_are_errors(two_tower, calib):
    with pytest.raises(ConfigError, match="no target layer"):
        plan_mixed_precision(two_tower, MixedPrecisionConfig(modality_budgets={"audio": 4.0}, base=BASE), calib)
    with pytest.raises(ConfigError, match="bits_options"):
        plan_mixed_precision(two_tower, MixedPrecisionConfig(bits_options=(1, 8), base=BASE), calib)


def test_fisher_sensitivity_grows_as_bits_shrink_and_drives_the_plan(two_tower, calib):
    labelled = [(batch, torch.randint(0, 3, (16,))) for batch in calib]

    def loss_fn(model, batch):
        inputs, target = batch
        return torch.nn.functional.cross_entropy(model(*inputs)[:, :3], target)

    config = MixedPrecisionConfig(bits_options=(2, 4, 8), average_bits=4.0, base=BASE, sensitivity="fisher")
    plan = plan_mixed_precision(two_tower, config, calib, labelled, loss_fn)
    assert all(s[2] >= s[4] >= s[8] >= 0 for s in plan.sensitivity.values())
    assert plan.average_bits["_rest"] <= 4.0 + 1e-9
    with pytest.raises(ConfigError, match="fisher"):
        plan_mixed_precision(two_tower, config, calib)
