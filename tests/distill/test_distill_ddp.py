"""Distillation under torchrun: 2 processes give the student 1 process gives (CPU, gloo)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from mmcompress.models.zoo import ImageClassifier
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    from mmcompress.data.registry import load_dataset
    from mmcompress.distill import DistillConfig, distill
    from mmcompress.models.zoo import ImageClassifier
    from mmcompress.train.config import TrainConfig
    from mmcompress.train.distributed import init_from_env, world
    from mmcompress.train.tasks import ClassificationTask

    init_from_env()
    teacher = ImageClassifier((8, 16, 32))
    teacher.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    train = load_dataset("digits", "train")
    kd = DistillConfig(temperature=4.0, cache_teacher=True, train=TrainConfig(epochs=2, batch_size=64, seed=1))
    result = distill(teacher.eval(), student, train, kd, task=ClassificationTask(), progress=False)
    if world()[0] == 0:
        torch.save(torch.cat([p.detach().flatten() for p in student.parameters()]), sys.argv[2] + ".pt")
        json.dump({"world": world()[1], "loss": result.history[-1]["loss"]}, open(sys.argv[2], "w"))
    """
)


@pytest.mark.slow
def test_two_process_distillation_matches_one_process(tmp_path, digits):
    torch.manual_seed(0)
    teacher = ImageClassifier((8, 16, 32))
    fit(teacher, ClassificationTask(), digits[0], TrainConfig(epochs=3, batch_size=64), progress=False)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(tmp_path / "worker.py"), str(tmp_path / "teacher.pt"), str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 and "SIGABRT" in proc.stderr:  # seen 2 in ~10 suite runs, never alone: once more
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-2000:]
        runs[nproc] = (json.loads(out.read_text()), torch.load(str(out) + ".pt"))
    assert runs[1][0]["world"] == 1 and runs[2][0]["world"] == 2
    assert torch.allclose(runs[1][1], runs[2][1], atol=1e-4), float((runs[1][1] - runs[2][1]).abs().max())
    assert runs[1][0]["loss"] == pytest.approx(runs[2][0]["loss"], rel=1e-3)
