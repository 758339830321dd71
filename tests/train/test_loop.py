import pytest
import torch

from mmcompress.errors import DataError, ModelError
from mmcompress.models.zoo import ImageClassifier
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import autocast_dtype, fit
from mmcompress.train.tasks import ClassificationTask

DIGITS_MIN_ACCURACY = 0.85


def test_trains_digits_to_useful_accuracy(digits):
    model = ImageClassifier((8, 16, 32))
    res = fit(
        model,
        ClassificationTask(),
        digits[0],
        TrainConfig(epochs=6, batch_size=64, lr=5e-3),
        progress=False,
        val_data=digits[1],
    )
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.metrics["accuracy"] > DIGITS_MIN_ACCURACY


def test_bf16_autocast_trains(digits):
    model = ImageClassifier((8, 16, 32))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, amp="bf16")
    res = fit(model, ClassificationTask(), digits[0], cfg, progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cpu")) is torch.float16


def test_resume_continues_from_checkpoint_and_matches_uninterrupted(digits, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=128, seed=1)
    torch.manual_seed(0)
    straight = ImageClassifier((8, 16, 16))
    fit(straight, ClassificationTask(), digits[0], cfg, progress=False)

    torch.manual_seed(0)
    part = ImageClassifier((8, 16, 16))
    fit(
        part,
        ClassificationTask(),
        digits[0],
        cfg.model_copy(update={"epochs": 1}),
        progress=False,
        checkpoint_dir=tmp_path,
    )
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    # the checkpoint was written under the 1-epoch config: another config must not resume it
    with pytest.raises(ModelError, match="another training config"):
        fit(ImageClassifier((8, 16, 16)), ClassificationTask(), digits[0], cfg, checkpoint_dir=tmp_path, progress=False)


def test_resume_same_config_skips_finished_epochs(digits, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=128)
    model = ImageClassifier((8, 16, 16))
    first = fit(model, ClassificationTask(), digits[0], cfg, checkpoint_dir=tmp_path, progress=False)
    again = fit(
        ImageClassifier((8, 16, 16)), ClassificationTask(), digits[0], cfg, checkpoint_dir=tmp_path, progress=False
    )
    assert again.history == first.history  # nothing left to train: history restored from the checkpoint


def test_nan_inputs_and_empty_data_are_errors(digits):
    model = ImageClassifier((8, 16, 16))

    class Bad(ClassificationTask):
        def batch(self, dataset, index):
            x, y = super().batch(dataset, index)
            x[0, 0, 0, 0] = float("nan")
            return x, y

    with pytest.raises(DataError, match="NaN"):
        fit(model, Bad(), digits[0], TrainConfig(epochs=1), progress=False)
    with pytest.raises(DataError, match="empty"):
        fit(model, ClassificationTask(), [], TrainConfig(epochs=1), progress=False)


def test_freeze_prefix_that_matches_nothing_is_an_error(digits):
    from mmcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="text_tower"):
        fit(
            ImageClassifier((8, 8, 8)),
            ClassificationTask(),
            digits[0],
            TrainConfig(freeze=("text_tower",)),
            progress=False,
        )
