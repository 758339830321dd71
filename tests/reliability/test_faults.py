"""Fault injection: bit flips and truncation of every file kind mmcompress writes, garbage stage and
record files, concurrent runs on one folder, interrupted runs, read-only and missing paths for the
commands, NaN/Inf weights and inputs for the verbs. Each case ends in a one-line error (exit code 2
from the CLI, an MMCompressError from Python) or in a recovery identical to an undisturbed run —
never in a traceback or a silently different model. docs/reliability.md counts the cases."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import mmcompress
from mmcompress.errors import MMCompressError

USER = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))


    def data():
        images = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        return images[:64], images[64:]
    """
)
RECIPE = textwrap.dedent(
    """
    stages:
      - name: baseline
        pass: evaluate
        config: {latency_repeats: 1}
      - pass: prune
        config: {sparsity: 0.3}
      - pass: quantize
        config: {weight_bits: 8}
      - name: quantized
        pass: evaluate
        config: {latency_repeats: 1}
      - pass: export_onnx
    """
)
SPECS = ["--model", "py:user_model.py:build", "--data", "py:user_model.py:data", "--task", "agreement"]


def cli(cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """Run a command in this process (as the console script would: usage errors are one line too)."""
    from click.testing import CliRunner

    from mmcompress.cli import cli as group

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(group, [str(a) for a in args])
    finally:
        os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr = "Traceback:\n" + "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(args, 1, result.stdout, stderr)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines a user reads on stderr (warnings and their source lines left out)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    return [line for line in lines if not line.startswith("  ")]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = error_lines(proc)
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished run of the recipe on a user's model (made once; each test copies it)."""
    root = tmp_path_factory.mktemp("reliability")
    (root / "user_model.py").write_text(USER)
    (root / "recipe.yaml").write_text(RECIPE)
    proc = cli(root, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture()
def work(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "w")
    return tmp_path / "w"


def flip(path: Path, where: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def stage_dir(run: Path, label: str) -> Path:
    return next(p for p in (run / "stages").iterdir() if p.name.endswith(label))


# --- corrupted run files: the next command that reads them says so in one line -------------------

RUN_FILES = {
    "final weights": lambda run: run / "model.safetensors",
    "record": lambda run: run / "record.json",
    "onnx": lambda run: run / "model.onnx",
}


@pytest.mark.parametrize("damage", [flip, truncate], ids=["flip", "truncate"])
@pytest.mark.parametrize("kind", sorted(RUN_FILES))
@pytest.mark.parametrize("command", ["measure", "eval"])
def test_damaged_run_file_is_a_one_line_error(work, kind, damage, command):
    damage(RUN_FILES[kind](work / "run"))
    args = ["measure", "run"] if command == "measure" else ["eval", "run", *SPECS[2:]]
    proc = cli(work, *args)
    named = {"final weights": "model.safetensors", "record": "record.json", "onnx": "model.onnx"}[kind]
    assert proc.returncode == 2 and error_lines(proc) == [one_line_error(proc)]
    assert named in error_lines(proc)[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", [flip, truncate], ids=["flip", "truncate"])
@pytest.mark.parametrize("label", ["prune", "quantize"])
def test_damaged_stage_checkpoint_stops_the_resume(work, label, damage):
    (work / "run" / "record.json").unlink()  # as if interrupted after the stages
    damage(stage_dir(work / "run", label) / "model.safetensors")
    proc = cli(work, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet")
    if label == "prune":  # the quantize stage's checkpoint is the one a resume loads: prune's is not read
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    one_line_error(proc, "stage checkpoint", "--no-resume")
    assert cli(work, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet", "--no-resume").returncode == 0


STAGE_DAMAGE = {
    "garbage": lambda p: p.write_text("{not json"),
    "empty": lambda p: p.write_text(""),
    "missing field": lambda p: p.write_text(
        json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "metrics"})
    ),  # fmt: skip
    "unknown field": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "surprise": 1})),
    "not a mapping": lambda p: p.write_text("[1, 2]"),
}


@pytest.mark.parametrize("damage", sorted(STAGE_DAMAGE))
def test_damaged_stage_json_is_a_one_line_error(work, damage):
    path = stage_dir(work / "run", "quantize") / "stage.json"
    STAGE_DAMAGE[damage](path)
    proc = cli(work, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1
    assert "02-quantize/stage.json" in one_line_error(proc) and "--no-resume" in error_lines(proc)[0]


RECORD_DAMAGE = {
    "garbage": lambda p: p.write_text("{{{"),
    "no stages": lambda p: p.write_text(
        json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "stages"})
    ),  # fmt: skip
    "not a mapping": lambda p: p.write_text('"text"'),
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
@pytest.mark.parametrize("command", ["measure", "bench", "report"])
def test_damaged_record_is_a_one_line_error(work, damage, command):
    RECORD_DAMAGE[damage](work / "run" / "record.json")
    args = {"measure": ["measure", "run"], "report": ["report", "run"],
            "bench": ["bench", "py:user_model.py:build", "--run", "run", "--runtime", "eager", "--repeats", 1,
                      "--out", "bench"]}[command]  # fmt: skip
    proc = cli(work, *args)
    assert proc.returncode == 2 and len(error_lines(proc)) == 1
    assert "record.json" in one_line_error(proc) and "Traceback" not in proc.stderr


# --- files written through the Python API -------------------------------------------------------


def _cache_entry(tmp_path):
    from mmcompress.models import cache

    model = nn.Sequential(nn.Linear(8, 8))
    cache.save_cached(tmp_path, "user", "k1", model, {"metrics": {}})
    return cache.cache_paths(tmp_path, "user", "k1")[0], lambda: cache.load_cached(tmp_path, "user", "k1", model)


def _deep_file(tmp_path):
    model = nn.Sequential(nn.Linear(32, 16))
    path = tmp_path / "m.mmdc"
    mmcompress.save_deep(model, path)
    return path, lambda: mmcompress.load_deep(path)


def _quantized(tmp_path):
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    mmcompress.quantize(model, mmcompress.QuantConfig(weight_bits=4))
    mmcompress.save_quantized(model, tmp_path / "q")
    fresh = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    return tmp_path / "q" / "weights.safetensors", lambda: mmcompress.load_quantized(fresh, tmp_path / "q")


def _quant_map(tmp_path):
    path, load = _quantized(tmp_path)
    return path.parent / "quant_map.json", load


def _onnx(tmp_path):
    from mmcompress.graph.runtime import OrtModel

    path = tmp_path / "m.onnx"
    mmcompress.export_onnx(nn.Sequential(nn.Linear(8, 4)), torch.randn(2, 8), path)
    return path, lambda: OrtModel.from_path(path)


FILE_KINDS = {"cache": _cache_entry, "mmdc": _deep_file, "quantized weights": _quantized,
              "quant map": _quant_map}  # fmt: skip


@pytest.mark.parametrize("where", [0.02, 0.5, 0.98], ids=["head", "middle", "tail"])
@pytest.mark.parametrize("kind", sorted(FILE_KINDS))
def test_bit_flip_anywhere_is_detected(tmp_path, kind, where):
    path, load = FILE_KINDS[kind](tmp_path)
    flip(path, where)
    with pytest.raises(MMCompressError):
        load()


@pytest.mark.parametrize("kind", sorted([*FILE_KINDS, "onnx"]))
def test_truncation_is_detected(tmp_path, kind):
    path, load = {**FILE_KINDS, "onnx": _onnx}[kind](tmp_path)
    truncate(path)
    with pytest.raises(MMCompressError):
        load()


@pytest.mark.parametrize("kind", sorted([*FILE_KINDS, "onnx"]))
def test_missing_file_is_a_clear_error(tmp_path, kind):
    path, load = {**FILE_KINDS, "onnx": _onnx}[kind](tmp_path)
    path.unlink()
    if kind == "cache":  # a missing cache entry is a miss: the baseline is trained again (identical recovery)
        assert load() is None
        return
    with pytest.raises(MMCompressError):
        load()


def test_save_deep_refuses_weights_still_shared_through_centroids(tmp_path):
    model = nn.Sequential(nn.Linear(32, 16))
    mmcompress.share_weights(model, {"bits": 3})
    with pytest.raises(MMCompressError, match="fuse_shared_weights"):
        mmcompress.save_deep(model, tmp_path / "m.mmdc")
    assert not (tmp_path / "m.mmdc").exists()


# --- one folder, two runs -------------------------------------------------------------------------


def test_a_second_run_on_a_busy_folder_fails_in_one_line(work):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work / "run" / ".mmcompress.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        one_line_error(cli(work, "run", "recipe.yaml", *SPECS, "--out", "run"), "in use by another", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    proc = cli(work, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet")  # its process is gone: stale lock
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (work / "run" / ".mmcompress.lock").exists()


