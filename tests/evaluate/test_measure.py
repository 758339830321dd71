import pytest
import torch

from mmcompress.evaluate.measure import measure
from mmcompress.evaluate.metrics import accuracy, precision_at_k, zero_shot_accuracy
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.quant.api import QuantConfig, quantize


def test_float_model_sizes_and_modalities_add_up(two_tower):
    m = measure(two_tower, repeats=3)
    params = sum(p.numel() for p in two_tower.parameters())
    assert m.total.params == params and m.total.stored_bytes == 4 * params
    assert set(m.per_modality) == {"image", "text", "fusion"}
    assert sum(t.stored_bytes for t in m.per_modality.values()) == m.total.stored_bytes
    assert m.latency_ms["median"] > 0 and m.compression == pytest.approx(1.0)


def test_int8_counts_one_byte_per_weight_and_sparsity_counts(two_tower):
    quantize(two_tower, QuantConfig())
    m = measure(two_tower, repeats=2)
    assert 3.0 < m.compression < 4.0  # int8 codes + float biases/scales
    fresh = type(two_tower)()
    prune(fresh, PruneConfig(sparsity=0.5, layer_types=("linear", "conv", "embedding")))
    quantize(fresh, QuantConfig())
    sparse = measure(fresh, repeats=2)
    assert sparse.total.nonzeros < 0.6 * sparse.total.params
    assert sparse.compression > m.compression * 1.3


def test_metrics():
    assert accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])) == 0.5
    assert zero_shot_accuracy(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 2])) == 1.0
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    rel = torch.tensor([[True, False, True], [True, True, False]])
    assert precision_at_k(sim, rel, k=2) == pytest.approx((0.5 + 0.5) / 2)
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 2), torch.zeros(0))
