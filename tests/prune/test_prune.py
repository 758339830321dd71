import pytest
import torch

from mmcompress.core.record import Record
from mmcompress.prune.api import PruneConfig, prune, replay_prune
from mmcompress.prune.importance import magnitude_scores
from mmcompress.prune.patterns import threshold_masks
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask


def _weights(model, names):
    return [model.get_submodule(n).weight for n in names]


def test_global_threshold_hits_requested_sparsity_and_removes_smallest(two_tower):
    rec = prune(two_tower, PruneConfig(sparsity=0.6))
    assert rec.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    kept = torch.cat([w.detach().abs().flatten() for w in _weights(two_tower, rec.modules) if True])
    nonzero, zero_count = kept[kept != 0], int((kept == 0).sum())
    assert zero_count / kept.numel() == pytest.approx(0.6, abs=0.01)
    assert float(nonzero.min()) > 0


def test_layer_scope_gives_each_layer_the_same_sparsity():
    ws = [torch.randn(100), torch.randn(300) * 10]
    masks = threshold_masks([magnitude_scores(w) for w in ws], 0.5, "layer")
    assert [float((~m).float().mean()) for m in masks] == [0.5, 0.5]
    glob = threshold_masks([magnitude_scores(w) for w in ws], 0.5, "global")
    assert float((~glob[0]).float().mean()) > 0.9  # the small-scale layer loses most under one threshold


def test_per_modality_budgets(two_tower):
    rec = prune(two_tower, {"modality:image": {"sparsity": 0.8}, "modality:text": {"sparsity": 0.2}, "_default": None})
    assert rec.modules["image.0"]["sparsity"] == pytest.approx(0.8, abs=0.02)
    assert rec.modules["text.2"]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert "head" not in rec.modules and "text.0" not in rec.modules  # embeddings dense by default


def test_masks_survive_finetuning(digits):
    from mmcompress.models.zoo import ImageClassifier

    model = ImageClassifier((8, 16, 16))
    rec = prune(model, PruneConfig(sparsity=0.5))
    zeros = {n: model.get_submodule(n).weight == 0 for n in rec.modules}
    fit(model, ClassificationTask(), digits[0], TrainConfig(epochs=1, batch_size=64), progress=False)
    for name, was_zero in zeros.items():
        assert bool((model.get_submodule(name).weight[was_zero] == 0).all())


def test_replay_restores_masks_from_zeros(two_tower):
    rec = prune(two_tower, PruneConfig(sparsity=0.5))
    fresh = type(two_tower)()
    fresh.load_state_dict(two_tower.state_dict())
    replay_prune(fresh, Record.from_json(rec.to_json()))
    assert torch.equal(fresh.head.weight_mask, two_tower.head.weight_mask)


def test_threshold_validation():
    with pytest.raises(ValueError, match="sparsity"):
        threshold_masks([torch.ones(3)], 1.0, "layer")
