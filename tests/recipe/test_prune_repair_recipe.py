"""A recipe repairs structured pruning of a BatchNorm CNN: least-squares reconstruction of the
consumers, BatchNorm statistics moved by what pruning changed, then distillation with frozen
BatchNorm on unlabeled inputs; every stage resumes and the run rebuilds."""

import copy

import pytest
import torch

from mmcompress.recipe.runner import compress, load_run
from mmcompress.train.tasks import ClassificationTask

REPAIRED_MIN_GAIN = 0.02  # accuracy points distillation adds (digits, half of every conv gone; measured 0.05)


@pytest.fixture
def trained(train_digits_cnn):
    return train_digits_cnn(epochs=4)


def test_prune_reconstruct_recalibrate_and_distill_with_frozen_batchnorm(trained, digits, tmp_path):
    start = copy.deepcopy(trained)
    prune = {"ratio": 0.5, "reconstruct": True, "recalibrate_batchnorm": True, "data_samples": 128}
    distill = {"unlabeled": True, "batchnorm": "frozen", "temperature": 2.0, "cache_teacher": True,
               "train": {"epochs": 2, "batch_size": 64, "lr": 3e-3}}  # fmt: skip
    recipe = {
        "stages": [
            {"pass": "prune_structured", "config": prune, "targets": {"re:features.*": {}}},
            {"name": "pruned", "pass": "evaluate", "config": {"latency_repeats": 1}},
            {"pass": "distill", "config": distill},
            {"name": "repaired", "pass": "evaluate", "config": {"latency_repeats": 1}},
        ]
    }
    res = compress(trained, recipe, data=digits, output_dir=tmp_path, progress=False)
    assert [m.out_channels for m in trained.features.modules() if isinstance(m, torch.nn.Conv2d)] == [4, 8, 16]
    assert res.metrics("repaired")["accuracy"] >= res.metrics("pruned")["accuracy"] + REPAIRED_MIN_GAIN
    rebuilt = load_run(tmp_path, copy.deepcopy(start))
    assert ClassificationTask().evaluate(rebuilt, digits[1])["accuracy"] == pytest.approx(
        res.metrics("repaired")["accuracy"]
    )
