"""Wanda and SparseGPT on grouped and depthwise convolutions (tiny models, exact expectations)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.layer_stats import input_stats
from mmcompress.errors import ConfigError
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.prune.importance import wanda_scores
from mmcompress.prune.sparsegpt import sparsegpt_prune
from mmcompress.quant.gptq import accumulate_hessian

SPARSEGPT_VS_WANDA = 0.95  # SparseGPT output error on calibration inputs vs Wanda (measured: 0.85 dw, 0.75 grouped)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4),
    ).eval()


def _calib() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [F.avg_pool2d(torch.randn(8, 3, 12, 12, generator=gen), 3, 1, 1) * 3 for _ in range(2)]


def test_wanda_on_a_depthwise_conv_uses_each_channels_own_input_norms():
    model, calib = _model(), _calib()
    dw = model[2]
    stats = input_stats(model, {"dw": dw}, calib, lambda n: None, None)["dw"]
    with torch.no_grad():
        x = torch.cat([model[1](model[0](c)) for c in calib])  # the depthwise conv's input
    patches = F.unfold(x, 3, padding=1).view(x.shape[0], 8, 9, -1)  # (B, channel, tap, L)
    expected = patches.pow(2).sum((0, 3)).sqrt()  # (8, 9): the norm each output's own taps see
    scores = wanda_scores(dw.weight, stats)
    assert torch.allclose(scores, dw.weight.detach().abs() * expected.view(8, 1, 3, 3), rtol=1e-4)
    prune(model, {"2": PruneConfig(sparsity=0.5, method="wanda", scope="row"), "_default": None}, data=calib)
    assert (dw.weight.view(8, 9) != 0).sum(1).tolist() == [5] * 8  # 4 of 9 taps removed per output


def test_wanda_on_grouped_conv_norms_follow_the_group_of_each_output():
    model, calib = _model(), _calib()
    grouped = model[4]
    stats = input_stats(model, {"g": grouped}, calib, lambda n: None, None)["g"]
    assert stats.input_sq_norm.shape == (4, 2 * 9)
    scores = wanda_scores(grouped.weight, stats).view(16, 18)
    norms = stats.input_sq_norm.sqrt()
    assert torch.allclose(scores[4:8], grouped.weight.detach().view(16, 18)[4:8].abs() * norms[1])  # group 1


def test_sparsegpt_on_grouped_convs_meets_sparsity_and_beats_wanda():
    model, calib = _model(), _calib()
    names = {"2": model[2], "4": model[4]}
    with torch.no_grad():
        x2 = torch.cat([model[1](model[0](c)) for c in calib])
        x4 = model[3](model[2](x2))
    inputs, refs = {"2": x2, "4": x4}, {"2": model[2](x2), "4": model[4](x4)}
    errors = {}
    for method in ("wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        config = PruneConfig(sparsity=0.5, method=method, scope="layer")
        rec = prune(pruned, {**dict.fromkeys(names, config), "_default": None}, data=calib)
        for n in names:
            assert rec.modules[n]["sparsity"] == pytest.approx(0.5, abs=0.01), (method, n)
        with torch.no_grad():
            errors[method] = {
                n: float((pruned.get_submodule(n)(inputs[n]) - refs[n]).pow(2).sum() / refs[n].pow(2).sum())
                for n in names
            }
    for n in names:
        assert errors["sparsegpt"][n] <= SPARSEGPT_VS_WANDA * errors["wanda"][n], errors


def test_batched_sparsegpt_keeps_each_group_independent_under_n_m():
    x = torch.randn(3, 200, 8) @ torch.randn(3, 8, 8)
    h, _ = accumulate_hessian(torch.zeros(3, 8, 8, dtype=torch.float64), 0, x)
    w = torch.randn(3, 4, 8)
    pruned, keep = sparsegpt_prune(w, h, nm=(2, 4), block_size=8)
    for j in range(3):
        single, single_keep = sparsegpt_prune(w[j], h[j], nm=(2, 4), block_size=8)
        assert torch.equal(keep[j], single_keep) and torch.allclose(pruned[j], single)


def test_n_m_on_a_depthwise_conv_names_the_layer():
    model = _model()
    with pytest.raises(ConfigError, match="layer '2'.*N:M group size 4"):
        prune(model, {"2": PruneConfig(method="sparsegpt", pattern="2:4"), "_default": None}, data=_calib())
