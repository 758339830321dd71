import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmcompress.cli import cli
from mmcompress.core.cpu import integer_weight_bits

QUICK = Path(__file__).resolve().parents[1] / "recipes" / "quick.yaml"


def _run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_lists_and_help():
    assert "fashion-clip" in _run("models").output
    assert "fashion-captions" in _run("datasets").output
    for command in ("run", "quantize", "prune", "train", "eval", "measure", "models", "datasets", "report"):
        result = _run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def check_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0]


def test_quiet_silences_hugging_face_progress_bars_and_restores_them():
    """`--quiet` showed transformers' "Loading weights" bar; the switch must not outlive the command."""
    from transformers.utils import logging as tf_logging

    from mmcompress.cli_common import third_party_bars_off

    assert tf_logging.is_progress_bar_enabled()
    with third_party_bars_off():
        assert not tf_logging.is_progress_bar_enabled()
    assert tf_logging.is_progress_bar_enabled()


def test_unknown_model_is_one_line_error_with_valid_names(tmp_path):
    check_one_line_error(_run("eval", "gpt", "--cache-dir", str(tmp_path)), "unknown model 'gpt'; valid names:")
    check_one_line_error(_run("train", "gpt", "--cache-dir", str(tmp_path)), "valid names: baseline-image")


def test_measure_takes_a_model_spec_without_a_run(tmp_path):
    """`measure MODEL` on a spec (no run folder: nothing to compare against) crashed on the missing
    original size (a new user's first command)."""
    table = _run("measure", "digits-cnn", "--cache-dir", str(tmp_path))
    assert table.exit_code == 0, table.output
    assert "compression 1.00x" in table.output and "against the original" not in table.output
    measured = json.loads(_run("measure", "digits-cnn", "--json", "--cache-dir", str(tmp_path)).stdout)
    assert measured["compression"] == pytest.approx(1.0, abs=0.01) and "compression_vs_original" not in measured
    timed = json.loads(_run("measure", "digits-cnn", "--json", "--data", "digits", "--repeats", "2").stdout)
    assert timed["latency_of"] == "batch 8" and timed["latency_ms"]["median"] > 0


