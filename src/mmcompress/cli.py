"""Command-line interface: a thin layer over the library (reads argv and environment only here)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mmcompress.errors import MMCompressError

console = Console(stderr=False)
err_console = Console(stderr=True)


def _friendly(fn):
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MMCompressError as err:
            err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


def _data_options(fn):
    fn = click.option(
        "--data-dir",
        envvar="MMCOMPRESS_DATA",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder searched first for dataset files (env MMCOMPRESS_DATA).",
    )(fn)
    fn = click.option(
        "--cache-dir",
        envvar="MMCOMPRESS_CACHE",
        type=click.Path(path_type=Path),
        default=None,
        help="Trained-model cache (env MMCOMPRESS_CACHE; default ~/.cache/mmcompress).",
    )(fn)
    return fn


def _run_option(help_text: str):
    return click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None, help=help_text)


def _table(title: str, rows: dict[str, object]) -> Table:
    table = Table(title=title, show_header=True, min_width=len(title) + 4)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmcompress")
def cli() -> None:
    """mmcompress: make multimodal models small and fast while keeping them accurate."""


@cli.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/default"),
    show_default=True,
    help="Output folder (report, record.json, weights, ONNX).",
)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Reuse finished stages.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_data_options
@_friendly
def run(recipe: Path | None, out: Path, resume: bool, quiet: bool, data_dir: Path | None, cache_dir: Path | None):
    """Run RECIPE (YAML; default: the built-in recipe on fashion-clip) and write a report."""
    from mmcompress.recipe.schema import load_recipe

    _run_recipe(load_recipe(recipe), str(recipe or "built-in default"), out, resume, quiet, data_dir, cache_dir)


def _run_recipe(spec, label: str, out: Path, resume: bool, quiet: bool, data_dir, cache_dir) -> None:
    """Validate, check the output folder, run the stages with a table per stage."""
    from mmcompress.core.io import check_writable
    from mmcompress.models.zoo import get_spec
    from mmcompress.recipe.builtin_run import run_recipe

    get_spec(spec.model)
    check_writable(out)
    console.print(f"[bold]recipe[/bold] {label}: model {spec.model}, {len(spec.stages)} stages -> {out}")

    def show(stage) -> None:
        metrics = {k: v for k, v in stage.metrics.items() if not k.startswith("stored_bytes.")}
        note = " (resumed)" if stage.resumed else f" ({stage.seconds:.1f}s)"
        console.print(_table(f"stage {stage.index}: {stage.label}{note}", metrics))

    run_recipe(spec, out, data_dir=data_dir, cache_dir=cache_dir, resume=resume, progress=not quiet, on_stage=show)
    console.print(f"[green]done[/green]: {out / 'report.html'}, {out / 'report.md'}, {out / 'record.json'}")


@cli.command()
@click.argument("model")
@click.option("--epochs", type=int, default=None, help="Override the model's training epochs.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--limit", type=int, default=None, help="Train on the first N samples only.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Per-epoch checkpoints here (resumed if present) and metrics.json.",
)
@click.option("--quiet", is_flag=True)
@_data_options
@_friendly
def train(model, epochs, batch_size, lr, amp, seed, limit, out, quiet, data_dir, cache_dir):
    """Train a built-in MODEL (cached; works under `torchrun --nproc_per_node=N -m mmcompress train`)."""
    from mmcompress.models.zoo import get_spec, load_model
    from mmcompress.train.distributed import init_from_env, world

    init_from_env()
    spec = get_spec(model)
    overrides = {
        k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, amp=amp, seed=seed).items() if v is not None
    }
    config = spec.train.model_copy(update=overrides)
    config = type(config).from_dict(config.to_dict())  # re-validate overrides
    trained = load_model(
        model,
        cache_dir=cache_dir,
        data_dir=data_dir,
        train=config,
        train_limit=limit,
        progress=not quiet,
        retrain=True,
        checkpoint_dir=out,
    )
    metrics = trained.mmcompress_info["metrics"]
    if world()[0] == 0:
        if out is not None:
            from mmcompress.core.io import atomic_write_json

            atomic_write_json(out / "metrics.json", {"metrics": metrics, "world_size": world()[1]})
        console.print(_table(f"{model} (test set, {world()[1]} process(es))", metrics))


@cli.command(name="eval")
@click.argument("model")
@_run_option("Evaluate the compressed model of this run folder instead of the baseline.")
@click.option("--limit", type=int, default=None, help="Evaluate on the first N test samples.")
@_data_options
@_friendly
def evaluate(model, run_dir, limit, data_dir, cache_dir):
    """Evaluate a built-in MODEL (or a run's compressed version) on its test set."""
    from mmcompress.data.registry import load_dataset
    from mmcompress.models.zoo import get_spec, task_for

    net = _load(model, run_dir, data_dir, cache_dir)
    test = load_dataset(get_spec(model).dataset, "test", data_dir=data_dir, limit=limit)
    console.print(_table(f"{model} test metrics", task_for(net, test).evaluate(net, test)))


def _load(model: str, run_dir: Path | None, data_dir, cache_dir, trained: bool = True):
    """The baseline (trained or cached), or a run's compressed model (its own weights: no training)."""
    from mmcompress.models.zoo import build_model, load_model
    from mmcompress.recipe.runner import load_run

    if run_dir:
        return load_run(run_dir, build_model(model))
    return load_model(model, cache_dir=cache_dir, data_dir=data_dir, pretrained=trained)


@cli.command(name="measure")
@click.argument("model")
@_run_option("Measure the compressed model of this run folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_data_options
@_friendly
def measure_cmd(model, run_dir, as_json, data_dir, cache_dir):
    """Parameters, non-zeros, stored bytes per modality tower, and latency of MODEL."""
    from mmcompress.evaluate.measure import measure

    result = measure(_load(model, run_dir, data_dir, cache_dir, trained=False))  # size needs no training
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title=f"{model}: size per modality (compression {result.compression:.2f}x)")
    for col in ("tower", "params", "non-zeros", "stored MB", "float32 MB"):
        table.add_column(col, justify="right")
    for name, size in [*result.per_modality.items(), ("total", result.total)]:
        table.add_row(
            name,
            f"{size.params:,}",
            f"{size.nonzeros:,}",
            f"{size.stored_bytes / 1e6:.3f}",
            f"{size.float32_bytes / 1e6:.3f}",
        )
    console.print(table)
    if result.latency_ms:
        console.print(_table("latency (ms, batch 8)", result.latency_ms))
    else:
        console.print("latency: not measured (the model's adapter gives no example inputs)")


@cli.command()
def models() -> None:
    """List the built-in models."""
    from mmcompress.models.zoo import list_models

    for name, desc in list_models().items():
        click.echo(f"{name:16s} {desc}")


@cli.command()
def datasets() -> None:
    """List the built-in datasets."""
    from mmcompress.data.registry import list_datasets

    for name, desc in list_datasets().items():
        click.echo(f"{name:18s} {desc}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_friendly
def report(run_dir: Path) -> None:
    """(Re)write report.md and report.html of RUN_DIR from its record.json."""
    from mmcompress.report.render import write_report

    md, page = write_report(run_dir)
    console.print(f"wrote {md} and {page}")


from mmcompress import cli_auto, cli_bench, cli_compress, cli_distill  # noqa: E402,F401  (register the commands)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mmcompress")
