"""Every verb on a model that lives on a GPU: calibration and evaluation batches follow the model
to its device (`core.batches.call_model`), the results equal the CPU results within float noise.

CI has no GPU: these tests skip with the reason. On a machine with CUDA they run as they are.
"""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.batches import call_model, model_device
from mmcompress.prune.api import prune
from mmcompress.prune.structured import prune_structured
from mmcompress.quant.api import quantize
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4),
    )  # fmt: skip


def _batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 1, 8, 8, generator=g) for _ in range(n)]  # on the CPU, as users' loaders give them


def test_call_model_keeps_cpu_batches_on_a_cpu_model():
    model = _model().eval()
    x = _batches(1)[0]
    assert model_device(model).type == "cpu"
    torch.testing.assert_close(call_model(model, x), model(x))


@needs_cuda
@pytest.mark.parametrize(
    "config",
    [
        {"weight_bits": 8},
        {"weight_bits": 4, "method": "gptq"},
        {"weight_bits": 8, "activations": "static", "act_observer": "percentile"},
    ],
)
def test_quantize_on_cuda_equals_cpu(config):
    cpu, gpu = _model().eval(), _model().eval().cuda()
    quantize(cpu, config, calib=_batches())
    quantize(gpu, config, calib=_batches())
    x = _batches(1)[0]
    assert model_device(gpu).type == "cuda"
    torch.testing.assert_close(call_model(gpu, x).cpu(), cpu(x), atol=2e-2, rtol=2e-2)


@needs_cuda
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_prune_on_cuda_equals_cpu(method):
    cpu, gpu = _model().eval(), _model().eval().cuda()
    loss = lambda m, b: m(b).pow(2).mean()  # noqa: E731
    for model in (cpu, gpu):
        prune(model, {"sparsity": 0.5, "method": method}, data=_batches(), loss_fn=loss)
    assert (gpu[7].weight == 0).sum().item() == (cpu[7].weight == 0).sum().item()


@needs_cuda
def test_structured_pruning_and_training_on_cuda():
    model = _model().cuda()
    reference = copy.deepcopy(model)
    prune_structured(model, {"ratio": 0.5}, example_inputs=_batches(1)[0])
    assert model(_batches(1)[0].cuda()).shape == reference(_batches(1)[0].cuda()).shape
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,)))
    fit(model, ClassificationTask(), data, TrainConfig(epochs=1, batch_size=16, device="cuda"), progress=False)
    assert model_device(model).type == "cuda"