def test_another_recipe_is_refused_then_replaced_with_force(work):
    (work / "other.yaml").write_text(
        RECIPE.replace("sparsity: 0.3", "sparsity: 0.5").replace("  - pass: export_onnx\n", "")
    )
    one_line_error(cli(work, "run", "other.yaml", *SPECS, "--out", "run"), "another recipe", "--force")
    proc = cli(work, "run", "other.yaml", *SPECS, "--out", "run", "--quiet", "--force")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (work / "run" / "model.onnx").exists()  # the old run's artifact went with it
    labels = sorted(p.name for p in (work / "run" / "stages").iterdir())
    assert labels == ["00-baseline", "01-prune", "02-quantize", "03-quantized"]
    record = json.loads((work / "run" / "record.json").read_text())
    assert record["recipe"]["stages"][1]["config"]["sparsity"] == 0.5


def test_two_concurrent_runs_never_mix(work):
    shutil.rmtree(work / "run")
    procs = [subprocess.Popen([sys.executable, "-m", "mmcompress", "run", "recipe.yaml", *SPECS, "--out", "run",
                               "--quiet"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2]), results  # the loser waits its turn or fails
    for code, err in results:
        if code == 2:
            assert "in use by another" in err
    assert cli(work, "measure", "run").returncode == 0


# --- interrupted runs resume to the same result -----------------------------------------------------


def _final_state(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


@pytest.mark.parametrize("after", ["00-baseline", "01-prune", "02-quantize", "03-quantized", "04-export_onnx"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "kill-INT"])
def test_killed_run_resumes_to_the_same_model(work, sig, after):
    reference = _final_state(work / "run")
    shutil.rmtree(work / "run")
    command = [sys.executable, "-m", "mmcompress", "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet"]
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "run" / "stages" / after / "stage.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    again = cli(work, "run", "recipe.yaml", *SPECS, "--out", "run", "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    got = _final_state(work / "run")
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


# --- read-only and missing paths ---------------------------------------------------------------------


@pytest.fixture()
def readonly(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield folder
    folder.chmod(stat.S_IRWXU)


COMMANDS_WITH_OUT = {
    "run": ["run", "recipe.yaml", *SPECS],
    "quantize": ["quantize", *SPECS[1:2], *SPECS[2:]],
    "prune": ["prune", *SPECS[1:2], *SPECS[2:]],
    "distill": ["distill", *SPECS[1:2], *SPECS[2:], "--channels", "0.5"],
    "auto": ["auto", *SPECS[1:2], *SPECS[2:]],
    "bench": ["bench", *SPECS[1:2], "--data", "py:user_model.py:data", "--runtime", "eager"],
    "train": ["train", "digits-cnn", "--epochs", "1"],
}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_OUT))
def test_read_only_out_is_refused_before_any_work(work, readonly, command):
    proc = cli(work, *COMMANDS_WITH_OUT[command], "--out", readonly / "x")
    assert proc.returncode == 2 and "not writable" in one_line_error(proc)
    assert list(readonly.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_OUT))
