"""`bench` on a model that does not export to ONNX (Whisper's decoder: `aten::diff`): the eager rows
are still timed and the missing onnxruntime row is a warning naming why, not an abort."""

from __future__ import annotations

import textwrap

import pytest

from mmcompress.evaluate.bench import bench

USER_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.diff(x, dim=1, prepend=x[:, :1]))  # aten::diff: no ONNX export


def build():
    torch.manual_seed(0)
    return Net()


def load():
    x = torch.randn(16, 8)
    return [x[i] for i in range(12)], [x[i] for i in range(12, 16)]
"""


def test_a_model_that_does_not_export_keeps_its_eager_rows(tmp_path, monkeypatch):
    (tmp_path / "diff_model.py").write_text(textwrap.dedent(USER_MODEL))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"no onnxruntime row for original model: .*aten::diff"):
        rows = bench("py:diff_model.py:build", tmp_path / "bench", batches=(2,), parts=("model",), repeats=2,
                     warmup=0, data="py:diff_model.py:load")  # fmt: skip
    assert [(r.runtime, r.batch) for r in rows] == [("eager", 2)] and rows[0].median_ms > 0
    assert not list((tmp_path / "bench").glob("*.onnx"))
