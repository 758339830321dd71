"""Write one named section of docs/benchmarks.md (other sections are kept)."""

from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

import torch

from mmcompress.core.io import atomic_write_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script named in it; rerun the script to refresh it.\n"


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"


def update_section(name: str, body: str, path: Path | None = None) -> None:
    """Replace (or append) the block between `<!-- name -->` and `<!-- /name -->` (of docs/benchmarks.md,
    or of `path`)."""
    doc = path or DOC
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def table(rows: list[list[str]]) -> str:
    head, *rest = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rest])


def time_calls(run, warmup: int, repeats: int, budget_s: float | None = None) -> dict[str, float]:
    """`summarize` of `repeats` calls of `run` (ms) after `warmup` calls.

    With `budget_s`, stop early once that many seconds went into timed calls (at least 3 calls),
    so very slow runtimes do not take minutes.
    """
    import time

    with torch.inference_mode():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - start))
            if budget_s is not None and len(times) >= 3 and sum(times) > 1000 * budget_s:
                break
    return summarize(times)


def summarize(times: list[float]) -> dict:
    """Median, 10th and 90th percentile (ms) of call times, and the sorted times themselves."""
    import statistics

    times = sorted(times)
    return {
        "median": statistics.median(times),
        "p10": times[len(times) // 10],
        "p90": times[-1 - len(times) // 10],
        "times": times,
    }
