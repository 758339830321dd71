import pytest

from mmcompress.errors import MMCompressError
from mmcompress.models.zoo import ImageClassifier
from mmcompress.recipe.runner import compress
from mmcompress.report.render import write_report


def test_report_has_summary_table_and_embedded_plots(digits, tmp_path):
    recipe = {
        "stages": [
            {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "quantize"},
            {"name": "int8", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    compress(ImageClassifier((8, 8, 8)), recipe, data=digits, output_dir=tmp_path, progress=False)
    md, page = write_report(tmp_path)
    text = md.read_text()
    assert "compression (the original's float32 bytes / stored bytes)" in text and "| 2 | int8 | evaluate |" in text
    assert "## Recipe" in text and "## What each stage did, per layer" in text and "bits=8" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and html.count("<table>") == 3  # stages, layers, towers
    assert (tmp_path / "plots" / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_record_is_an_error(tmp_path):
    with pytest.raises(MMCompressError, match="record.json"):
        write_report(tmp_path)


def test_layer_table_shows_short_lists_and_leaves_long_ones_to_the_record():
    from mmcompress.report.render import layer_table

    entry = {"kept": 6, "removed_ratio": 0.25, "sensitivity": [0.01, 0.04], "keep": list(range(6)), "group": {}}
    rows = layer_table([{"label": "prune", "record": {"modules": {"conv": entry}}}])
    assert rows[1][2] == "kept=6, removed_ratio=0.25, sensitivity=[0.01, 0.04]"
    w4a8 = {"bits": 4, "activations": {"mode": "dynamic", "granularity": "per_token", "observer": "minmax"},
            "grid": {"bits": 4, "symmetric": False, "group_size": 128, "per_tensor": False}}  # fmt: skip
    conv = {"bits": 4, "activations": "none", "grid": {"bits": 4, "symmetric": True, "group_size": None}}
    rows = layer_table([{"label": "quantize", "record": {"modules": {"fc": w4a8, "conv": conv}}}])
    assert rows[1][2] == "bits=4, activations=dynamic/per_token, grid=asym, group 128"
    assert rows[2][2] == "bits=4, activations=none, grid=sym, per channel"  # inputs left float: said per layer


def test_headline_compression_counts_against_the_original_model(digits, tmp_path):
    import re

    recipe = {
        "stages": [
            {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 2}},
            {"pass": "prune_structured", "config": {"ratio": 0.5}},
            {"name": "pruned", "pass": "evaluate", "config": {"latency_repeats": 2}},
        ]
    }
    compress(ImageClassifier((8, 16, 16)), recipe, data=digits, output_dir=tmp_path, progress=False)
    text = write_report(tmp_path)[0].read_text()
    before, after = re.search(r"stored bytes\) ([\d.]+)x -> \*\*([\d.]+)x\*\*", text).groups()
    assert float(before) == 1.0 and float(after) > 1.5  # half the channels: a smaller float32 model


def test_a_compressed_stage_slower_than_the_first_evaluation_is_a_warning():
    """A new user's W4A8 model ran 3.8 -> 6.1 ms in PyTorch and the report said nothing."""
    from mmcompress.report.render import warnings_of

    def stage(label, median, p10, p90):
        return {"label": label, "metrics": {"latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90}}

    record = {"recipe": {}}
    base = stage("baseline", 3.8, 3.7, 3.9)
    slower = warnings_of(record, [base, stage("quantized", 6.1, 6.0, 6.3)])
    assert len(slower) == 1 and "than the first evaluation, 'baseline' (3.8 -> 6.1 ms)" in slower[0]
    assert warnings_of(record, [base, stage("quantized", 4.0, 3.85, 4.1)]) == []  # within the noise
    assert warnings_of(record, [base, stage("quantized", 2.5, 2.4, 2.6)]) == []  # faster
    # a trial user's MobileNetV2: pruning took 194 -> 80 ms, W8A8 static convolutions back to 220 ms
    chain = [stage("baseline", 194.0, 190, 198), stage("pruned", 80.0, 78, 82), stage("quantized", 180.0, 176, 184)]
    (warning,) = warnings_of(record, chain)
    assert "than the stage before it, 'pruned' (80.0 -> 180.0 ms)" in warning and "convolutions" in warning


def test_layers_structured_pruning_kept_at_full_width_are_a_warning():
    """A trial user's TransformerEncoder FFN channels were all kept; the report's warnings said nothing."""
    from mmcompress.report.render import warnings_of

    kept = {"label": "prune_structured", "metrics": {"layers_kept": 7.0, "removed": 0.0}}
    (warning,) = warnings_of({"recipe": {}}, [kept])
    assert "kept 7 targeted layer(s) at full width and removed nothing" in warning
    assert warnings_of({"recipe": {}}, [{"label": "p", "metrics": {"layers_kept": 0.0, "removed": 0.3}}]) == []
