"""Matplotlib plots for the report (Agg backend, PNG bytes out)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    return _png(fig)


def size_per_modality(stages: list[str], towers: dict[str, list[float]]) -> bytes:
    """Stacked bars: stored MB per modality tower for each evaluated stage.

    Example:
        >>> png = size_per_modality(["baseline", "compressed"], {"text": [90.0, 18.0], "image": [0.1, 0.02]})
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(stages)
    for tower, values in towers.items():
        ax.bar(stages, values, bottom=bottom, label=tower)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("stored size (MB)")
    ax.set_title("size per modality tower")
    ax.legend()
    return _png(fig)
