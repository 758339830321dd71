"""Block-wise repair (distill/blockwise.py): each block of a pruned student learns the teacher
block's output from its own inputs; no block ends worse on held-out samples."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.distill.blockwise import BlockRepairConfig, distill_blocks
from mmcompress.errors import ConfigError, DataError
from mmcompress.prune.structured import prune_structured


def _cnn() -> nn.Module:
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, 24, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, cout, 3, padding=1))

    model = nn.Sequential(
        nn.Sequential(block(3, 8), block(8, 8), block(8, 8)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _calib(n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 8, 8, generator=g) for _ in range(n)]


def _error(teacher: nn.Module, student: nn.Module, data: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(float((student(x) - teacher(x)).pow(2).mean()) for x in data)


def test_blocks_learn_the_teacher_outputs_and_the_model_gets_closer():
    teacher, calib, unseen = _cnn(), _calib(), _calib(3)
    student = copy.deepcopy(teacher)
    targets = {f"re:0\\.{i}\\.0": {"ratio": 0.5} for i in range(3)} | {"_default": None}
    prune_structured(student, targets, example_inputs=calib[0][:2], calib=calib)
    before = _error(teacher, student, unseen)
    names = ["0.0", "0.1", "0.2"]
    result = distill_blocks(teacher, student, names, calib, BlockRepairConfig(steps=60, lr=3e-3, batch_size=16))
    assert list(result) == names
    assert all(r["after"] <= r["before"] for r in result.values())  # kept-best: never worse on held-out samples
    assert result["0.0"]["after"] < 0.8 * result["0.0"]["before"]
    assert _error(teacher, student, unseen) < 0.8 * before  # and it carries to samples it never saw
    assert not student.training and all(p.requires_grad for p in student.parameters())


def test_blocks_must_follow_one_another_and_data_must_be_given():
    teacher = _cnn()
    with pytest.raises(ConfigError, match="does not read the output of '0.0'"):
        distill_blocks(teacher, copy.deepcopy(teacher), ["0.0", "0.2"], _calib(2))
    with pytest.raises(ConfigError, match="no module named 'nope'"):
        distill_blocks(teacher, copy.deepcopy(teacher), ["nope"], _calib(2))
    with pytest.raises(DataError, match="calibration batches"):
        distill_blocks(teacher, copy.deepcopy(teacher), ["0.0"], [])
