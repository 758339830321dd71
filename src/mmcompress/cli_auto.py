"""`mmcompress auto MODEL --max-drop 1.0 [--max-size MB] [--max-latency MS] [--time-budget MIN]`."""

from __future__ import annotations

from pathlib import Path

import click

from mmcompress.cli_common import _data_options, _friendly, _spec_options, cli, console
from mmcompress.errors import MMCompressError


@cli.command("auto")
@click.argument("model")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Largest metric drop, in points.")
@click.option("--max-size", type=float, default=None, help="Largest stored size, MB.")
@click.option("--max-latency", type=float, default=None, help="Largest ONNX Runtime latency (batch 32), ms.")
@click.option("--time-budget", type=float, default=20.0, show_default=True, help="Minutes; no trial starts after.")
@click.option("--trials", "max_trials", type=int, default=None, help="Stop after this many trials.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Trials evaluated at once.")
@click.option("--backend", type=click.Choice(["process", "ray"]), default="process", show_default=True,
              help="Local worker processes, or Ray tasks (pip install 'mmcompress[ray]').")  # fmt: skip
@click.option("--test-limit", type=int, default=2000, show_default=True, help="Test samples per trial.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-robustness", is_flag=True, help="Skip the corruption table.")
@click.option("--tune-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Let quantized plans be distillation-tuned for N steps (0: never).")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/auto"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress output.")
@_spec_options
@_data_options
@_friendly
def auto_cmd(model, max_drop, max_size, max_latency, time_budget, max_trials, jobs, backend, test_limit, seed,
             no_robustness, tune_steps, out, quiet, data_spec, task, adapter, data_dir, cache_dir):  # fmt: skip
    """Search per-modality compression plans of MODEL (a spec) under constraints; write the chosen recipe and a report.

    Trials are cached under OUT/trials: running the same command again resumes the search.

    Example: mmcompress auto fashion-clip --max-drop 1.0 --max-size 11 --time-budget 20
    """
    from mmcompress.auto.api import auto_compress

    result = auto_compress(
        model, out, data=data_spec, task=task, adapter=adapter, max_drop=max_drop, max_size_mb=max_size,
        max_latency_ms=max_latency,
        time_budget_min=time_budget, max_trials=max_trials, jobs=jobs, backend=backend, seed=seed,
        test_limit=test_limit,
        check_robustness=not no_robustness, progress=not quiet, cache_dir=cache_dir, data_dir=data_dir,
        tune_steps=tune_steps,
    )  # fmt: skip
    done = sum(t.ok for t in result.trials)
    console.print(f"{len(result.trials)} plans evaluated ({done} finished), {len(result.frontier)} on the frontier")
    console.print(f"report: {result.extra['report'][1]}")
    if result.chosen is None:
        raise MMCompressError(result.message)
    console.print(
        f"[green]{result.message}[/green]\nrecipe: {result.recipe_path} (mmcompress run {result.recipe_path})"
    )