def test_out_that_is_a_file_is_refused_before_any_work(work, command):
    (work / "afile").write_text("mine")
    one_line_error(cli(work, *COMMANDS_WITH_OUT[command], "--out", work / "afile" / "x"), "not writable")
    assert (work / "afile").read_text() == "mine"


MISSING = {
    "recipe": ["run", "nope.yaml", *SPECS],
    "adapter": ["run", "recipe.yaml", *SPECS, "--adapter", "nope.yaml"],
    "model file": ["run", "recipe.yaml", "--model", "py:nope.py:build", *SPECS[2:]],
    "data file": ["run", "recipe.yaml", SPECS[0], SPECS[1], "--data", "py:nope.py:data"],
    "data dir": ["eval", "digits-cnn", "--data-dir", "/nonexistent/data"],
    "measure run": ["measure", "py:user_model.py:build", "--run", "norun"],
    "eval run": ["eval", "py:user_model.py:build", "--run", "norun", *SPECS[2:]],
    "bench run": ["bench", "py:user_model.py:build", "--run", "norun"],
    "report run": ["report", "norun"],
    "cache dir file": ["train", "digits-cnn", "--cache-dir", "recipe.yaml/cache"],
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_path_is_a_one_line_error(work, case):
    (work / "norun").mkdir()
    proc = cli(work, *MISSING[case])
    assert proc.returncode == 2 and len(error_lines(proc)) == 1
    assert one_line_error(proc).startswith("error: ") and "Traceback" not in proc.stderr


# --- NaN / Inf weights and inputs, every verb ---------------------------------------------------------


def _poisoned(value: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)
    )
    with torch.no_grad():
        model[3].weight[0, 0] = value
    return model


