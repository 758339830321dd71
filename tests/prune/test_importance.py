"""Importance criteria, N:M patterns and SparseGPT: planted unimportant weights rank last."""

import pytest
import torch
from torch import nn

from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.prune.importance import Stats, scores_for, unit_scores
from mmcompress.prune.patterns import nm_mask
from mmcompress.prune.sparsegpt import sparsegpt_prune
from mmcompress.quant.gptq import accumulate_hessian

SPARSEGPT_GAIN = 1.5  # output error of magnitude pruning / SparseGPT at 50% on correlated inputs


def _planted_layer():
    """A Linear whose input 3 is dead (always 0) and whose weight column 5 is tiny but busy."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(256, 8)
    x[:, 3] = 0.0
    with torch.no_grad():
        layer.weight[:, 3] = 5.0  # large weights on a dead input: only data-aware criteria see it
    return layer, x


def _stats(layer, x):
    stats = Stats()
    stats.add_inputs(x)
    for chunk in x.split(64):
        layer.zero_grad()
        (layer(chunk) ** 2).sum().backward()
        stats.add_gradient(layer.weight, layer.weight.grad)
    return stats


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "wanda"])
def test_data_aware_criteria_rank_a_dead_input_last(criterion):
    layer, x = _planted_layer()
    scores = scores_for(criterion, layer.weight, _stats(layer, x))
    per_input = unit_scores(scores, dim=1)
    assert int(per_input.argmin()) == 3 and float(per_input[3]) == 0.0


def test_magnitude_ranks_a_planted_small_unit_last():
    layer = nn.Linear(8, 6)
    with torch.no_grad():
        layer.weight[2] *= 1e-3
    assert int(unit_scores(scores_for("magnitude", layer.weight)).argmin()) == 2


def test_nm_pattern_holds_in_every_group():
    scores = torch.randn(16, 64).abs()
    mask = nm_mask(scores, 2, 4)
    assert bool((mask.view(16, 16, 4).sum(-1) == 2).all())
    with pytest.raises(ValueError, match="does not divide"):
        nm_mask(torch.randn(4, 6), 2, 4)


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    torch.manual_seed(0)
    base = torch.randn(512, 16)
    x = torch.cat([base, base @ torch.randn(16, 48) * 0.5 + 0.1 * torch.randn(512, 48)], 1)  # (512, 64)
    w = torch.randn(32, 64)
    h, _ = accumulate_hessian(torch.zeros(64, 64, dtype=torch.float64), 0, x)
    pruned, mask = sparsegpt_prune(w, h, 0.5, block_size=32)
    assert float((~mask).float().mean()) == pytest.approx(0.5) and bool((pruned[~mask] == 0).all())
    magnitude = w * (w.abs() > w.abs().flatten().kthvalue(w.numel() // 2).values)
    err = {k: float(((x @ (v - w).T) ** 2).mean()) for k, v in {"sgpt": pruned, "mag": magnitude}.items()}
    assert err["mag"] > SPARSEGPT_GAIN * err["sgpt"], err
    _, nm = sparsegpt_prune(w, h, nm=(2, 4), block_size=32)
    assert bool((nm.view(32, 16, 4).sum(-1) == 2).all())


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher", "wanda", "sparsegpt"])
def test_prune_api_every_method_hits_sparsity_and_zero_sparsity_changes_nothing(method):
    data = [(torch.randn(32, 16), torch.randint(0, 4, (32,))) for _ in range(3)]
    inputs = [x for x, _ in data]

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    kwargs = {"data": data, "loss_fn": loss_fn} if method in ("taylor", "fisher") else {"data": inputs}
    model = _mlp()
    rec = prune(model, PruneConfig(sparsity=0.5, method=method, scope="layer"), **kwargs)
    assert rec.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    untouched, reference = _mlp(), _mlp()
    prune(untouched, PruneConfig(sparsity=0.0, method=method), **kwargs)
    x = torch.randn(5, 16)
    assert torch.allclose(untouched(x), reference(x), atol=1e-6)
    nm_model = _mlp()
    prune(nm_model, PruneConfig(method=method, pattern="2:4"), **kwargs)
    assert bool((nm_model[0].weight.view(32, 4, 4) != 0).sum(-1).le(2).all())


def test_prune_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs data"):
        prune(_mlp(), PruneConfig(method="wanda"))
    with pytest.raises(ConfigError, match="loss_fn"):
        prune(_mlp(), PruneConfig(method="taylor"), data=[torch.randn(2, 16)])
    with pytest.raises(ConfigError, match="pattern"):
        PruneConfig.from_dict({"pattern": "2-4"})
    with pytest.raises(ConfigError, match="0 < N < M"):
        PruneConfig.from_dict({"pattern": "4:2"})
    with pytest.raises(ConfigError, match="does not divide"):
        prune(nn.Sequential(nn.Linear(6, 4)), PruneConfig(pattern="2:4"))
    emb = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(UnsupportedError, match="sparsegpt prunes Linear and Conv2d layers; '0'"):
        prune(emb, PruneConfig(method="sparsegpt", layer_types=("embedding",)), data=[torch.tensor([[1, 2]])])
    model = _mlp()
    with pytest.raises(ConfigError):
        prune(model, {"0": {"pattern": "2:4"}, "2": {"pattern": "3:5"}})
    assert not hasattr(model[0], "weight_mask")  # nothing half-pruned


def test_row_scope_prunes_every_output_row_equally():
    from mmcompress.prune.patterns import threshold_masks

    scores = torch.randn(6, 10).abs() * torch.arange(1, 7)[:, None]  # rows of very different scale
    (mask,) = threshold_masks([scores], 0.3, "row")
    assert bool(((~mask).sum(1) == 3).all())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_calibration_sees_pruned_inputs_and_changes_nothing_on_error(method):
    torch.manual_seed(0)
    data = [torch.randn(64, 16) for _ in range(3)]
    x = torch.randn(256, 16)
    model, reference = _mlp(), _mlp()
    with torch.no_grad():
        target = reference(x)
    errors = {}
    for sequential in (False, True):
        m = _mlp()
        scope = "row" if method == "wanda" else "layer"
        prune(m, PruneConfig(sparsity=0.6, method=method, scope=scope, sequential=sequential), data=data)
        with torch.no_grad():
            errors[sequential] = float(((m(x) - target) ** 2).mean())
        assert m[0].weight_mask.float().mean() == pytest.approx(0.4, abs=0.05)  # rows of 16: 7 kept
    assert errors[True] <= errors[False] * 1.05, errors  # never clearly worse than parallel calibration
    with pytest.raises(ConfigError, match="sequential"):
        PruneConfig.from_dict({"method": "magnitude", "sequential": True})
    bad = [torch.randn(64, 16), torch.full((64, 16), float("nan"))]
    before = model[2].weight.detach().clone()
    with pytest.raises(Exception, match="NaN"):
        prune(model, PruneConfig(method=method, scope="layer", sequential=True), data=bad)
    assert torch.equal(model[2].weight, before) and not hasattr(model[0], "weight_mask")
