"""Command-line interface: a thin layer over the library (reads argv and environment only here).
The group and shared options are in cli_common.py; each cli_*.py adds commands."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mmcompress import cli_auto, cli_bench, cli_compress, cli_distill  # noqa: F401  (register their commands)
from mmcompress.cli_common import (
    _check_run_of,
    _data_options,
    _force_option,
    _friendly,
    _run_option,
    _run_recipe,
    _run_specs,
    _spec_options,
    _table,
    cli,
    console,
    err_console,
    one_line_warnings,
)


@cli.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option(
    "--model", "model_spec", default=None,
    help="Model spec (built-in name, hf:DIR, st:DIR, py:FILE.py:FACTORY or a run folder); overrides the recipe's.",
)  # fmt: skip
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/default"),
    show_default=True,
    help="Output folder (report, record.json, weights, ONNX).",
)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Reuse finished stages.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_force_option
@_spec_options
@_data_options
@_friendly
def run(recipe, model_spec, out, resume, quiet, data_spec, task, adapter, data_dir, cache_dir, force):
    """Run RECIPE (YAML; default: the built-in recipe on fashion-clip) and write a report.

    Example: mmcompress run recipes/w8.yaml --model py:my_models.py:build --data py:my_data.py:load
    """
    from mmcompress.recipe.run_spec import recipe_for

    spec = recipe_for(recipe, model=model_spec, data=data_spec, task=task, adapter=adapter)
    _run_recipe(spec, str(recipe or "built-in default"), out, resume, quiet, data_dir, cache_dir, force)


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON ({model, metrics}) instead of a table.")
@_spec_options
@_data_options
@_friendly
def evaluate(model, run_dir, limit, as_json, data_spec, task, adapter, data_dir, cache_dir):
    """Evaluate MODEL (a spec or a run folder), or with --run a run's compressed version, on its test data.

    Example: mmcompress eval py:my_models.py:build --data py:my_data.py:load --task agreement --run runs/w8
    """
    from mmcompress.recipe.specs import is_run_folder, load_model_spec, read_record, resolve_workload

    _check_run_of(model, run_dir)
    record = read_record(model) if run_dir is None and is_run_folder(model) else {}
    if record.get("model_spec") and record.get("primary_metric") in ("agreement", "cosine"):
        model, run_dir = record["model_spec"], Path(model)  # compared with the original, not with itself
    data_spec, task, adapter = _run_specs(model, run_dir, data_spec, task, adapter)
    work = resolve_workload(model, data_spec, task, adapter=adapter, cache_dir=cache_dir, data_dir=data_dir,
                            test_limit=limit, progress=False)  # fmt: skip
    work.require_data("eval")
    net = load_model_spec(run_dir, cache_dir=cache_dir) if run_dir else work.model
    shown_run = run_dir or (model if is_run_folder(model) else None)  # a run folder evaluates its compressed model
    name = f"{work.name} (run {shown_run})" if shown_run else work.name
    metrics = work.task.evaluate(net, work.test)
    if as_json:
        click.echo(json.dumps({"model": name, "metrics": {k: float(v) for k, v in metrics.items()}}, indent=2))
    else:
        console.print(_table(f"{name} test metrics", metrics))


@cli.command(name="measure")
@click.argument("model")
@_run_option("Measure the compressed model of this run folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--data", "data_spec", default=None, help="Data spec for the latency batch (default: the adapter's).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, help="YAML describing the model's towers.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed calls (after 3 warm-up calls); a task that times something slower takes fewer.")  # fmt: skip
@_data_options
@_friendly
def measure_cmd(model, run_dir, as_json, data_spec, adapter, repeats, data_dir, cache_dir):
    """Parameters, non-zeros, stored bytes per modality tower, and latency of MODEL (a spec or a run folder).

    Example: mmcompress measure runs/quantize
    """
    import torch

    from mmcompress.evaluate.measure import measure
    from mmcompress.recipe.specs import load_model_spec, resolve_workload

    _check_run_of(model, run_dir)
    data_spec, task, _ = _run_specs(model, run_dir, data_spec, None, adapter)
    target = run_dir or model
    net = load_model_spec(target, pretrained=False, cache_dir=cache_dir, adapter=adapter)  # size needs no training
    example, timed = None, "batch 8"
    if data_spec:
        work = resolve_workload(net, data_spec, task, data_dir=data_dir, test_limit=8, progress=False)
        example = work.task.latency_call(work.test)  # e.g. a speech recognizer's transcription of one clip
        if example is None:
            example = work.task.batch(work.test, torch.arange(min(8, len(work.test))))[0]
            timed = f"batch {min(8, len(work.test))}"
        else:
            timed = example.what
    result = measure(net, example, repeats=repeats)
    original = _original_float_bytes(target, adapter, cache_dir)
    versus = original / result.total.stored_bytes if original and result.total.stored_bytes else None  # runs only
    if as_json:
        extra = {"original_float32_bytes": original, "compression_vs_original": versus} if original else {}
        extra.update({"latency_of": timed} if result.latency_ms else {})
        click.echo(json.dumps({**result.to_dict(), **extra}, indent=2))
        return
    against = f"; {versus:.2f}x against the original model's float32 size" if original else ""
    table = Table(title=f"{target}: size per modality (compression {result.compression:.2f}x{against})")
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
    from mmcompress.quant.modules import QUANT_MODULES

    if any(isinstance(m, QUANT_MODULES) for m in net.modules()):  # layers that hold integer codes
        table.caption = "non-zeros of quantized layers count their integer codes: codes that round to 0 are zeros too"
    console.print(table)
    if result.latency_ms:
        console.print(_table(f"latency (ms, {timed})", result.latency_ms))
    else:
        console.print("latency: not measured (no example inputs: give --data, or an adapter that builds them)")


def _original_float_bytes(target, adapter, cache_dir) -> int | None:
    """A run folder's uncompressed model's float32 bytes (structured pruning shrinks the float size
    measured on the run's own model); None for a plain model spec or a run without a model spec."""
    from mmcompress.evaluate.measure import measure
    from mmcompress.recipe.specs import is_run_folder, load_model_spec, read_record

    spec = read_record(target).get("model_spec") if is_run_folder(target) else None
    if not spec:
        return None
    return measure(load_model_spec(spec, pretrained=False, cache_dir=cache_dir, adapter=adapter)).total.float32_bytes


@cli.command()
def models() -> None:
    """List the built-in models."""
    from mmcompress.models.zoo import list_models, list_pretrained

    for name, desc in list_models().items():
        click.echo(f"{name:20s} {desc}")
    click.echo("\nPretrained, loaded as published (offline):")
    for name, desc in list_pretrained().items():
        click.echo(f"{name:20s} {desc}")
    click.echo("\nAny other model: hf:<folder or hub id>, st:<folder or id>, py:<module or file.py>:<factory>")


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


def main() -> None:
    """Console-script entry point; usage errors are one line on stderr with exit code 2."""
    warnings.showwarning = one_line_warnings(set())  # the console script only (tests record warnings)
    try:
        cli.main(prog_name="mmcompress", standalone_mode=False)
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx else "mmcompress"
        err_console.print(f"[red]error:[/red] {escape(err.format_message())} (see {command} --help)", highlight=False,
                          soft_wrap=True)  # fmt: skip
        sys.exit(2)
    except click.Abort:
        err_console.print(
            "[red]aborted[/red]: finished stages are kept in the output folder; the same command resumes after them"
        )
        sys.exit(130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