VERBS = {
    "quantize": lambda m: mmcompress.quantize(m, mmcompress.QuantConfig(weight_bits=8)),
    "prune": lambda m: mmcompress.prune(m, {"sparsity": 0.5}),
    "prune_structured": lambda m: mmcompress.prune_structured(
        m, {"ratio": 0.5}, example_inputs=torch.randn(2, 1, 8, 8)
    ),
    "export_onnx": lambda m: mmcompress.export_onnx(m, torch.randn(2, 1, 8, 8), "/tmp/mmc-nan.onnx"),
    "factorize": lambda m: mmcompress.factorize(m, {"rank": 2}),
    "share_weights": lambda m: mmcompress.share_weights(m, {"bits": 3}),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_non_finite_weights_are_refused_by_every_verb(verb, value):
    model = _poisoned(value)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MMCompressError, match="NaN or Inf"):
        VERBS[verb](model)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) or not torch.isfinite(before[k]).all() for k in before)


DATA_VERBS = {
    "gptq": lambda m, b: mmcompress.quantize(m, {"weight_bits": 4, "method": "gptq"}, calib=b),
    "static activations": lambda m, b: mmcompress.quantize(m, {"weight_bits": 8, "activations": "static"}, calib=b),
    "wanda": lambda m, b: mmcompress.prune(m, {"sparsity": 0.5, "method": "wanda"}, data=b),
    "fit": lambda m, b: mmcompress.fit(
        m,
        mmcompress.ClassificationTask(),
        list(zip(b[0], torch.zeros(4).long(), strict=True)),
        mmcompress.TrainConfig(epochs=1, batch_size=4),
        progress=False,
    ),
}


@pytest.mark.parametrize("verb", sorted(DATA_VERBS))
def test_non_finite_inputs_are_named(verb):
    model = _poisoned(0.0)
    batch = torch.randn(4, 1, 8, 8)
    batch[1, 0, 2, 2] = float("nan")
    with pytest.raises(MMCompressError, match="NaN or Inf"):
        DATA_VERBS[verb](model, [batch])
