"""Build report.md and a self-contained report.html (plots embedded) from a run's record."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from mmcompress.core.io import atomic_write_bytes, atomic_write_text
from mmcompress.recipe.runner import read_record
from mmcompress.report.plots import accuracy_vs_size, size_per_modality

SIZE_KEYS = ("stored_bytes", "compression", "latency_ms", "nonzeros")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def primary_metric(stages: list[dict[str, Any]]) -> str | None:
    """The task metric the report plots (first evaluate stage's first non-size metric)."""
    for stage in stages:
        if stage["pass_name"] == "evaluate":
            for key in stage["metrics"]:
                if key not in SIZE_KEYS and not key.startswith(("stored_bytes", "params", "float32")):
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
    metric = record.get("primary_metric") or primary_metric(stages)
    plots: dict[str, bytes] = {}
    if evals and metric:
        points = [(s["label"], s["metrics"]["stored_bytes"] / 1e6, s["metrics"][metric]) for s in evals]
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
    ratio = first["stored_bytes"] / max(1.0, last["stored_bytes"])
    change = 100 * (last[metric] - first[metric])
    return [
        f"- Stored size: {first['stored_bytes'] / 1e6:.2f} MB -> {last['stored_bytes'] / 1e6:.2f} MB "
        f"(**{ratio:.2f}x smaller**)",
        f"- {metric}: {first[metric]:.4f} -> {last[metric]:.4f} ({change:+.2f} points)",
        f"- Latency (median, batch of 8): {first['latency_ms']:.1f} ms -> {last['latency_ms']:.1f} ms",
    ]


def _markdown(record, stages, evals, metric, plot_names) -> str:
    lines = [f"# mmcompress report: {_model_name(record)}", ""]
    lines += _summary(evals, metric) + [""]
    lines += ["## Stages", "", *_md_table(stage_table(stages)), ""]
    if evals:
        lines += ["## Stored size per modality tower (MB)", "", *_md_table(tower_table(evals)), ""]
    lines += [f"![{n}](plots/{n})" for n in plot_names]
    lines += ["", f"Versions: {json.dumps(record['versions'])}; seed {record['seed']}.", ""]
    return "\n".join(lines)


def _html(record, stages, evals, metric, plots) -> str:
    table = _html_table(stage_table(stages))
    if evals:
        table += "<h2>Stored size per modality tower (MB)</h2>" + _html_table(tower_table(evals))
    summary = "".join(f"<li>{html.escape(s[2:]).replace('**', '')}</li>" for s in _summary(evals, metric))
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
