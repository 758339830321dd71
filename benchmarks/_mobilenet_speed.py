"""MobileNetV2 on ONNX Runtime: latency of float / peer / mmcompress files side by side (`mobilenet_v2.py --speed`).

Each (file, batch) is timed in its own process (`python _mobilenet_speed.py PATH BATCH THREADS`
prints the median ms), the files alternate within every round, and the table reports the median
over rounds with the spread of the round medians.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FLAGS = re.compile(r"\b(avx512[a-z_0-9]*|avx2|avx_vnni|amx[a-z_0-9]*)\b")


def cpu_flags() -> str:
    """The vector / matrix CPU flags that decide ONNX Runtime's int8 kernels (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return " ".join(sorted(set(FLAGS.findall(text)))) or "none of avx2/avx512/vnni/amx"


def worker(path: str, batch: int, threads: int) -> None:
    """Print the median latency (ms) of one ONNX file at one batch size."""
    from mmcompress.graph.runtime import OrtModel

    model = OrtModel.from_path(path, threads=threads)
    crops = np.load(Path(path).parent / "crops.npy")
    feed = {"input": np.ascontiguousarray(crops[np.arange(batch) % len(crops)])}
    for _ in range(3):
        model.run(feed)
    times, stop = [], time.perf_counter() + (3.0 if batch == 1 else 6.0)
    while len(times) < 5 or time.perf_counter() < stop:
        start = time.perf_counter()
        model.run(feed)
        times.append(1000 * (time.perf_counter() - start))
    print(json.dumps(statistics.median(times)))


def time_files(files: dict[str, Path], batch: int, rounds: int, threads: int) -> dict[str, dict]:
    """Median (and min / max of the round medians) ms per file, the files alternating in each round."""
    got: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            cmd = [sys.executable, __file__, str(path), str(batch), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE)
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in got.items()}


def speed_table(files: dict[str, Path], agreement: dict[str, str], rounds: int, threads: int) -> list[list[str]]:
    """Rows: file, agreement, then per batch size the median ms (round spread) and the speed-up vs float."""
    rows = [["ONNX file", "top-1 agreement vs float", "batch 1 ms (spread)", "vs float", "batch 32 ms (spread)",
             "vs float"]]  # fmt: skip
    results = {}
    for batch in (1, 32):
        chosen = {n: p for n, p in files.items() if batch == 1 or "integer" not in n}  # ConvInteger: batch 1 only
        results[batch] = time_files(chosen, batch, rounds, threads)
        print(f"batch {batch}:", json.dumps(results[batch]), flush=True)
    base = next(iter(files))
    for name in files:
        cells = [name, agreement.get(name, "")]
        for batch in (1, 32):
            r = results[batch].get(name)
            if r is None:
                cells += ["not timed", ""]
                continue
            ratio = results[batch][base]["median"] / r["median"]
            cells += [f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f})", f"{ratio:.2f}x"]
        rows.append(cells)
    return rows


def scratch_dir(crops) -> Path:
    """A temporary folder holding the timing inputs (the first 32 test crops)."""
    tmp = Path(tempfile.mkdtemp(prefix="mobilenet_speed_"))
    np.save(tmp / "crops.npy", crops[:32].numpy())
    return tmp


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
