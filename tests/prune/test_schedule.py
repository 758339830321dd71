import pytest
from torch import nn

from mmcompress.prune.schedule import cubic_sparsity, gradual_prune
from mmcompress.train.config import TrainConfig
from mmcompress.train.tasks import ClassificationTask

GRADUAL_MIN_ACCURACY = 0.85  # digits MLP at 80% sparsity after 6 epochs of gradual pruning


def test_cubic_schedule_rises_fast_then_flattens():
    values = [cubic_sparsity(t, 0.9, end=10) for t in range(12)]
    assert values[0] == 0.0 and values[10] == values[11] == pytest.approx(0.9)
    steps = [b - a for a, b in zip(values[:10], values[1:11], strict=True)]
    assert all(x > y for x, y in zip(steps, steps[1:], strict=False))  # decreasing increments


def test_gradual_pruning_reaches_the_final_sparsity_and_keeps_accuracy(digits):
    train, test = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    task = ClassificationTask()
    rec, result = gradual_prune(
        model, task, train, TrainConfig(epochs=6, batch_size=64, lr=3e-3), {"sparsity": 0.8}, progress=False
    )
    assert rec.metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    sparsities = [h["sparsity"] for h in result.history if "sparsity" in h]
    assert sparsities == sorted(sparsities) and len(sparsities) == 4
    assert task.evaluate(model, test)["accuracy"] > GRADUAL_MIN_ACCURACY
    with pytest.raises(ValueError, match="magnitude"):
        gradual_prune(model, task, train, TrainConfig(epochs=1), {"method": "wanda"}, progress=False)
