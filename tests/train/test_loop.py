import dataclasses

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


def test_early_stopping_keeps_the_best_epoch(digits):
    torch.manual_seed(0)
    model = ImageClassifier((8, 16, 32))
    cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-2, early_stopping=1, grad_clip=None)
    res = fit(model, ClassificationTask(), digits[0], cfg, val_data=digits[1], progress=False)
    accuracies = [entry["accuracy"] for entry in res.history]
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    assert res.best_epoch == best + 1 and res.metrics["accuracy"] == accuracies[best]
    # training stopped at the first epoch that did not improve, or ran to the end
    assert len(accuracies) == cfg.epochs or accuracies[-1] <= accuracies[-2]
    assert ClassificationTask().evaluate(model, digits[1])["accuracy"] == pytest.approx(accuracies[best])


def test_early_stopping_keeps_the_starting_weights_when_training_only_hurts(digits):
    torch.manual_seed(0)
    model = ImageClassifier((8, 16, 32))
    fit(model, ClassificationTask(), digits[0], TrainConfig(epochs=3, batch_size=64, lr=2e-2), progress=False)
    start = ClassificationTask().evaluate(model, digits[1])["accuracy"]
    train = digits[0]
    noise = dataclasses.replace(train, labels=train.labels[torch.randperm(len(train))])  # labels shuffled
    cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-2, early_stopping=2)
    res = fit(model, ClassificationTask(), noise, cfg, val_data=digits[1], progress=False)
    assert all(entry["accuracy"] < start for entry in res.history)  # every epoch made it worse
    assert res.best_epoch == 0 and res.metrics["accuracy"] == start
    assert ClassificationTask().evaluate(model, digits[1])["accuracy"] == start


def test_resuming_a_run_whose_best_epoch_is_the_start(digits, tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier((8, 16, 32))
    fit(model, ClassificationTask(), digits[0], TrainConfig(epochs=3, batch_size=64, lr=2e-2), progress=False)
    train = digits[0]
    noise = dataclasses.replace(train, labels=train.labels[torch.randperm(len(train))])
    cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-2, early_stopping=2)
    first = fit(model, ClassificationTask(), noise, cfg, val_data=digits[1], checkpoint_dir=tmp_path, progress=False)
    again = fit(model, ClassificationTask(), noise, cfg, val_data=digits[1], checkpoint_dir=tmp_path, progress=False)
    assert first.best_epoch == again.best_epoch == 0 and again.metrics == first.metrics


def test_early_stopping_needs_validation_data_and_a_known_metric(digits):
    from mmcompress.errors import ConfigError

    cfg = TrainConfig(epochs=2, batch_size=64, early_stopping=1)
    with pytest.raises(ConfigError, match="val_data"):
        fit(ImageClassifier((8, 16, 32)), ClassificationTask(), digits[0], cfg, progress=False)
    cfg = cfg.model_copy(update={"monitor": "f1"})
    with pytest.raises(ConfigError, match=r"monitors 'f1'.*'accuracy'"):
        fit(ImageClassifier((8, 16, 32)), ClassificationTask(), digits[0], cfg, val_data=digits[1], progress=False)


def test_tensorboard_log_holds_the_loss_curve(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(epochs=2, batch_size=128, log_dir=str(tmp_path / "tb"))
    res = fit(ImageClassifier((8, 16, 32)), ClassificationTask(), digits[0], cfg, val_data=digits[1], progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    steps = events.Scalars("train/loss")
    assert len(steps) == 2 * -(-len(digits[0]) // 128)
    accuracy = [e.value for e in events.Scalars("epoch/accuracy")]
    assert accuracy == pytest.approx([h["accuracy"] for h in res.history])
    assert TrainConfig(log_dir="x").identity() == TrainConfig().identity()  # where logs go is not hashed


def test_lr_scale_gives_a_module_its_own_learning_rate(digits):
    from mmcompress.errors import ConfigError

    torch.manual_seed(0)
    model = ImageClassifier((8, 16, 32))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=3, lr_scale={"features": 1e-6})
    fit(model, ClassificationTask(), digits[0], cfg, progress=False)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert max(v for n, v in moved.items() if n.startswith("features.")) < 1e-6
    assert max(v for n, v in moved.items() if not n.startswith("features.")) > 1e-4
    with pytest.raises(ConfigError, match="lr_scale prefix 'towers'"):
        bad = cfg.model_copy(update={"lr_scale": {"towers": 0.1}})
        fit(model, ClassificationTask(), digits[0], bad, progress=False)


def test_sgd_with_momentum_trains_and_is_part_of_the_identity(digits):
    model = ImageClassifier((8, 16, 32))
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.1, optimizer="sgd", weight_decay=0.0)
    res = fit(model, ClassificationTask(), digits[0], cfg, progress=False, val_data=digits[1])
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert res.metrics["accuracy"] > DIGITS_MIN_ACCURACY
    assert "optimizer" not in TrainConfig().identity()  # caches of AdamW runs stay valid
    assert TrainConfig(optimizer="sgd").identity() != TrainConfig(optimizer="sgd", momentum=0.5).identity()


def test_a_fit_with_too_few_optimizer_steps_warns(digits):
    train = torch.utils.data.Subset(digits[0], range(512))
    with pytest.warns(UserWarning, match=r"fit: 6 optimizer step\(s\) in all \(512 samples, batch_size 256"):
        fit(ImageClassifier((8, 16, 32)), ClassificationTask(), train, TrainConfig(epochs=3), progress=False)
