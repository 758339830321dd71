"""Distillation tuning through the integer simulation lowers the quantized model's error on held-out
inputs, re-rounds the codes onto the same grids, and leaves nothing half-tuned when it fails."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.errors import DataError
from mmcompress.evaluate.metrics import mean_kl
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.tune import tune_quantized


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),  # depthwise
        nn.Conv2d(16, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    ).eval()  # fmt: skip


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def _held_out_kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(mean_kl(teacher(x) * 20, student(x) * 20))  # sharpened: small models give flat logits


def test_tuning_lowers_the_held_out_error_and_keeps_the_grids():
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    calib = [_images(16, 1) * 0.5]  # ranges too narrow for the data: clipping to compensate
    quantize(student, QuantConfig(activations="static"), calib=calib)
    layers = {n: m for n, m in student.named_modules() if hasattr(m, "qweight")}
    before_codes = {n: m.qweight.clone() for n, m in layers.items()}
    steps = {n: m.scale.clone() for n, m in layers.items()}
    ranges = {n: (m.act_step.clone(), m.act_zero.clone()) for n, m in layers.items()}
    test = _images(256, 9)
    before = _held_out_kl(teacher, student, test)
    train = [_images(32, 100 + i) for i in range(8)]
    out = tune_quantized(student, teacher, train, {"steps": 120, "lr": 3e-3, "weight_lr": 1e-3, "temperature": 0.05})
    after = _held_out_kl(teacher, student, test)
    assert out["layers"] == 4 and out["loss_last"] < out["loss_first"]
    assert after < 0.8 * before, (before, after)
    assert any(not torch.equal(m.qweight, before_codes[n]) for n, m in layers.items())
    for name, m in layers.items():
        assert "forward" not in m.__dict__ and m.qweight.dtype == torch.int8
        assert m.qweight.abs().max() <= 127 and torch.equal(m.scale, steps[name])  # same grid
        assert torch.equal(m.act_step, ranges[name][0]) and torch.equal(m.act_zero, ranges[name][1])
    assert not any(p.requires_grad for p in student.parameters())  # quantized biases stay frozen


def test_weight_only_and_dynamic_linear_layers_tune_with_an_embedding_loss():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    student = copy.deepcopy(teacher)
    dynamic = QuantConfig(activations="dynamic", act_granularity="per_token")
    quantize(student, {"0": QuantConfig(weight_bits=4), "2": dynamic})  # W4 weight-only, then W8A8 per token
    data = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    test = torch.randn(256, 32, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = float(((student(test) - teacher(test)) ** 2).mean())
    tune_quantized(student, teacher, data, {"steps": 80, "lr": 1e-3, "weight_lr": 1e-3, "loss": "mse"})
    with torch.no_grad():
        after = float(((student(test) - teacher(test)) ** 2).mean())
    assert after < 0.9 * before, (before, after)


def test_a_failing_tune_leaves_the_model_as_it_was():
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[_images(8, 1)])
    state = copy.deepcopy(student.state_dict())
    bad = _images(8, 2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="loss became nan"):
        tune_quantized(student, teacher, [bad], {"steps": 3})
    for key, value in student.state_dict().items():
        assert torch.equal(value, state[key]) or (value.isnan().any() and state[key].isnan().any()), key
    assert all("forward" not in m.__dict__ for m in student.modules())
    with pytest.raises(DataError, match="no batches"):
        tune_quantized(student, teacher, [])


def test_a_tune_that_does_not_lower_the_held_out_loss_is_put_back():
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[_images(16, 1) * 0.5])
    state = copy.deepcopy(student.state_dict())
    train = [_images(16, 200 + i) for i in range(8)]
    absurd = {"steps": 6, "lr": 10.0, "weight_lr": 1.0, "range_lr": 0.05, "warmup": 0.0}
    with pytest.warns(UserWarning, match="held-out loss did not go down"):
        out = tune_quantized(student, teacher, train, absurd)
    assert out["kept"] == 0.0 and out["holdout_after"] > out["holdout_before"]
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())
    good = tune_quantized(student, teacher, train, {"steps": 60, "lr": 3e-3, "weight_lr": 1e-3, "temperature": 0.05})
    assert good["kept"] == 1.0 and good["holdout_after"] < good["holdout_before"]


@pytest.mark.parametrize("batches", [None, torch.zeros(4, 3, 12, 12), [], [{"text": ["a photo of a cat"]}]])
def test_batches_that_are_not_a_list_of_inputs_are_named(batches):
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[_images(8, 1)])
    with pytest.raises(DataError, match="batches"):
        tune_quantized(student, teacher, batches)


def test_learned_input_steps_move_and_lower_the_error():
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[_images(16, 1) * 0.5])  # ranges too narrow
    layers = [m for m in student.modules() if hasattr(m, "act_step")]
    before_steps = [float(m.act_step) for m in layers]
    test = _images(256, 9)
    before = _held_out_kl(teacher, student, test)
    train = [_images(32, 100 + i) for i in range(8)]
    cfg = {"steps": 120, "lr": 3e-3, "weight_lr": 0.0, "range_lr": 1e-2, "temperature": 0.05}
    out = tune_quantized(student, teacher, train, cfg)
    steps = [float(m.act_step) for m in layers]
    assert out["kept"] == 1.0 and all(s > 0 for s in steps)
    assert max(abs(a / b - 1) for a, b in zip(steps, before_steps, strict=True)) > 0.05
    assert not any(m.act_step.requires_grad for m in layers)
    assert _held_out_kl(teacher, student, test) < 0.8 * before


def test_validation_batches_decide_whether_the_tune_is_kept():
    teacher = _cnn()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[_images(16, 1) * 0.5])
    train = [_images(16, 300 + i) for i in range(4)]
    validation = [_images(16, 400 + i) for i in range(2)]
    with torch.no_grad():
        expected = sum(
            float(torch.nn.functional.kl_div(student(v).log_softmax(-1), teacher(v).log_softmax(-1),
                                             log_target=True, reduction="batchmean"))
            for v in validation
        ) / len(validation)  # fmt: skip
    cfg = {"steps": 40, "lr": 3e-3, "weight_lr": 1e-3}
    out = tune_quantized(student, teacher, train, cfg, validation=validation)
    assert out["holdout_before"] == pytest.approx(expected, rel=1e-5)
    assert out["kept"] == 1.0 and out["holdout_after"] < out["holdout_before"]
    with pytest.raises(DataError, match="no validation"):
        tune_quantized(student, teacher, train, cfg, validation=[])
