"""Attention heads ranked globally: `scope: global` removes `ratio` of all heads of the targeted
modules (encoder self-, decoder self- and cross-attention together), per-module counts follow the
measured importance, and the record says what was removed."""

from __future__ import annotations

import copy

import pytest
import torch

from mmcompress import prune_structured
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for
from mmcompress.models.hf.tiny import tiny_model
from mmcompress.prune.heads import ablation_scores, output_change

DEAD = {  # heads whose output columns are zero: they carry nothing
    "model.encoder.layers.0.self_attn": [1, 3],
    "model.decoder.layers.1.encoder_attn": [0],
    "model.decoder.layers.0.self_attn": [2],
}
GLOBAL = {"_default": {"ratio": 0.25, "unit": "heads", "method": "ablation", "scope": "global"}}


@pytest.fixture(scope="module")
def built():
    return _build()


@pytest.fixture
def dead_heads(built):
    return copy.deepcopy(built[0]), built[1]


def _build():
    torch.manual_seed(0)
    model = tiny_model("whisper").eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in {n for n, m in modules.items() if n.endswith("attn")}:  # random heads that matter
            modules[name].out_proj.weight.mul_(30)
        for name, heads in DEAD.items():
            attention = modules[name]
            for h in heads:  # the head's output columns: it contributes nothing
                attention.out_proj.weight[:, h * attention.head_dim : (h + 1) * attention.head_dim] = 0
    inputs = adapter_for(model).example_inputs(2)
    return model, inputs


def test_ablation_scores_dead_heads_zero_and_live_heads_positive(dead_heads):
    model, inputs = dead_heads
    modules = dict(model.named_modules())
    scores = ablation_scores(model, [(n, modules[n]) for n in DEAD], adapter_for(model), [inputs])
    for name, dead in DEAD.items():
        live = [h for h in range(4) if h not in dead]
        assert torch.all(scores[name][dead] < 1e-7) and torch.all(scores[name][live] > 1e-6)


def test_global_ranking_removes_the_requested_share_of_all_heads_with_uneven_counts(dead_heads):
    model, inputs = dead_heads
    reference = copy.deepcopy(model)
    record = prune_structured(model, GLOBAL, example_inputs=inputs, calib=[inputs])
    entries = record.modules
    total = sum(e["before"] for e in entries.values())
    assert len(entries) == 6 and total == 24  # 2 encoder self, 2 decoder self, 2 cross-attention modules
    assert total - sum(e["kept"] for e in entries.values()) == 6  # 25% of all heads, exactly
    assert record.metrics["units_removed"] == pytest.approx(0.25)
    assert len({e["kept"] for e in entries.values()}) > 1  # counts per module differ
    assert all(e["kept"] >= 2 for e in entries.values())  # no module loses more than max_ratio (2 x 25%)
    for name, dead in DEAD.items():  # the heads that carry nothing are the first to go
        assert not set(dead) & set(entries[name]["keep"]) and entries[name]["scope"] == "global"
    modules = dict(reference.named_modules())
    with torch.no_grad():  # the shrunk model computes what the model with those heads masked computes
        for name, entry in entries.items():
            width = modules[name].head_dim
            for h in set(range(entry["before"])) - set(entry["keep"]):
                modules[name].out_proj.weight[:, h * width : (h + 1) * width] = 0
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)


def test_global_magnitude_ranking_also_removes_the_requested_total(dead_heads):
    model, inputs = dead_heads
    config = {"_default": {"ratio": 0.25, "unit": "heads", "scope": "global"}}
    record = prune_structured(model, config, example_inputs=inputs)
    assert record.metrics["units_removed"] == pytest.approx(0.25)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_ablation_needs_calibration_batches_and_scores_heads_only(dead_heads):
    model, inputs = dead_heads
    with pytest.raises(ConfigError, match="calib"):
        prune_structured(model, GLOBAL, example_inputs=inputs)
    with pytest.raises(ConfigError, match="ablation"):
        prune_structured(model, {"re:.*fc1": {"ratio": 0.25, "method": "ablation"}}, example_inputs=inputs)


def test_output_change_is_kl_over_the_masked_positions():
    ref = torch.randn(2, 3, 5)
    out = ref.clone()
    out[1, 2, 0] += 3.0  # a padding position changes
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert float(output_change(ref, out, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(output_change(ref, out)) > 1e-3
