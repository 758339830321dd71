"""What every CLI command shares: the click group, one-line errors, common options, the recipe runner's
per-stage tables. Commands live in cli.py and cli_*.py."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmcompress.core.io import check_writable
from mmcompress.errors import ConfigError, MMCompressError

PIPE_WIDTH = 160  # columns when output goes to a file or pipe (rich's default 80 truncated the bench table)
console = Console(stderr=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)


def _friendly(fn):
    """Turn library errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_folders(kwargs)
            with third_party_bars_off() if kwargs.get("quiet") else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except MMCompressError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


def one_line_warnings(shown: set):
    """warnings.showwarning for the console: 'warning: <message>' once per distinct message (a search
    repeats its trials' warnings), without Python's file and source line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text in shown:
            return
        shown.add(text)
        err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)

    return show


@contextlib.contextmanager
def third_party_bars_off():
    """`--quiet` silences the progress bars of Hugging Face libraries too ("Loading weights", downloads):
    through the environment for those not imported yet (they stay silent in this process: huggingface_hub
    reads the variable once), their switches for those already imported (restored afterwards)."""
    before = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    switches = _imported_bar_switches()
    were_on = {name: is_on() for name, (is_on, _, _) in switches.items()}
    for _, _, off in switches.values():
        off()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = before
        for name, (_, on, _) in switches.items():
            if were_on[name]:
                on()


def _imported_bar_switches() -> dict[str, tuple]:
    """Library -> (is_on, on, off) for the progress bars of transformers and huggingface_hub where imported."""
    switches = {}
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub

        hub_on = lambda: not hub.are_progress_bars_disabled()  # noqa: E731
        switches["huggingface_hub"] = (hub_on, hub.enable_progress_bars, hub.disable_progress_bars)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf

        switches["transformers"] = (tf.is_progress_bar_enabled, tf.enable_progress_bar, tf.disable_progress_bar)
    return switches


def _check_folders(options: dict) -> None:
    """Folders the user names must be what they say, before any work (no silent fallback)."""
    data_dir = options.get("data_dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data folder {data_dir} does not exist (from --data-dir or MMCOMPRESS_DATA)")
    cache_dir = options.get("cache_dir")
    if cache_dir is not None:
        check_writable(cache_dir, "--cache-dir (or MMCOMPRESS_CACHE)")


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


def _force_option(fn):
    return click.option(
        "--force", is_flag=True,
        help="Replace a run of another recipe in --out (stages the recipes share are kept, the rest deleted).",
    )(fn)  # fmt: skip


def _spec_options(fn):
    """--data / --task / --adapter: what a model that is not built-in is measured on."""
    fn = click.option(
        "--adapter", type=click.Path(path_type=Path), default=None,
        help="YAML describing the model's towers (towers: {image: [backbone], text: [encoder]}).",
    )(fn)  # fmt: skip
    fn = click.option(
        "--task", default=None,
        help="classification | agreement (top-1 vs the float model, no labels) | cosine | wer (speech "
        "recognizers on recordings with transcripts: --data real-speech) | py:FILE.py:FACTORY.",
    )(fn)  # fmt: skip
    fn = click.option(
        "--data", "data_spec", default=None,
        help="Built-in dataset name or py:FILE.py:FACTORY returning (train, test[, task]). "
        "Default: a built-in model's own dataset.",
    )(fn)  # fmt: skip
    return fn


def _run_recipe(
    spec, label: str, out: Path, resume: bool, quiet: bool, data_dir, cache_dir, force: bool = False
) -> None:
    """Check the output folder, resolve model and data, check the recipe, run the stages (a table each)."""
    from mmcompress.core.io import check_writable
    from mmcompress.recipe.run_spec import run_recipe
    from mmcompress.recipe.specs import check_model_spec

    check_model_spec(spec.model)
    check_writable(out)
    console.print(f"[bold]recipe[/bold] {label}: model {spec.model}, {len(spec.stages)} stages -> {out}")

    def show(stage) -> None:
        metrics = {k: v for k, v in stage.metrics.items() if not k.startswith("stored_bytes.")}
        note = " (resumed)" if stage.resumed else f" ({stage.seconds:.1f}s)"
        console.print(_table(f"stage {stage.index}: {stage.label}{note}", metrics))

    run_recipe(spec, out, data_dir=data_dir, cache_dir=cache_dir, resume=resume, progress=not quiet, on_stage=show,
               force=force)  # fmt: skip
    console.print(f"[green]done[/green]: {out / 'report.html'}, {out / 'report.md'}, {out / 'record.json'}")


def _check_run_of(model: str, run_dir: Path | None) -> None:
    """A run compared with MODEL must have compressed MODEL."""
    from mmcompress.recipe.runner import absolute_spec
    from mmcompress.recipe.specs import is_run_folder, read_record

    if run_dir is None:
        return
    spec = read_record(run_dir).get("model_spec")
    if spec and not is_run_folder(model) and absolute_spec(spec) != absolute_spec(model):
        raise ConfigError(f"run {run_dir} compressed {spec!r}, not {model!r}")


def _run_specs(model: str, run_dir: Path | None, data_spec, task, adapter) -> tuple:
    """(data, task, adapter) with the run's recorded ones where the command line gives none: a run
    folder (MODEL or --run) remembers what it was compressed and measured on."""
    from mmcompress.recipe.specs import is_run_folder, read_record

    folder = run_dir if run_dir is not None else model if is_run_folder(model) else None
    if folder is None:
        return data_spec, task, adapter
    record = read_record(folder)
    recipe = record.get("recipe") or {}
    data_spec = data_spec or recipe.get("dataset")
    task = task or recipe.get("task")
    adapter = adapter if adapter is not None else record.get("adapter")
    return data_spec, task, adapter
