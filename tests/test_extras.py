"""A feature whose optional package is missing fails in one line naming the pip extra, before any
work; the core (quantize, prune, export) needs none of the extras."""

import subprocess
import sys

import pytest

RUN = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed
from mmcompress.cli import main
sys.argv = ["mmcompress", *{argv!r}]
main()
"""


@pytest.mark.parametrize(
    "blocked, argv, extra",
    [
        (["optuna"], ["auto", "digits-cnn", "--out", "{tmp}/auto"], "auto"),
        (["matplotlib", "matplotlib.pyplot"], ["run", "recipes/w8.yaml", "--model", "digits-cnn", "--out", "{tmp}/r"],
         "report"),
    ],
)  # fmt: skip
def test_missing_extra_is_one_line_naming_it(tmp_path, blocked, argv, extra):
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-c", RUN.format(blocked=blocked, argv=argv)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"pip install 'mmcompress[{extra}]'" in lines[0]
    assert not (tmp_path / "auto").exists() and not (tmp_path / "r").exists()


def test_the_core_needs_no_extra():
    code = (
        "import sys\n"
        "for name in ('transformers', 'sentence_transformers', 'optuna', 'matplotlib', 'sklearn', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "import torch, mmcompress\n"
        "model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))\n"
        "mmcompress.prune(model, {'sparsity': 0.5})\n"
        "mmcompress.quantize(model, mmcompress.QuantConfig(weight_bits=8))\n"
        "print(mmcompress.measure(model).compression > 1)\n"
        "print(mmcompress.export_onnx(model, torch.randn(2, 16), sys.argv[1]).cosine > 0.99)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "/tmp/mmc-core-only.onnx"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]
