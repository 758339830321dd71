"""The auto-compression report (Markdown + HTML): Pareto plot, per-layer sensitivity per tower,
size and latency before/after, robustness, and a recommendation derived from the measurements."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from mmcompress.auto.robustness import robustness_rows
from mmcompress.auto.search import AutoResult
from mmcompress.core.io import atomic_write_bytes
from mmcompress.report.plots import _png, plt, sensitivity_heatmap
from mmcompress.report.render import _html_table, _md_table


def pareto_plot(result: AutoResult) -> bytes:
    """Size vs metric of every finished trial (colour: ORT latency); frontier ringed, choice starred."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [i for i, t in enumerate(result.trials) if t.ok]
    xs = [result.trials[i].metrics["size_mb"] for i in ok]
    ys = [result.trials[i].metrics["metric"] for i in ok]
    lat = [result.trials[i].metrics["latency_ms"] for i in ok]
    dots = ax.scatter(xs, ys, c=lat, cmap="viridis", s=30, label="trials")
    front = [result.trials[i].metrics for i in ok if i in result.frontier]
    fx, fy = [f["size_mb"] for f in front], [f["metric"] for f in front]
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="red", label="Pareto frontier")
    if result.chosen is not None:
        m = result.trials[result.chosen].metrics
        ax.scatter([m["size_mb"]], [m["metric"]], marker="*", s=300, color="orange", label="chosen")
    sign = result.baseline.get("higher_is_better", 1.0)  # -1: lower is better (WER): the limit lies above
    ax.axhline(result.baseline["metric"] - sign * result.constraints.max_drop / 100, color="gray", ls="--",
               label="max drop")  # fmt: skip
    ax.scatter([result.baseline["size_mb"]], [result.baseline["metric"]], marker="s", color="black", label="float32")
    ax.set_xscale("log")
    ax.set_xlabel("stored size (MB, log)")
    ax.set_ylabel("task metric")
    fig.colorbar(dots, ax=ax, label="ONNX Runtime latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def drop_points(baseline: dict[str, float], metric: float) -> float:
    """Points lost against the baseline: positive is worse, for a lower-is-better metric (WER) too.

    Example:
        >>> round(drop_points({"metric": 0.12, "higher_is_better": -1.0}, 0.10), 6)   # WER 0.12 -> 0.10
        -2.0
    """
    return 100 * baseline.get("higher_is_better", 1.0) * (baseline["metric"] - metric)


def trial_table(result: AutoResult) -> list[list[str]]:
    rows = [["#", "plan", "MB", "ms", "metric", "drop (pt)", "frontier", "status"]]
    for i, t in enumerate(result.trials):
        m = t.metrics
        drop = f"{drop_points(result.baseline, m['metric']):+.2f}" if t.ok else "-"
        rows.append([
            str(i + 1), t.plan.describe(), f"{m['size_mb']:.2f}" if t.ok else "-",
            f"{m['latency_ms']:.1f}" if t.ok else "-", f"{m['metric']:.4f}" if t.ok else "-", drop,
            "yes" if i in result.frontier else "",
            ("chosen" if i == result.chosen else "ok") if t.ok else f"failed: {t.error}",
        ])  # fmt: skip
    return rows


def tower_table(result: AutoResult, before_mb: dict[str, float]) -> list[list[str]]:
    rows = [["tower", "float32 MB", "chosen MB", "chosen setting", "4-bit alone (pt)", "3-bit alone (pt)"]]
    chosen = result.trials[result.chosen] if result.chosen is not None else None
    for tower, mb in sorted(before_mb.items()):
        setting = chosen.plan.towers.get(tower) if chosen else None
        drops = result.space.sensitivity.get(tower, {})
        rows.append([
            tower, f"{mb:.2f}", f"{chosen.metrics.get(f'mb.{tower}', float('nan')):.2f}" if chosen else "-",
            setting.describe() if setting else "-",
            f"{drops[4]:+.2f}" if 4 in drops else "-", f"{drops[3]:+.2f}" if 3 in drops else "-",
        ])  # fmt: skip
    if chosen:
        base, m = result.baseline, chosen.metrics
        before = f"{base['size_mb']:.2f} MB, {base['latency_ms']:.1f} ms ORT"
        after = f"{m['size_mb']:.2f} MB, {m['latency_ms']:.1f} ms ORT"
        rows.append(["whole model", before, after, chosen.plan.describe(), "-", "-"])
    return rows


def recommendation(result: AutoResult) -> list[str]:
    """Sentences derived from the measurements: the choice, what each tower tolerated, uniform vs per-modality."""
    base = result.baseline
    lines = []
    if result.chosen is None:
        return [result.message]
    t = result.trials[result.chosen]
    m, where = t.metrics, "test subset"
    verified = result.extra.get("verified") or {}
    check = next((c for c in verified.get("checks", []) if c["trial"] == result.chosen), None)
    if check:  # the full-test re-run of the chosen plan
        m, where = check["metrics"], "full test set"
        base = {**base, "metric": verified["baseline"]["metric"]}
    lines.append(
        f"Chosen plan: {t.plan.describe()} — {base['size_mb'] / m['size_mb']:.1f}x smaller "
        f"({m['size_mb']:.2f} MB), {base['latency_ms'] / m['latency_ms']:.2f}x the float32 ONNX Runtime speed, "
        f"metric {m['metric']:.4f} on the {where} ({drop_points(base, m['metric']):+.2f} points drop; limit "
        f"{result.constraints.max_drop:.2f}). It is the smallest of the plans that meet every constraint."
    )
    for tower, drops in sorted(result.space.sensitivity.items()):
        allowed = result.space.towers.get(tower)
        kept = [b for b in (4, 3) if allowed and b in allowed.bits]
        lines.append(
            f"{tower} tower: quantized alone it loses {drops.get(4, float('nan')):+.2f} points at 4 bits and "
            f"{drops.get(3, float('nan')):+.2f} at 3 bits, so the search tried "
            f"{', '.join(f'{b}-bit' for b in kept) or 'no sub-8-bit width'} for it."
        )
    feasible = [x for x in result.trials if x.ok and max(result.constraints.violations(x.metrics, base).values()) <= 0]
    uniform = [x for x in feasible if x.plan.is_uniform()]
    if uniform:
        best = min(uniform, key=lambda x: x.metrics["size_mb"])
        lines.append(
            f"Best uniform plan within the constraints ({best.plan.describe()}): {best.metrics['size_mb']:.2f} MB, "
            f"metric {best.metrics['metric']:.4f}; the per-modality choice is "
            f"{best.metrics['size_mb'] / m['size_mb']:.2f}x smaller."
        )
    failed = sum(not x.ok for x in result.trials)
    if failed:
        lines.append(f"{failed} trial(s) failed (errors in the table) and were skipped.")
    return lines


def write_auto_report(result: AutoResult, out_dir: str | Path, before_mb: dict[str, float],
                      robustness: dict | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Write `auto_report.md` and `auto_report.html` (plots embedded in the HTML, PNGs beside the Markdown).

    Example:
        >>> write_auto_report(result, "runs/auto", {"image": 0.09, "text": 90.9})
    """
    out = Path(out_dir)
    plots = {"pareto.png": pareto_plot(result)}
    for tower, layers in sorted(result.space.layer_sensitivity.items()):
        names = sorted(layers)
        bits = sorted({b for row in layers.values() for b in row})
        chosen_bits = result.trials[result.chosen].plan.towers.get(tower) if result.chosen is not None else None
        marked = [chosen_bits.bits if chosen_bits and chosen_bits.bits in bits else max(bits)] * len(names)
        errors = [[layers[n].get(b, float("nan")) for b in bits] for n in names]
        plots[f"sensitivity-{tower}.png"] = sensitivity_heatmap(names, bits, errors, marked)
    for name, data in plots.items():
        atomic_write_bytes(out / name, data)
    tables = {"Towers before / after": tower_table(result, before_mb), "All trials": trial_table(result)}
    if robustness:
        tables["Robustness (task metrics under corruption)"] = robustness_rows(robustness)
    advice = recommendation(result)
    md = ["# mmcompress auto", "", *[f"- {line}" for line in advice], ""]
    notes = result.extra.get("robustness_notes") or []
    for title, rows in tables.items():
        md += [f"## {title}", "", *_md_table(rows), ""]
        if title.startswith("Robustness"):
            md += [*(f"- {note}" for note in notes), ""] if notes else []
    md += [f"![{n}]({n})" for n in plots]
    page = "".join(f"<h2>{html.escape(t)}</h2>{_html_table(r)}" for t, r in tables.items())
    page += "".join(f"<p>{html.escape(note)}</p>" for note in notes if robustness)
    images = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></figure>'
                     for n, d in plots.items())  # fmt: skip
    items = "".join(f"<li>{html.escape(line)}</li>" for line in advice)
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mmcompress auto</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px}"
        f"table{{border-collapse:collapse;font-size:12px}}</style></head><body><h1>mmcompress auto</h1><ul>{items}</ul>"
        f"{page}{images}</body></html>\n"
    )
    md_path, html_path = out / "auto_report.md", out / "auto_report.html"
    atomic_write_bytes(md_path, "\n".join(md).encode())
    atomic_write_bytes(html_path, doc.encode())
    return md_path, html_path


def summary_dict(result: AutoResult) -> dict[str, Any]:
    """JSON-able summary: baseline, constraints, chosen index, frontier, every trial."""
    return {
        "baseline": result.baseline,
        "constraints": result.constraints.__dict__,
        "chosen": result.chosen,
        "message": result.message,
        "frontier": result.frontier,
        "trials": [t.to_dict() for t in result.trials],
        "sensitivity": {k: {str(b): v for b, v in d.items()} for k, d in result.space.sensitivity.items()},
    }
