"""Matplotlib plots for the report (Agg backend, PNG bytes out)."""

from __future__ import annotations

import io

from mmcompress.core.extras import require

matplotlib = require("matplotlib", "report", "the report's plots")
matplotlib.use("Agg")
plt = require("matplotlib.pyplot", "report", "the report's plots")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def accuracy_vs_size(points: list[tuple[str, float, float]], metric: str) -> bytes:
    """Scatter of (label, stored MB, metric) per evaluated stage, connected in stage order.

    Example:
        >>> png = accuracy_vs_size([("baseline", 91.2, 0.89), ("compressed", 18.9, 0.885)], "accuracy")
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ax.plot(xs, ys, "-o", color="tab:blue")
    for label, x, y in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("stored size (MB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs stored size")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.2)
    low, high = min(ys), max(ys)
    if high - low < 0.1:  # a 0.02-point change must not look like a cliff: show at least 10 points
        middle = (high + low) / 2
        ax.set_ylim(middle - 0.06, middle + 0.06)
    return _png(fig)


def size_per_modality(stages: list[str], towers: dict[str, list[float]]) -> bytes:
    """Grouped bars (log scale, labelled): stored MB of each modality tower at each evaluated stage.

    Example:
        >>> png = size_per_modality(["baseline", "compressed"], {"text": [90.0, 18.0], "image": [0.1, 0.02]})
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(towers)
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        xs = [t + i * width for t in range(len(names))]
        values = [towers[n][i] for n in names]
        bars = ax.bar(xs, values, width=width, label=stage)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
    ax.set_xticks([t + width * (len(stages) - 1) / 2 for t in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("stored size (MB, log scale)")
    ax.set_title("size per modality tower")
    ax.legend()
    return _png(fig)


def layer_errors(names: list[str], before: list[float], after: list[float], towers: list[str]) -> bytes:
    """Per-layer relative output error (log scale) at the default step and after the step search.

    Example:
        >>> png = layer_errors(["fc1", "fc2"], [1e-3, 4e-3], [8e-4, 2e-3], ["text", "text"])
    """
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
    xs = range(len(names))
    colors = {t: f"C{i}" for i, t in enumerate(sorted(set(towers)))}
    ax.bar(xs, before, color=[colors[t] for t in towers], alpha=0.45, label="min/max step")
    ax.scatter(xs, after, color="black", marker="_", s=80, label="searched step", zorder=3)
    for tower, color in colors.items():
        ax.bar([0], [0], color=color, label=f"tower: {tower}")
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
    ax.set_ylabel("relative output error")
    ax.set_title("quantization error per layer")
    ax.legend(fontsize=7)
    return _png(fig)


def sensitivity_heatmap(names: list[str], bits: list[int], errors: list[list[float]], chosen: list[int]) -> bytes:
    """Layers x bit widths heatmap of relative output error (log colour), chosen bits marked.

    Example:
        >>> png = sensitivity_heatmap(["fc1", "fc2"], [2, 4, 8], [[0.1, 0.01, 1e-4], [0.2, 0.02, 2e-4]], [4, 8])
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    data = np.array(errors).T  # (bits, layers)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 2.5 + 0.3 * len(bits)))
    image = ax.imshow(np.clip(data, 1e-8, None), aspect="auto", norm=LogNorm(), cmap="viridis")
    ax.scatter(range(len(names)), [bits.index(b) for b in chosen], color="red", marker="x", label="chosen")
    ax.set_yticks(range(len(bits)), [f"{b} bits" for b in bits])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_title("per-layer sensitivity (relative output error)")
    fig.colorbar(image, ax=ax)
    ax.legend(fontsize=7)
    return _png(fig)
