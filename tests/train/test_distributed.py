"""Two-process data-parallel training with torchrun on CPU (gloo)."""

import json
import subprocess
import sys

import pytest

MAX_ACCURACY_GAP = 0.05


def _train(tmp_path, nproc):
    out = tmp_path / f"run{nproc}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mmcompress",
        "train",
        "digits-cnn",
        "--epochs",
        "8",
        "--quiet",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / f"cache{nproc}"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path):
    one, two = _train(tmp_path, 1), _train(tmp_path, 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["metrics"]["accuracy"] > 0.85
    assert abs(one["metrics"]["accuracy"] - two["metrics"]["accuracy"]) < MAX_ACCURACY_GAP
