"""Build report.md and a self-contained report.html (plots embedded) from a run's record."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from mmcompress.core.io import atomic_write_bytes, atomic_write_text
from mmcompress.recipe.runner import read_record
from mmcompress.report.plots import accuracy_vs_size, size_per_modality

SIZE_KEYS = ("stored_bytes", "compression", "latency_ms", "nonzeros", "latency_p10_ms", "latency_p90_ms",
             "latency_threads", "drop_points")  # fmt: skip
SPREAD_LIMIT = 0.5  # (p90 - p10) / median above this: the latency is too noisy to compare
SLOWER_LIMIT = 1.1  # a compressed stage's median latency above this times the first one's: a warning
MAX_LAYER_ROWS = 200


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def primary_metric(stages: list[dict[str, Any]]) -> str | None:
    """The task metric the report plots (first evaluate stage's first non-size metric)."""
    for stage in stages:
        if stage["pass_name"] == "evaluate":
            for key in stage["metrics"]:
                if key not in SIZE_KEYS and not key.startswith(("stored_bytes", "params", "float32", "compression")):
                    return key
    return None


def stage_table(stages: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of (stage, pass, seconds, key metrics) for the summary table."""
    rows = [["#", "stage", "pass", "seconds", "metrics"]]
    for s in stages:
        shown = {k: v for k, v in s["metrics"].items() if not k.startswith("stored_bytes.")}
        text = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        rows.append([str(s["index"]), s["label"], s["pass_name"], f"{s['seconds']:.1f}", text])
    return rows


def layer_table(stages: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of (stage, layer, what the stage did to it) from each stage's replayable record."""
    rows = [["stage", "layer", "what was done"]]
    for s in stages:
        for name, info in ((s.get("record") or {}).get("modules") or {}).items():
            if isinstance(info, dict):
                text = ", ".join(f"{k}={_short(v, k)}" for k, v in info.items() if _short(v, k) is not None)
            else:
                text = _fmt(info)
            rows.append([s["label"], name or "(model)", text[:160]])
    return rows


def _short(value: Any, key: str = "") -> str | None:
    """A value for the layer table: scalars, lists of up to 4 scalars (probe changes, refit layers),
    a quantized layer's input quantization ("dynamic/per_token") and weight grid ("asym, group 128");
    None for anything longer (kept indices, dependency groups live in record.json)."""
    if isinstance(value, dict):
        if key == "activations" and "mode" in value:
            return f"{value['mode']}/{value.get('granularity', 'per_tensor')}"
        if key == "grid" and "bits" in value:
            steps = f"group {value['group_size']}" if value.get("group_size") else "per tensor"
            steps = steps if value.get("group_size") or value.get("per_tensor") else "per channel"
            return f"{'sym' if value.get('symmetric', True) else 'asym'}, {steps}"
        return None
    if isinstance(value, list):
        if len(value) > 4 or any(isinstance(v, (dict, list)) for v in value):
            return None
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return _fmt(value)


def warnings_of(record: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    """What a reader must not miss: every warning a stage printed, stages that lose more than the
    recipe allows, layers left float or kept at full width by structured pruning, ONNX files that
    disagree with PyTorch, compressed stages slower than the first evaluation, latencies too noisy
    to compare."""
    limit = record["recipe"].get("warn_drop")
    out = []
    timed = [s for s in stages if s["metrics"].get("latency_ms")]
    for i, s in enumerate(timed[1:], 1):
        before = next((b for b in (timed[i - 1], timed[0]) if _clearly_slower(s["metrics"], b["metrics"])), None)
        if before is not None:
            which = "the first evaluation" if before is timed[0] else "the stage before it"
            out.append(
                f"stage {s['label']!r} runs slower in PyTorch than {which}, {before['label']!r} "
                f"({before['metrics']['latency_ms']:.1f} -> {s['metrics']['latency_ms']:.1f} ms): {SLOWER_CAUSES}; "
                "compare with `mmcompress bench`"
            )
    for s in stages:
        m, label = s["metrics"], s["label"]
        out += [f"stage {label!r} warned: {text}" for text in s.get("warnings", [])]  # as printed in the run
        if limit is not None and m.get("drop_points", 0) > limit:
            out.append(f"stage {label!r} loses {m['drop_points']:.2f} points (the recipe allows {limit})")
        if m.get("float_left"):
            out.append(f"stage {label!r} left {int(m['float_left'])} targeted layer(s) float (see the layer table)")
        if m.get("layers_kept"):
            nothing = " and removed nothing" if m.get("removed") == 0 else ""
            out.append(
                f"stage {label!r} kept {int(m['layers_kept'])} targeted layer(s) at full width{nothing} "
                "(see the layer table for why)"
            )
        if m.get("float_inputs"):
            out.append(
                f"stage {label!r} kept float inputs (weight-only) on {int(m['float_inputs'])} layer(s) whose "
                "target asked for quantized activations (see the layer table)"
            )
        if m.get("output_cosine") is not None and m["output_cosine"] < 0.99:
            out.append(
                f"stage {label!r}: the ONNX file's outputs disagree with PyTorch (cosine {m['output_cosine']:.4f})"
            )
        median, p10, p90 = m.get("latency_ms"), m.get("latency_p10_ms"), m.get("latency_p90_ms")
        if median and p10 is not None and p90 is not None and (p90 - p10) / median > SPREAD_LIMIT:
            out.append(
                f"stage {label!r}: latency spread {p10:.1f}-{p90:.1f} ms around {median:.1f} ms is too large to "
                "trust (a busy machine?); compare latencies with `mmcompress bench`"
            )
    return out


SLOWER_CAUSES = (
    "quantized layers without PyTorch integer kernels (convolutions, static activations, LSTM/GRU) run a "
    "simulation, fast on ONNX Runtime (export_onnx) only; W8A8 Linear layers need 16 rows or more (W4A8 a few "
    "hundred); or the machine was busy"
)


def _clearly_slower(metrics: dict[str, Any], first: dict[str, Any]) -> bool:
    """The stage's fastest timings (p10) are above the first evaluation's slowest (p90) and its median
    is more than SLOWER_LIMIT times the first one's: slower beyond the timing noise."""
    median, base = metrics.get("latency_ms"), first.get("latency_ms")
    if not median or not base:
        return False
    p10, base_p90 = metrics.get("latency_p10_ms", median), first.get("latency_p90_ms", base)
    return p10 > base_p90 and median > SLOWER_LIMIT * base


def tower_table(evals: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of stored MB per modality tower (columns) for each evaluated stage."""
    towers = sorted({k.split(".", 1)[1] for s in evals for k in s["metrics"] if k.startswith("stored_bytes.")})
    rows = [["stage", *towers, "total"]]
    for s in evals:
        m = s["metrics"]
        rows.append(
            [
                s["label"],
                *(f"{m.get('stored_bytes.' + t, 0) / 1e6:.3f}" for t in towers),
                f"{m['stored_bytes'] / 1e6:.3f}",
            ]
        )
    return rows


def _md_table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + [
        "| " + " | ".join(r) + " |" for r in rows[1:]
    ]


def _html_table(rows: list[list[str]]) -> str:
    cells = []
    for i, row in enumerate(rows):
        tag = "th" if i == 0 else "td"
        cells.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>")
    return "<table>" + "".join(cells) + "</table>"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` (with embedded PNG plots) from `record.json`.

    Example:
        >>> md, page = write_report("runs/default")
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    stages = record["stages"]
    evals = [s for s in stages if s["pass_name"] == "evaluate"]
    metric = record.get("primary_metric")
    if not any(metric in s["metrics"] for s in evals):  # a record of an older run may name no saved metric
        metric = primary_metric(stages)
    plots: dict[str, bytes] = {}
    if evals and metric:
        points = [(s["label"], s["metrics"]["stored_bytes"] / 1e6, s["metrics"][metric])
                  for s in evals if metric in s["metrics"] and "stored_bytes" in s["metrics"]]  # fmt: skip
        if points:
            plots["accuracy_vs_size.png"] = accuracy_vs_size(points, metric)
        towers = sorted({k.split(".", 1)[1] for s in evals for k in s["metrics"] if k.startswith("stored_bytes.")})
        sizes = {t: [s["metrics"].get(f"stored_bytes.{t}", 0.0) / 1e6 for s in evals] for t in towers}
        plots["size_per_modality.png"] = size_per_modality([s["label"] for s in evals], sizes)
    for name, data in plots.items():
        atomic_write_bytes(run_dir / "plots" / name, data)
    md = _markdown(record, stages, evals, metric, list(plots))
    page = _html(record, stages, evals, metric, plots)
    return atomic_write_text(run_dir / "report.md", md), atomic_write_text(run_dir / "report.html", page)


def _summary(evals: list[dict[str, Any]], metric: str | None) -> list[str]:
    if len(evals) < 2 or not metric:
        return []
    first, last = evals[0]["metrics"], evals[-1]["metrics"]
    timed = evals[-1].get("latency_of") or "batch of 8"  # runs from before it was recorded timed 8
    change = 100 * (last[metric] - first[metric])
    threads = last.get("latency_threads")
    pinned = f", {int(threads)} threads" if threads == threads and threads else ""  # NaN: not recorded
    original = first.get("float32_bytes") or first["stored_bytes"]  # the original model in float32
    lines = [
        f"- Stored size: {first['stored_bytes'] / 1e6:.2f} MB -> {last['stored_bytes'] / 1e6:.2f} MB; "
        f"compression (the original's float32 bytes / stored bytes) {original / first['stored_bytes']:.2f}x -> "
        f"**{original / last['stored_bytes']:.2f}x**",
        f"- {metric}: {first[metric]:.4f} -> {last[metric]:.4f} ({change:+.2f} points)",
        f"- PyTorch latency (median, {timed}{pinned}): {first['latency_ms']:.1f} ms -> {last['latency_ms']:.1f} ms",
    ]
    return lines


def _deployed(stages: list[dict[str, Any]], metric: str | None) -> list[str]:
    """The ONNX Runtime artifact beside PyTorch: metric and latency on the same batch."""
    lines = []
    for s in stages:
        m = s["metrics"]
        encoder_only = " (the encoder; the decoder runs in PyTorch)" if m.get("encoder_only") else ""
        artifact = f"ONNX Runtime artifact{encoder_only}"
        if s["pass_name"] == "export_onnx" and metric and f"ort_{metric}" in m:
            lines.append(f"- {artifact}: {metric} {m[f'ort_{metric}']:.4f} (PyTorch {m[f'torch_{metric}']:.4f})")
        if s["pass_name"] == "export_onnx" and "ort_latency_ms" in m:
            lines.append(
                f"- Latency of the final model, {s.get('latency_of') or 'batch of 8'}: ONNX Runtime "
                f"{m['ort_latency_ms']:.1f} ms, "
                f"PyTorch {m['torch_latency_ms']:.1f} ms"
            )
    return lines


def _markdown(record, stages, evals, metric, plot_names) -> str:
    lines = [f"# mmcompress report: {_model_name(record)}", ""]
    lines += _summary(evals, metric) + _deployed(stages, metric) + [""]
    warned = warnings_of(record, stages)
    if warned:
        lines += ["## Warnings", "", *(f"- **{w}**" for w in warned), ""]
    lines += ["## Stages", "", *_md_table(stage_table(stages)), ""]
    layers = layer_table(stages)
    if len(layers) > 1:
        shown = layers[: MAX_LAYER_ROWS + 1]
        lines += ["## What each stage did, per layer", "", *_md_table(shown)]
        if len(layers) > len(shown):
            lines.append(f"\n({len(layers) - len(shown)} more rows in record.json)")
        lines.append("")
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(record["recipe"], sort_keys=False).rstrip(), "```", ""]
    if evals:
        lines += ["## Stored size per modality tower (MB)", "", *_md_table(tower_table(evals)), ""]
    lines += [f"![{n}](plots/{n})" for n in plot_names]
    lines += ["", f"Versions: {json.dumps(record['versions'])}; seed {record['seed']}.", ""]
    return "\n".join(lines)


def _html(record, stages, evals, metric, plots) -> str:
    warned = "".join(f"<li><b>{html.escape(w)}</b></li>" for w in warnings_of(record, stages))
    table = (f"<h2>Warnings</h2><ul>{warned}</ul>" if warned else "") + _html_table(stage_table(stages))
    layers = layer_table(stages)
    if len(layers) > 1:
        table += "<h2>What each stage did, per layer</h2>" + _html_table(layers[: MAX_LAYER_ROWS + 1])
    recipe_yaml = html.escape(yaml.safe_dump(record["recipe"], sort_keys=False))
    table += f"<h2>Recipe</h2><pre>{recipe_yaml}</pre>"
    if evals:
        table += "<h2>Stored size per modality tower (MB)</h2>" + _html_table(tower_table(evals))
    summary = "".join(
        f"<li>{html.escape(s[2:]).replace('**', '')}</li>" for s in _summary(evals, metric) + _deployed(stages, metric)
    )
    images = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></figure>'
        for n, d in plots.items()
    )
    title = html.escape(f"mmcompress report: {_model_name(record)}")
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}"
        f"table{{border-collapse:collapse;font-size:13px}}</style></head><body><h1>{title}</h1>"
        f"<ul>{summary}</ul><h2>Stages</h2>{table}{images}"
        f"<p>Versions: {html.escape(json.dumps(record['versions']))}; seed {record['seed']}.</p></body></html>\n"
    )


def _model_name(record: dict) -> str:
    """The compressed model's name: its spec or class (older records: the recipe's model)."""
    return str(record.get("model_name") or record["recipe"].get("model") or "model")