def test_invalid_recipe_fails_before_writing_anything(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - pass: prune\n    config: {sparsity: 1.5}\n")
    out = tmp_path / "out"
    check_one_line_error(_run("run", str(recipe), "--out", str(out)), "recipe.stages[0].config.sparsity")
    assert not out.exists()
    recipe.write_text("model: gpt\nstages:\n  - pass: evaluate\n")
    check_one_line_error(_run("run", str(recipe), "--out", str(out)), "unknown model 'gpt'")
    assert not out.exists()


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    check_one_line_error(_run("run", str(QUICK), "--out", str(blocker / "out")), "not writable")


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("mmcompress.data.fashion_mnist.DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr("mmcompress.data.fashion_mnist.OFFICIAL_URL", "http://127.0.0.1:9/")  # no network here
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "nodata").mkdir()  # a folder without the files
    result = _run("run", str(QUICK), "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "nodata"))
    assert "apt-get install dataset-fashion-mnist" in result.output and result.exit_code == 2
    assert not (tmp_path / "o").exists()
    missing = _run("run", str(QUICK), "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "typo"))
    check_one_line_error(missing, "data folder")  # a folder the user names must exist: no silent fallback


@pytest.mark.slow
def test_run_quick_recipe_end_to_end_then_resume_measure_and_report(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    result = _run("run", str(QUICK), "--out", str(out), "--cache-dir", str(cache), "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.html", "record.json", "model.safetensors", "model.onnx"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "record.json").read_text())
    stages = {s["label"]: s["metrics"] for s in record["stages"]}
    assert stages["compressed"]["compression"] > 4.0
    assert stages["compressed"]["stored_bytes"] < stages["baseline"]["stored_bytes"] / 4
    assert stages["export_onnx"]["output_cosine"] > 0.999 and stages["export_onnx"]["int8_weights"] > 40
    onnx_gap = stages["export_onnx"]["ort_zero_shot_accuracy"] - stages["export_onnx"]["torch_zero_shot_accuracy"]
    assert abs(onnx_gap) < 0.02
    assert "stage 5: export_onnx" in result.output  # a table per stage

    again = _run("run", str(QUICK), "--out", str(out), "--cache-dir", str(cache), "--quiet")
    assert again.exit_code == 0 and again.output.count("(resumed)") == 6

    measured = _run("measure", "fashion-clip", "--run", str(out), "--json", "--cache-dir", str(cache))
    assert measured.exit_code == 0, measured.output
    sizes = json.loads(measured.output[measured.output.index("{") :])
    assert sizes["total"]["stored_bytes"] == pytest.approx(stages["compressed"]["stored_bytes"], rel=0.01)
    table = _run("measure", "fashion-clip", "--run", str(out), "--cache-dir", str(cache)).output
    assert "codes that round to 0 are zeros too" in " ".join(table.split())  # not pruning
    assert "round to 0" not in _run("measure", "digits-cnn", "--cache-dir", str(cache)).output

    (out / "report.md").unlink()
    shutil.rmtree(out / "plots")
    assert _run("report", str(out)).exit_code == 0 and (out / "report.md").exists()


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """One small digits-cnn baseline (600 samples, 4 epochs) shared by the compress-command tests."""
    return tmp_path_factory.mktemp("digits-cache")


def _small(cache) -> list[str]:
    return ["--train-limit", "600", "--epochs", "4", "--test-limit", "200", "--cache-dir", str(cache), "--quiet"]


def test_quantize_command_runs_w8a8_with_onnx_and_rejects_bad_settings(tmp_path, digits_cache):
    out = tmp_path / "q"
    args = _small(digits_cache)
    w8a8 = ["--activations", "static", "--act-observer", "kl", "--smoothquant", "0.5"]  # --bits auto
    tune = ["--tune-steps", "20", "--tune-for", "onnx-qdq"]
    result = _run("quantize", "digits-cnn", *w8a8, *tune, "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    stages = {s["label"]: s for s in record["stages"]}
    assert stages["tune_quantized"]["metrics"]["layers"] >= 3  # distilled from the float baseline
    assert stages["fold_batchnorm"]["metrics"]["folded"] >= 1  # static inputs: BatchNorm folded first
    modules = stages["quantize"]["record"]["modules"]
    linear = [m for m in modules.values() if m["type"] == "QuantLinear"]
    assert linear and all(m["activations"]["mode"] == "static" and m["smoothquant"] == 0.5 for m in linear)
    picked = stages["quantize"]["record"]["info"]["integer_kernels"]["auto_weight_bits"]  # 7 on AVX2 without VNNI
    assert picked == integer_weight_bits() and all(m["bits"] == picked for m in modules.values())
    exported = stages["export_onnx"]["metrics"]
    # QDQ requantization rounds a few codes differently (documented); a near-0.5 baseline has many near-tied
    # logits, so up to 5 of the 200 digits may flip (4 did in one run order)
    assert abs(exported["ort_accuracy"] - exported["torch_accuracy"]) <= 0.025
    # 200 test digits, a 1-epoch baseline near 0.5: the thread count alone moves the quantized accuracy by 3 points
    assert stages["quantized"]["metrics"]["accuracy"] > stages["baseline"]["metrics"]["accuracy"] - 0.05

    bad = _run("quantize", "digits-cnn", "--bits", "4", "--activations", "static", "--out", str(tmp_path / "b"))
    check_one_line_error(bad, "--activations static needs --bits 7 or 8")  # in the flags' words
    bad = _run("quantize", "digits-cnn", "--smoothquant", "2", "--activations", "dynamic", "--out", str(tmp_path / "b"))
    check_one_line_error(bad, "--smoothquant: Input should be less than 1")
    assert not (tmp_path / "b").exists()
    for wrong in ("seven", "9", "1"):  # named at the flag, before any recipe is built
        bad = _run("quantize", "digits-cnn", "--bits", wrong, "--out", str(tmp_path / "c"))
        assert bad.exit_code == 2 and f"'--bits': '{wrong}' is not a number of bits (2..8) or 'auto'" in bad.output
    assert not (tmp_path / "c").exists()


def test_quantize_command_runs_w4a8_grouped_weights_on_int8_gemms(tmp_path, digits_cache):
    w4a8 = ["--bits", "4", "--granularity", "per_group", "--group-size", "32", "--scheme", "asymmetric"]
    with pytest.warns(UserWarning, match="activations stay float for .* convolution"):  # said, not hidden
        result = _run("quantize", "digits-cnn", *w4a8, "--activations", "dynamic", "--out", str(tmp_path / "q"),
                      *_small(digits_cache))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kept float inputs (weight-only) on 3 layer(s)" in (tmp_path / "q" / "report.md").read_text()  # the convs
    stages = {s["label"]: s for s in json.loads((tmp_path / "q" / "record.json").read_text())["stages"]}
    linear = [m for m in stages["quantize"]["record"]["modules"].values() if m["type"] == "QuantLinear"]
    assert linear and all(m["activations"]["mode"] == "dynamic" and m["grid"]["group_size"] == 32 for m in linear)
    assert all(m["grid"]["bits"] == 4 and not m["grid"]["symmetric"] for m in linear)
    exported = stages["export_onnx"]["metrics"]
    assert abs(exported["ort_accuracy"] - exported["torch_accuracy"]) < 0.01  # the same integers
    assert stages["quantized"]["metrics"]["accuracy"] > stages["baseline"]["metrics"]["accuracy"] - 0.05


def test_prune_command_structured_channels_shrink_and_export(tmp_path, digits_cache):
    out = tmp_path / "p"
    args = _small(digits_cache)
    structured = ["--structured", "channels", "--ratio", "0.5", "--method", "reconstruction", "--reconstruct"]
    sensitivity = ["--scope", "sensitivity", "--max-ratio", "0.9", "--budget", "params"]
    result = _run("prune", "digits-cnn", *structured, *sensitivity, "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "record.json").read_text())
    stages = {s["label"]: s for s in record["stages"]}
    groups = [g for g in stages["prune_structured"]["record"]["modules"].values() if g["structure"] == "channels"]
    assert abs(stages["prune_structured"]["metrics"]["removed"] - 0.5) < 0.03  # half the parameters (all touched)
    assert all(g["scope"] == "sensitivity" and len(g["sensitivity"]) == 2 for g in groups)  # probed at 50%, 90%
    assert len({g["removed_ratio"] for g in groups}) > 1  # shares follow the measured sensitivity
    assert any(g.get("reconstructed") for g in groups)  # consumers refit by least squares
    modules = stages["prune_structured"]["record"]["modules"]
    assert modules["head"] == {"structure": "kept", "reason": "feeds the model output"}
    assert stages["pruned"]["metrics"]["params"] < 0.75 * stages["baseline"]["metrics"]["params"]
    exported = stages["export_onnx"]["metrics"]
    # QDQ requantization rounds a few codes differently (documented); a near-0.5 baseline has many near-tied
    # logits, so up to 5 of the 200 digits may flip (4 did in one run order)
    assert abs(exported["ort_accuracy"] - exported["torch_accuracy"]) <= 0.025
    measured = json.loads(_run("measure", str(out), "--json").stdout)  # against the unpruned model's size too
    assert measured["compression"] == pytest.approx(1.0, abs=0.01)  # still float32
    assert measured["compression_vs_original"] > 1.3
    bad = _run("prune", "digits-cnn", "--pattern", "3:2", "--out", str(tmp_path / "b"), *args)
    check_one_line_error(bad, "--pattern 3:2 needs 0 < N < M")  # in the flags' words, not the recipe's
    bad = _run("prune", "digits-cnn", "--structured", "channels", "--max-ratio", "0.6", "--out", str(tmp_path / "b"))
    check_one_line_error(bad, "--max-ratio caps a group under --scope global")
    bad = _run("prune", "digits-cnn", "--structured", "channels", "--ratio", "1.5", "--out", str(tmp_path / "b"))
    check_one_line_error(bad, "--ratio: Input should be less than 1 (got 1.5)")
    bad = _run("prune", "digits-cnn", "--reconstruct", "--out", str(tmp_path / "b"), *args)
    check_one_line_error(bad, "add --structured")


def test_distill_command_narrows_and_distills_from_the_original(tmp_path, digits_cache):
    out = tmp_path / "d"
    args = _small(digits_cache)
    kd = ["--channels", "0.5", "--kd-epochs", "4", "--lr", "5e-3", "--temperature", "2", "--batch-size", "32"]
    result = _run("distill", "digits-cnn", *kd, "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    stages = {s["label"]: s for s in json.loads((out / "record.json").read_text())["stages"]}
    assert stages["student"]["metrics"]["params"] < 0.5 * stages["teacher"]["metrics"]["params"]
    assert stages["distilled"]["metrics"]["accuracy"] > stages["student"]["metrics"]["accuracy"] + 0.2
    assert stages["distill"]["config"]["temperature"] == 2.0
    bad = _run("distill", "digits-cnn", "--out", str(tmp_path / "b"), *args)
    check_one_line_error(bad, "--channels RATIO and/or --keep-every K")
    bad = _run("distill", "digits-cnn", "--keep-every", "2", "--out", str(tmp_path / "c"), *args)
    check_one_line_error(bad, "has no ModuleList of layers")


@pytest.mark.slow
def test_bench_command_times_original_and_compressed_in_separate_processes(tmp_path, digits_cache):
    run = tmp_path / "q"
    assert _run("quantize", "digits-cnn", "--out", str(run), *_small(digits_cache)).exit_code == 0
    out = tmp_path / "bench"
    args = ["--run", str(run), "--batch", "2", "--repeats", "3", "--warmup", "1", "--out", str(out)]
    result = _run("bench", "digits-cnn", *args, "--cache-dir", str(digits_cache))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert {(r["variant"], r["runtime"]) for r in rows} == {
        (v, rt) for v in ("original", "compressed") for rt in ("eager", "onnxruntime")
    }
    for row in rows:
        assert row["p10_ms"] <= row["median_ms"] <= row["p90_ms"] and row["peak_rss_mb"] > 0
        assert row["throughput"] == pytest.approx(1000 * row["batch"] / row["median_ms"])
        assert row["speedup"] > 0
    assert (out / "bench.png").stat().st_size > 0
    bad = _run("bench", "digits-cnn", "--part", "audio", "--out", str(tmp_path / "b"), "--cache-dir", str(digits_cache))
    check_one_line_error(bad, "part 'audio' is not 'model' or a tower")
