"""Distillation: students from teachers, the trainer, and its errors."""

import pytest
import torch
from torch import nn

from mmcompress.distill import DistillConfig, distill, every_kth, keep_layers
from mmcompress.errors import ConfigError, DataError, ModelError
from mmcompress.models.zoo import ImageClassifier
from mmcompress.prune.structured import narrow_cnn
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

FEW = 200  # labelled samples the students see: soft targets help most when labels are scarce


@pytest.fixture(scope="module")
def teacher(digits_module):
    torch.manual_seed(0)
    model = ImageClassifier((16, 32, 64))
    fit(model, ClassificationTask(), digits_module[0], TrainConfig(epochs=5, batch_size=64, lr=3e-3), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def digits_module():
    from mmcompress.data.registry import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")


def _student():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def test_unlabeled_distillation_lifts_a_student_that_has_few_labels(teacher, digits_module):
    train, test = digits_module
    few = torch.utils.data.Subset(train, range(FEW))
    task, config = ClassificationTask(), TrainConfig(epochs=8, batch_size=32, lr=3e-3)
    hard = _student()
    fit(hard, task, few, config, progress=False)
    soft = _student()  # the same student on all training images, with the teacher's soft targets only
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill(
        teacher, soft, train, DistillConfig(temperature=4.0, unlabeled=True, train=config), task=task, progress=False
    )
    hard_acc, soft_acc = task.evaluate(hard, test)["accuracy"], task.evaluate(soft, test)["accuracy"]
    assert soft_acc > hard_acc + 0.02, (hard_acc, soft_acc)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the teacher never trains


def test_feature_distillation_adds_a_trained_projection(teacher, digits_module):
    student = narrow_cnn(teacher, 0.5)
    assert [m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 32]
    config = DistillConfig(
        features={"features": "features"}, train=TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=5)
    )
    for param in student.parameters():  # copied from a frozen teacher: distill trains it anyway
        param.requires_grad_(False)
    before = [p.detach().clone() for p in student.parameters()]
    result = distill(teacher, student, digits_module[0], config, task=ClassificationTask(), progress=False)
    assert result.history and "loss" in result.history[-1]
    assert all(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert isinstance(student, ImageClassifier) and student(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_layer_students_reproduce_the_teachers_kept_layers():
    from mmcompress.models.fusion import TextEncoder

    torch.manual_seed(0)
    teacher = TextEncoder(50, 32, 4, 4).eval()
    student = keep_layers(teacher, every_kth(4, 2)).eval()
    assert len(student.blocks) == 2
    x, mask = torch.randn(2, 5, 32), torch.ones(2, 5)
    with torch.no_grad():
        for got, want in zip(student.blocks, [teacher.blocks[1], teacher.blocks[3]], strict=True):
            assert torch.equal(got(x, mask), want(x, mask))
    with pytest.raises(ConfigError, match="do not fit"):
        keep_layers(teacher, [0, 7])


def test_distillation_errors_name_the_problem(teacher, digits_module):
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig.from_dict({"temperature": 0})
    empty = torch.utils.data.Subset(digits_module[0], [])
    with pytest.raises(DataError, match="empty"):
        distill(teacher, _student(), empty, task=ClassificationTask())
    with pytest.raises(ModelError, match="no module 'missing'"):
        distill(teacher, _student(), digits_module[0], {"features": {"missing": "features"}}, task=ClassificationTask())
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))
    config = DistillConfig(train=TrainConfig(epochs=1, max_steps_per_epoch=1))
    with pytest.raises(ValueError, match="teacher's classes"):
        distill(teacher, wrong, digits_module[0], config, task=ClassificationTask(), progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_distillation_under_autocast(teacher, digits_module, amp):  # fp16 uses loss scaling
    student = _student()
    config = DistillConfig(temperature=2.0, train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, amp=amp))
    result = distill(teacher, student, digits_module[0], config, task=ClassificationTask(), progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert ClassificationTask().evaluate(student, digits_module[1])["accuracy"] > 0.7
