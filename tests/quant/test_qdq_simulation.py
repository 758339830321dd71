"""`qdq_simulation` adds the roundings the QDQ ONNX file adds (residual adds, clipped pooling
inputs), so its outputs are closer to what ONNX Runtime returns than the PyTorch model's; it shares
the model's parameters, and `tune_quantized(target="onnx-qdq")` tunes through it."""

import copy
import warnings

import pytest
import torch
from torch import nn

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.errors import ModelError
from mmcompress.graph.export import export_onnx
from mmcompress.graph.runtime import OrtModel
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.qdq_simulation import qdq_simulation
from mmcompress.quant.tune import tune_quantized

BITS = integer_weight_bits()  # ONNX Runtime's u8s8 QLinearConv saturates 8-bit weights on AVX2 without VNNI
CLOSER = 0.6  # the simulation's mean error to the file, at most this fraction of the model's


class Residual(nn.Module):
    """Stem -> (depthwise -> project) + skip -> (1x1 -> project) + skip -> ReLU6 head -> pool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6())
        self.block1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 16, 1))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.Identity(), nn.Conv2d(32, 16, 1))
        self.head = nn.Sequential(nn.Conv2d(16, 48, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(48, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = x + self.block2(x)
        return self.classifier(self.pool(self.head(x)).flatten(1))


def _static(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    teacher = Residual().eval()
    student = copy.deepcopy(teacher)
    quantize(
        student, QuantConfig(weight_bits=BITS, activations="static"), calib=[torch.rand(8, 3, 12, 12) for _ in range(4)]
    )
    return teacher, student


def _file_outputs(model: nn.Module, x: torch.Tensor, path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's parity warning (the roundings simulated here)
        export_onnx(model, x[:8], path)
    session = OrtModel.from_path(path)
    return torch.from_numpy(session.run({session.input_names[0]: x})[0])


def test_simulation_predicts_the_qdq_file_better_than_the_model(tmp_path):
    _, model = _static()
    sim = qdq_simulation(model)
    assert sim.qdq_roundings == 3  # two residual adds, the clipped head before the pooling
    x = torch.rand(64, 3, 12, 12)
    file = _file_outputs(model, x, tmp_path / "q.onnx")
    with torch.no_grad():
        model_error = float((model(x) - file).abs().mean())
        sim_error = float((sim(x) - file).abs().mean())
    assert sim_error < CLOSER * model_error, (sim_error, model_error)


class Functional(nn.Module):
    """The same roundings written with functions: torch.add(alpha=), +=, an in-place clamp_, F.pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6())
        self.block1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 16, 1))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.Conv2d(32, 16, 1))
        self.head = nn.Conv2d(16, 48, 1)
        self.classifier = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.add(x, self.block1(x), alpha=0.5)
        x += self.block2(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(self.head(x).clamp_(0.0, 6.0), 1)
        return self.classifier(pooled.flatten(1))


def test_functional_adds_and_clamps_are_simulated_too(tmp_path):
    torch.manual_seed(0)
    model = Functional().eval()
    quantize(
        model, QuantConfig(weight_bits=BITS, activations="static"), calib=[torch.rand(8, 3, 12, 12) for _ in range(4)]
    )
    sim = qdq_simulation(model)
    assert sim.qdq_roundings == 3
    x = torch.rand(64, 3, 12, 12)
    file = _file_outputs(model, x, tmp_path / "f.onnx")
    with torch.no_grad():
        assert float((sim(x) - file).abs().mean()) < CLOSER * float((model(x) - file).abs().mean())


def test_simulation_shares_the_model_parameters():
    _, model = _static()
    sim = qdq_simulation(model)
    assert {id(p) for p in sim.parameters()} <= {id(p) for p in model.parameters()}
    x = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        before = sim(x)
        model.classifier[1].bias += 1.0
        assert torch.allclose(sim(x), before + 1.0, atol=1e-5)
    assert torch.equal(qdq_simulation(model)(x), sim(x))


def test_models_without_qdq_layers_are_returned_and_untraceable_ones_are_named():
    torch.manual_seed(0)
    weight_only = Residual().eval()
    quantize(weight_only, QuantConfig(weight_bits=8))
    assert qdq_simulation(weight_only) is weight_only

    class Branchy(Residual):
        def forward(self, x):
            x = self.stem(x)
            if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x + self.block1(x)
            x = x + self.block2(x)
            return self.classifier(self.pool(self.head(x)).flatten(1))

    branchy = Branchy().eval()
    quantize(branchy, QuantConfig(activations="static"), calib=[torch.rand(8, 3, 12, 12)])
    with pytest.raises(ModelError, match="torch.fx"):
        qdq_simulation(branchy)
    with pytest.raises(ModelError, match="target='pytorch'"):
        tune_quantized(branchy, Branchy().eval(), [torch.rand(4, 3, 12, 12)], {"steps": 1, "target": "onnx-qdq"})


def test_tuning_for_a_file_without_extra_roundings_says_so():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4)).eval()
    student = copy.deepcopy(teacher)
    quantize(student, QuantConfig(activations="static"), calib=[torch.rand(8, 3, 12, 12)])
    with pytest.warns(UserWarning, match="adds no rounding"):
        out = tune_quantized(student, teacher, [torch.rand(8, 3, 12, 12)], {"steps": 2, "target": "onnx-qdq"})
    assert out["qdq_roundings"] == 0


def test_tuning_for_the_file_lowers_the_file_error(tmp_path):
    teacher, student = _static(seed=1)
    test = torch.rand(256, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference = teacher(test)
    before = float(((_file_outputs(student, test, tmp_path / "before.onnx") - reference) ** 2).mean())
    train = [torch.rand(32, 3, 12, 12, generator=torch.Generator().manual_seed(100 + i)) for i in range(8)]
    cfg = {"steps": 120, "lr": 3e-3, "weight_lr": 1e-3, "loss": "mse", "target": "onnx-qdq"}
    out = tune_quantized(student, teacher, train, cfg)
    after = float(((_file_outputs(student, test, tmp_path / "after.onnx") - reference) ** 2).mean())
    assert out["kept"] == 1.0 and out["qdq_roundings"] == 3 and after < 0.8 * before, (before, after, out)
