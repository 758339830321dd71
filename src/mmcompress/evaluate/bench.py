"""`mmcompress bench`: latency (warm-up, median, p10/p90), throughput and peak memory of a model
and of each of its towers, original and compressed side by side, on PyTorch eager, ONNX Runtime
and optionally torch.compile, at several batch sizes. Every case runs in its own process."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.core.io import atomic_write_json, ensure_writable_dir
from mmcompress.errors import ConfigError, MMCompressError, ModelError
from mmcompress.models.adapter import adapter_for, attach_adapter

RUNTIMES = ("eager", "onnxruntime", "compile")


@dataclass
class BenchRow:
    """One timed case; `speedup` is original median / this median (same part, runtime, batch)."""

    variant: str
    part: str
    runtime: str
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput: float  # samples per second
    peak_rss_mb: float
    speedup: float | None = None


def load_part(
    model_spec: str, run_dir: str | None, variant: str, part: str, cache_dir: str | None = None, adapter=None
) -> list[nn.Module]:
    """The modules a part runs, in forward order: `[model]` for `part="model"`, else the tower's
    module(s) of the run's compressed model or of the original (the baseline the run started from,
    or the model the spec names without a run).

    Example:
        >>> load_part("fashion-clip", None, "original", "image")   # [the trained baseline's image tower]
    """
    from mmcompress.models.zoo import MODELS
    from mmcompress.recipe.schema import Recipe, baseline_train_config
    from mmcompress.recipe.specs import load_model_spec, read_record

    if variant == "compressed":
        model = load_model_spec(run_dir, cache_dir=cache_dir)
    elif run_dir and model_spec in MODELS:  # the baseline trained exactly as the run's was
        recipe = Recipe.from_dict(read_record(run_dir)["recipe"], "record.recipe")
        model = load_model_spec(model_spec, cache_dir=cache_dir, progress=False, train=baseline_train_config(recipe),
                                train_limit=recipe.data.train_limit)  # fmt: skip
    else:
        model = load_model_spec(model_spec, cache_dir=cache_dir, progress=False)
    if adapter is not None:
        attach_adapter(model, adapter)
    model.eval()
    return [model] if part == "model" else [model.get_submodule(m) for m in tower_modules(model)[part]]


def tower_modules(model: nn.Module) -> dict[str, list[str]]:
    """Tower name -> the outermost modules it is made of (from the model's adapter; towers naming a
    module the model lacks are left out). A tower of several modules is timed module by module,
    each on the inputs it receives in a forward pass of the whole model, and the times summed.

    Example:
        >>> tower_modules(model)   # {"image": ["image"], "text": ["embed", "text"]}
    """
    names = dict(model.named_modules())
    towers = {}
    for tower, mods in adapter_for(model).towers.items():
        if mods and all(m in names for m in mods):
            towers[tower] = [m for m in mods if not any(m.startswith(o + ".") for o in mods if o != m)]
            if _holds_every_parameter(model, towers[tower]):  # the tower is the model (a sentence encoder's
                towers[tower] = [""]  # `st`, fed one dict): timed on the model's own inputs ("" names the root)
    return towers


def _holds_every_parameter(model: nn.Module, module_names: list[str]) -> bool:
    inside = {id(p) for name in module_names for p in model.get_submodule(name).parameters()}
    every = {id(p) for p in model.parameters()}
    return bool(every) and inside == every


def part_inputs(model: nn.Module, batch: Any, module_name: str | None) -> dict[str, torch.Tensor]:
    """Named inputs a part receives when the model runs on `batch` (captured by a forward hook)."""
    if module_name is None:
        if isinstance(batch, dict):
            return dict(batch)
        args = batch if isinstance(batch, (tuple, list)) else (batch,)
        return dict(inspect.signature(model.forward).bind(*args).arguments)
    module, seen = model.get_submodule(module_name), {}

    def hook(mod, args, kwargs):
        bound = inspect.signature(mod.forward).bind(*args, **kwargs)
        seen.update({k: v for k, v in bound.arguments.items() if isinstance(v, torch.Tensor)})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        handle.remove()
    if not seen:
        raise ModelError(f"tower module {module_name!r} received no tensor inputs in a forward pass")
    return seen


def bench(
    model_spec: str,
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    batches: tuple[int, ...] = (1, 32),
    runtimes: tuple[str, ...] = ("eager", "onnxruntime"),
    parts: tuple[str, ...] | None = None,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 2,
    cache_dir: str | None = None,
    data_dir: str | None = None,
    data: str | None = None,
    adapter=None,
) -> list[BenchRow]:
    """Time a model (and a run's compressed version) per part, runtime and batch size.

    Args:
        model_spec: a model spec (built-in name: its trained baseline is the "original"; hf:, st:,
            py:...:factory) or a run folder (then its model spec is the original and it is the run).
        out_dir: bench.json, bench.png, the exported ONNX files and the inputs go here.
        run_dir: a `mmcompress run` folder: its compressed model is timed beside the original.
        batches, runtimes: what to time ("eager", "onnxruntime", "compile").
        parts: "model" and/or tower names (default: the whole model and every tower). A tower of
            several modules is timed as the sum of its modules, each run on the inputs it gets in
            a forward pass of the whole model (one ONNX file per module).
        repeats, warmup, threads: timing settings (each case in its own process).
        data: data spec of the timed batches (default: the run's or the built-in model's dataset).
        adapter: the towers of a model that has no adapter (a YAML path, dict or Adapter); a run's
            record already holds its adapter.

    Example:
        >>> rows = bench("fashion-clip", "runs/bench", run_dir="runs/quantize", batches=(64,))
    """
    from mmcompress.recipe.runner import absolute_spec
    from mmcompress.recipe.specs import is_run_folder, read_record, resolve_workload

    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise ConfigError(f"unknown runtime {bad[0] if bad else None!r}; choose from {list(RUNTIMES)}")
    if not batches or min(batches) < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("batch sizes and repeats must be >= 1, warmup >= 0")
    if is_run_folder(model_spec) and run_dir is None:
        model_spec, run_dir = read_record(model_spec).get("model_spec"), model_spec
        if not model_spec:
            raise ConfigError(f"run {run_dir} names no model spec (made from a Python object): give MODEL and --run")
    record = read_record(run_dir) if run_dir else {}
    if record.get("model_spec") and absolute_spec(record["model_spec"]) != absolute_spec(model_spec):
        raise ConfigError(f"run {run_dir} compressed {record['model_spec']!r}, not {model_spec!r}")
    data = data or record.get("recipe", {}).get("dataset")
    adapter = adapter if adapter is not None else record.get("adapter")
    work = resolve_workload(model_spec, data, record.get("recipe", {}).get("task"), cache_dir=cache_dir,
                            data_dir=data_dir, test_limit=max(batches), progress=False, pretrained=False)  # fmt: skip
    work.require_data("bench")
    test, task = work.test, work.task
    if len(test) < max(batches):
        raise ConfigError(f"the test data has {len(test)} samples, fewer than the largest batch {max(batches)}")
    out = ensure_writable_dir(out_dir)
    rd = str(run_dir) if run_dir else None
    rows: list[BenchRow] = []
    exported: set[Path] = set()
    unexportable: dict[Path, str] = {}  # ONNX files that failed to export -> why
    for variant in ("original", "compressed") if run_dir else ("original",):
        (model,) = load_part(model_spec, rd, variant, "model", cache_dir, adapter)
        towers = tower_modules(model)
        chosen = parts or ("model", *towers)
        unknown = [p for p in chosen if p != "model" and p not in towers]
        if unknown:
            raise ConfigError(f"part {unknown[0]!r} is not 'model' or a tower of {model_spec} ({sorted(towers)})")
        for part in chosen:
            names = [None] if part == "model" else towers[part]
            onnx_paths = [out / f"{variant}-{part}{_suffix(i, names)}.onnx" for i in range(len(names))]
            for batch in batches:
                sample = task.batch(test, torch.arange(batch))[0]
                inputs_paths = []
                for i, name in enumerate(names):
                    inputs = part_inputs(model, sample, name)
                    inputs_paths.append(out / f"inputs-{variant}-{part}{_suffix(i, names)}-{batch}.pt")
                    torch.save(inputs, inputs_paths[-1])
                    if "onnxruntime" in runtimes and onnx_paths[i] not in exported | set(unexportable):
                        _export_or_note(model if name is None else model.get_submodule(name), inputs, onnx_paths[i],
                                        unexportable, f"{variant} {part}")  # fmt: skip
                        exported.add(onnx_paths[i])  # dynamic batch: one file
                where = {
                    "model": model_spec,
                    "run_dir": rd,
                    "variant": variant,
                    "part": part,
                    "cache_dir": cache_dir,
                    "adapter": _adapter_arg(adapter, model),
                }
                for runtime in runtimes:
                    if runtime == "onnxruntime" and any(p in unexportable for p in onnx_paths):
                        continue  # it did not export: warned once, no row
                    case = {"runtime": runtime, "inputs": [str(p) for p in inputs_paths], "keyword": True,
                            "onnx": [str(p) for p in onnx_paths], "threads": threads, "warmup": warmup,
                            "repeats": repeats, **where}  # fmt: skip
                    got = _run_case(case)
                    rows.append(BenchRow(variant, part, runtime, batch, got["median_ms"], got["p10_ms"], got["p90_ms"],
                                         1000 * batch / got["median_ms"], got["peak_rss_mb"]))  # fmt: skip
    _speedups(rows)
    atomic_write_json(out / "bench.json", {"model": model_spec, "run_dir": str(run_dir) if run_dir else None,
                                           "threads": threads, "rows": [asdict(r) for r in rows]})  # fmt: skip
    plot_bench(rows, out / "bench.png")
    return rows


def _export_or_note(module: nn.Module, inputs: Any, path: Path, unexportable: dict[Path, str], what: str) -> None:
    """Export one ONNX file; a module that does not export (Whisper's decoder: `aten::diff`) gets no
    onnxruntime row, with a warning naming it, and the other rows are still timed."""
    from mmcompress.graph.export import export_onnx

    try:
        export_onnx(module, inputs, path)
    except MMCompressError as err:
        unexportable[path] = str(err)
        warnings.warn(f"bench: no onnxruntime row for {what}: it does not export to ONNX ({err})", stacklevel=3)


def _suffix(i: int, names: list) -> str:
    return f"-{i}" if len(names) > 1 else ""


def _adapter_arg(adapter, model: nn.Module):
    """The adapter as JSON the worker process re-attaches: a YAML path, a dict, or the towers."""
    if adapter is None or isinstance(adapter, dict):
        return adapter
    if isinstance(adapter, (str, Path)):
        return str(Path(adapter).resolve())
    return {"towers": {t: list(m) for t, m in adapter_for(model).towers.items()}}


def _run_case(case: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(case, fh)
    try:
        proc = subprocess.run([sys.executable, "-m", "mmcompress.evaluate.bench_worker", fh.name],
                              capture_output=True, text=True)  # fmt: skip
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"timing {case['part']} on {case['runtime']} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _speedups(rows: list[BenchRow]) -> None:
    original = {(r.part, r.runtime, r.batch): r.median_ms for r in rows if r.variant == "original"}
    for row in rows:
        base = original.get((row.part, row.runtime, row.batch))
        row.speedup = base / row.median_ms if base else None


def plot_bench(rows: list[BenchRow], path: Path) -> None:
    """Median latency per case (bars, p10-p90 whiskers), original beside compressed."""
    from mmcompress.report.plots import plt

    cases = sorted({(r.part, r.runtime, r.batch) for r in rows})
    variants = sorted({r.variant for r in rows}, key=lambda v: v != "original")
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cases)), 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        got = {(r.part, r.runtime, r.batch): r for r in rows if r.variant == variant}
        xs = [c + i * width for c, case in enumerate(cases) if case in got]
        sel = [got[case] for case in cases if case in got]
        ax.bar(xs, [r.median_ms for r in sel], width, label=variant,
               yerr=[[r.median_ms - r.p10_ms for r in sel], [r.p90_ms - r.median_ms for r in sel]])  # fmt: skip
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    ax.set_xticklabels([f"{p}\n{rt}\nbatch {b}" for p, rt, b in cases], fontsize=7)
    ax.set_ylabel("median latency (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
