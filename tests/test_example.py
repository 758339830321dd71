"""The README's "compress your own model" example runs and keeps accuracy."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compress_your_own.py"


def test_example_compresses_a_plain_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"accuracy ([0-9.]+) -> ([0-9.]+), ([0-9.]+)x smaller", proc.stdout)
    assert found, proc.stdout
    before, after, ratio = map(float, found.groups())
    assert before > 0.9 and before - after < 0.02 and ratio > 4
    assert (tmp_path / "run" / "model.onnx").exists() and (tmp_path / "run" / "record.json").exists()
