"""`mmcompress bench MODEL [--run DIR]`: latency, throughput and memory, original vs compressed."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mmcompress.cli_common import _data_options, _friendly, cli, console


@cli.command("bench")
@click.argument("model")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="A run folder: time its compressed model beside the original.")  # fmt: skip
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size; repeatable (default 1 and 32).")
@click.option("--runtime", "runtimes", type=click.Choice(["eager", "onnxruntime", "compile"]), multiple=True,
              help="Runtime; repeatable (default eager and onnxruntime).")  # fmt: skip
@click.option("--part", "parts", multiple=True, help="'model' or a tower name; repeatable (default: all).")
@click.option("--repeats", type=int, default=30, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per timed process [default: OMP_NUM_THREADS when set, else 2].")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bench"), show_default=True)
@click.option("--data", "data_spec", default=None, help="Data spec of the timed batches (default: the run's/model's).")
@click.option("--adapter", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="YAML naming the model's towers (a run's record already holds its adapter).")  # fmt: skip
@_data_options
@_friendly
def bench_cmd(
    model, run_dir, batches, runtimes, parts, repeats, warmup, threads, out, data_spec, adapter, data_dir, cache_dir
):
    """Time MODEL (a spec or a run folder; and a run's compressed version) per tower, runtime and batch.

    A tower of several modules is timed as the sum of its modules, each on the inputs it receives
    in a forward pass of the whole model.

    Example: mmcompress bench fashion-clip --run runs/quantize --batch 64
    """
    from rich.table import Table

    from mmcompress.evaluate.bench import bench

    threads = threads or default_threads()
    runtimes = tuple(runtimes) or ("eager", "onnxruntime")
    rows = bench(
        model, out, run_dir=run_dir, batches=tuple(batches) or (1, 32), runtimes=runtimes,
        parts=tuple(parts) or None, repeats=repeats, warmup=warmup, threads=threads,
        cache_dir=str(cache_dir) if cache_dir else None, data_dir=str(data_dir) if data_dir else None, data=data_spec,
        adapter=adapter,
    )  # fmt: skip
    table = Table(title=f"{model}: median latency, {threads} threads, each case in its own process")
    for column in (
        "variant",
        "part",
        "runtime",
        "batch",
        "median ms",
        "p10-p90 ms",
        "samples/s",
        "peak MB",
        "speed-up",
    ):
        table.add_column(column, justify="left" if column in ("variant", "part", "runtime") else "right")
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        spread = f"{r.p10_ms:.2f}-{r.p90_ms:.2f}"
        numbers = (f"{r.median_ms:.2f}", spread, f"{r.throughput:.0f}", f"{r.peak_rss_mb:.0f}", speedup)
        table.add_row(r.variant, r.part, r.runtime, str(r.batch), *numbers)
    console.print(table)
    console.print(f"[green]done[/green]: {out / 'bench.json'}, {out / 'bench.png'}")


def default_threads() -> int:
    """OMP_NUM_THREADS when it is a positive integer (a user who set it for a shared machine means it:
    2 threads on 2 busy cores timed float MobileNetV2 at 2.1 s instead of 38 ms), else 2.

    Example:
        >>> default_threads() >= 1
        True
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 2
