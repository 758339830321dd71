"""BatchNorm folding, identity removal and low-rank factorization."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError, ModelError
from mmcompress.graph.folding import drop_identities, fold_batchnorm
from mmcompress.graph.lowrank import LowRankConfig, factorize, replay_factorize, svd_factors
from mmcompress.models.layers import SmallCNN

FOLD_TOLERANCE = 1e-5


def _with_statistics(model: nn.Module) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 1, 28, 28) * 3 + 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1, 1)
    return model.eval()


def test_folding_is_exact_and_removes_every_batchnorm():
    torch.manual_seed(0)
    model = _with_statistics(SmallCNN((8, 16, 32)))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    rec = fold_batchnorm(model)
    assert rec.metrics["folded"] == 3
    assert drop_identities(model) == 3
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Identity)) for m in model.modules())
    with torch.no_grad():
        assert (model(x) - before).abs().max() <= FOLD_TOLERANCE * before.abs().max()


class Branchy(nn.Module):
    """Untraceable (data-dependent branch); a conv feeding both a BN and a skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        y = self.body(x)
        return y if float(y.detach().sum()) > -1e9 else -y


def test_untraceable_models_fold_sequential_neighbours_and_training_mode_is_refused():
    torch.manual_seed(0)
    model = Branchy()
    with pytest.raises(ModelError, match="eval"):
        fold_batchnorm(model)
    model.eval()
    model.body[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    assert fold_batchnorm(model).modules == {"body.1": {"folded_into": "body.0"}}
    assert torch.allclose(model(x), before, atol=1e-5)


def test_shared_conv_output_is_not_folded():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the un-normalised output is used too: folding would change it

    assert fold_batchnorm(Skip().eval()).metrics["folded"] == 0


def test_svd_error_falls_with_rank_and_full_rank_is_exact():
    torch.manual_seed(0)
    w = torch.randn(32, 24)
    errors = []
    for rank in (2, 8, 16, 24):
        a, b = svd_factors(w, rank)
        errors.append(float((w - a @ b).norm() / w.norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6


def test_factorize_rules_keep_outputs_close_and_replay():
    torch.manual_seed(0)
    low = torch.randn(64, 4) @ torch.randn(4, 96)  # rank 4 plus a little noise: energy 0.99 finds ~4
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 8))
    with torch.no_grad():
        model[0].weight.copy_(low + 0.01 * torch.randn_like(low))
    x = torch.randn(5, 96)
    before = model(x)
    original = copy.deepcopy(model)
    rec = factorize(model, {"0": {"energy": 0.99}, "2": None})
    assert rec.modules["0"]["rank"] == 4 and isinstance(model[0], nn.Sequential)
    assert (model(x) - before).abs().max() < 0.05 * before.abs().max()
    rebuilt = copy.deepcopy(original)
    replay_factorize(rebuilt, Record.from_dict(rec.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), model(x))
    conv = nn.Sequential(nn.Conv2d(16, 32, 1))
    factorize(conv, {"params": 0.25})
    assert [m.out_channels for m in conv[0]] == [2, 32]  # 0.25 * 16 * 32 / 48 -> rank 2
    with pytest.raises(ConfigError, match="saves no parameters|gets smaller"):
        factorize(nn.Sequential(nn.Linear(4, 4)), {"rank": 3})
    with pytest.raises(ConfigError, match="one of energy, params and rank"):
        LowRankConfig.from_dict({"energy": 0.9, "rank": 3})


def test_folded_and_factorized_models_export_to_onnx_with_parity(tmp_path):
    from mmcompress.graph.export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(_with_statistics(SmallCNN((8, 16, 32))), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    fold_batchnorm(model.eval())
    drop_identities(model)
    factorize(model, {"1": {"rank": 8}, "3": {"rank": 4}})
    result = export_onnx(model, torch.randn(3, 1, 28, 28), tmp_path / "m.onnx")
    assert result.max_abs_error < 1e-4 and result.cosine > 0.99999


def test_onnx_runtime_optimized_graph_fuses_conv_relu_and_keeps_outputs(tmp_path):
    import numpy as np
    import onnx

    from mmcompress.graph.export import export_onnx
    from mmcompress.graph.runtime import OrtModel, optimize_onnx

    torch.manual_seed(0)
    model = _with_statistics(SmallCNN((8, 16, 32)))
    x = torch.randn(2, 1, 28, 28)
    export_onnx(model, x, tmp_path / "m.onnx")
    optimize_onnx(tmp_path / "m.onnx", tmp_path / "m.opt.onnx", level="extended")
    ops = lambda p: [n.op_type for n in onnx.load(p).graph.node]  # noqa: E731
    assert ops(tmp_path / "m.onnx").count("Relu") == 3  # the exporter already folded BatchNorm
    assert "FusedConv" in ops(tmp_path / "m.opt.onnx") and "Relu" not in ops(tmp_path / "m.opt.onnx")
    a = OrtModel.from_path(tmp_path / "m.onnx", level="disable").run({"input": x})[0]
    b = OrtModel.from_path(tmp_path / "m.opt.onnx", level="disable").run({"input": x})[0]
    assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ValueError, match="level must be one of"):
        optimize_onnx(tmp_path / "m.onnx", tmp_path / "x.onnx", level="max")
