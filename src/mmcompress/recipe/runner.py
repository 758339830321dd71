"""`compress(model, recipe, data)`: run stages in order, checkpoint each, resume, write the record."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from mmcompress.core.io import (
    atomic_write_json,
    check_sha256,
    ensure_writable_dir,
    file_sha256,
    json_digest,
    load_state_checked,
    model_fingerprint,
    stable_hash,
)
from mmcompress.core.record import Record, environment_versions
from mmcompress.errors import ConfigError, ModelError
from mmcompress.graph.storage import load_compact, save_compact
from mmcompress.models.zoo import task_for
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import with_suggestions
from mmcompress.recipe.run_folder import claim, locked
from mmcompress.recipe.schema import Recipe, load_recipe
from mmcompress.recipe.stages import build_pass
from mmcompress.train.loop import seed_everything
from mmcompress.train.tasks import Task

SPEC_ATTR = "mmcompress_spec"  # set on models loaded from a spec (recipe/specs.py)
STAGE_FILE = "stage.json"
STAGE_FIX = "delete its stage folder or rerun with --no-resume"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class StageResult:
    """One finished stage as written to record.json."""

    index: int
    label: str
    pass_name: str
    config: dict[str, Any]
    metrics: dict[str, float]
    record: dict[str, Any] | None
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)
    resumed: bool = False
    warnings: list[str] = field(default_factory=list)  # what the stage warned the user (kept for the report)
    task_metric: str | None = None  # evaluate stages: the task's primary metric (named by a user's function)
    latency_of: str | None = None  # evaluate stages: what latency_ms timed ("batch of 8", "greedy transcription ...")


@dataclass
class RunResult:
    """All stages of a run and where its outputs are."""

    output_dir: Path
    stages: list[StageResult]
    record_path: Path

    def metrics(self, label: str) -> dict[str, float]:
        """Metrics of the last stage with this label (e.g. 'baseline', 'compressed')."""
        for stage in reversed(self.stages):
            if stage.label == label:
                return stage.metrics
        raise KeyError(f"no stage labelled {label!r}")


def compress(
    model: nn.Module,
    recipe: Recipe | str | Path | dict | None = None,
    *,
    data: tuple[Any, Any] | dict[str, Any],
    output_dir: str | Path,
    task: Task | None = None,
    resume: bool = True,
    progress: bool = True,
    on_stage=None,
    force: bool = False,
) -> RunResult:
    """Run a recipe on a model: each stage is a pass; the model is edited in place.

    Every stage writes `stages/NN-label/` (compact weights + stage.json); an interrupted run
    with the same recipe resumes after the last finished stage. `record.json` holds configs,
    metrics, seeds and versions; `model.safetensors` the final weights.

    Args:
        model: the model to compress (the trained baseline).
        recipe: a Recipe, a YAML path, a dict, or None for the built-in default.
        data: `(train, test)` or `{"train": ..., "test": ...}` datasets the task can index.
        task: batches, loss and metrics (default: the built-in model's task, else classification).
        output_dir: the run folder (created; must be writable).
        resume: reuse finished stages of an earlier identical run.
        progress: show progress bars.
        on_stage: optional callback(StageResult) after each stage (the CLI prints a table).
        force: replace a run of another recipe in `output_dir` (stages the recipes share are
            kept); without it such a folder is refused. A folder another process is running in
            is always refused (it is locked).

    Example:
        >>> result = compress(model, "recipe.yaml", data=(train, test), output_dir="runs/x")
        >>> result.metrics("compressed")["compression"]
    """
    train_data, test_data = (data["train"], data["test"]) if isinstance(data, dict) else data
    task = task or task_for(model, train_data)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out = ensure_writable_dir(output_dir)
    passes = [build_pass(stage, f"recipe.stages[{i}]") for i, stage in enumerate(recipe.stages)]
    for stage, p in zip(recipe.stages, passes, strict=True):  # what the task asks for where the recipe is silent
        p.config = with_suggestions(p.config, task.pass_defaults.get(stage.pass_, {}))
    keys = _stage_keys(recipe, model_fingerprint(model))
    with locked(out):
        claim(out, recipe.to_dict(), keys, force=force)
        return _run_stages(model, recipe, passes, keys, task, train_data, test_data, out, resume, progress, on_stage)


def _run_stages(model, recipe, passes, keys, task, train_data, test_data, out, resume, progress, on_stage):
    """The stages of `compress`, in a locked and claimed run folder."""
    ctx = RunContext(model, task, train_data, test_data, out, out, recipe.seed, progress)
    teaches = [
        s
        for s in recipe.stages
        if s.pass_ == "tune_quantized" or s.pass_ == "distill" and s.config.get("teacher", "original") == "original"
    ]
    if teaches:
        ctx.original_model = copy.deepcopy(model).eval()  # the teacher of distill and tune_quantized stages
    done = _resume(ctx, recipe, passes, keys) if resume else []
    if not resume and (out / "stages").exists():
        shutil.rmtree(out / "stages")
    results = list(done)
    for result in done:
        if on_stage is not None:
            on_stage(result)
    for i in range(len(done), len(passes)):
        stage = recipe.stages[i]
        ctx.stage_dir = _stage_dir(out, i, stage.label)
        ctx.train_data = task.pass_data(stage.pass_, train_data)
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(recipe.seed + i)
        start = time.perf_counter()
        warned: list[str] = []
        with shown_warnings(warned):
            outcome: StageOutcome = passes[i].run(ctx)
        result = StageResult(
            i,
            stage.label,
            stage.pass_,
            passes[i].config.to_dict(),
            outcome.metrics,
            outcome.record.to_dict() if outcome.record else None,
            time.perf_counter() - start,
            outcome.artifacts,
            warnings=warned,
            task_metric=task.primary_metric if stage.pass_ == "evaluate" else None,
            latency_of=outcome.extra.get("latency_of"),
        )
        weights_sha = None
        if passes[i].changes_model:
            save_compact(ctx.model, ctx.stage_dir / WEIGHTS_FILE)
            weights_sha = file_sha256(ctx.stage_dir / WEIGHTS_FILE)
        (ctx.stage_dir / "last.pt").unlink(missing_ok=True)  # training checkpoint: the stage is done
        _check_drop(recipe.warn_drop, task, results, result)
        _versus_first(results, result)
        atomic_write_json(
            ctx.stage_dir / STAGE_FILE, {"key": keys[i], "weights_sha256": weights_sha, **result.__dict__}
        )
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    save_compact(ctx.model, out / WEIGHTS_FILE, extra={"recipe": recipe.to_dict()})
    record = {**_record(recipe, results, model, task), "weights_sha256": file_sha256(out / WEIGHTS_FILE)}
    record["record_sha256"] = json_digest(record, "record_sha256")
    record_path = atomic_write_json(out / "record.json", record)
    return RunResult(out, results, record_path)


@contextlib.contextmanager
def shown_warnings(into: list[str]):
    """Collect the distinct messages of the UserWarnings a block shows (under the caller's filters)
    into `into`, and show them as they would have been (also when the block raises).

    Example:
        >>> with shown_warnings(kept := []):
        ...     warnings.warn("quantize: 2 layers stay float")
        >>> kept
        ['quantize: 2 layers stay float']
    """
    shown: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            finally:
                shown = list(caught)
    finally:
        for w in shown:
            if issubclass(w.category, UserWarning) and str(w.message) not in into:
                into.append(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _versus_first(earlier: list[StageResult], result: StageResult) -> None:
    """`compression_vs_baseline`: the first evaluated stage's stored bytes over this stage's (the
    stage's own `compression` compares with its float32 size: 1.0 for a pruned float model)."""
    first = next((r.metrics["stored_bytes"] for r in earlier if "stored_bytes" in r.metrics), None)
    now = result.metrics.get("stored_bytes")
    if first and now:
        result.metrics["compression_vs_baseline"] = round(first / now, 4)


def _check_drop(warn_drop: float | None, task: Task, earlier: list[StageResult], result: StageResult) -> None:
    """Warn when this stage's primary metric fell more than `warn_drop` points below the first evaluation."""
    key = task.primary_metric
    first = next((r.metrics[key] for r in earlier if key in r.metrics), None)
    if warn_drop is None or first is None or key not in result.metrics:
        return
    sign = -1 if getattr(task, "higher_is_better", True) is False else 1  # WER: a rise is the loss
    drop = sign * (first - result.metrics[key]) * 100
    result.metrics["drop_points"] = round(drop, 3)
    if drop > warn_drop:
        warnings.warn(
            f"stage {result.index} {result.label!r} loses {drop:.2f} points of {key} "
            f"({first:.4f} -> {result.metrics[key]:.4f}), more than the recipe's warn_drop {warn_drop}",
            UserWarning,
            stacklevel=3,
        )


def _stage_dir(out: Path, index: int, label: str) -> Path:
    return out / "stages" / f"{index:02d}-{label}"


def _stage_keys(recipe: Recipe, base: str) -> list[str]:
    """Key of stage i = hash of the start model, the recipe header and stages 0..i."""
    head = recipe.to_dict()
    head.pop("stages")
    head["base_model"] = base
    stages = recipe.to_dict()["stages"]
    return [stable_hash({"head": head, "stages": stages[: i + 1]}) for i in range(len(stages))]


def _resume(ctx: RunContext, recipe: Recipe, passes: list, keys: list[str]) -> list[StageResult]:
    done: list[StageResult] = []
    shas: list[str | None] = []
    for i, stage in enumerate(recipe.stages):
        info_path = _stage_dir(ctx.output_dir, i, stage.label) / STAGE_FILE
        if not info_path.exists():
            break
        info = _read_stage(info_path)
        if info.get("key") != keys[i]:
            break
        info.pop("key")
        shas.append(info.pop("weights_sha256", None))
        done.append(StageResult(**{**info, "resumed": True}))
    if not done:
        return []
    named = [r.task_metric for r in done if r.task_metric]
    if named and hasattr(ctx.task, "learn_name"):  # a user's function names its metric when it runs
        ctx.task.learn_name(named[0])
    for i, result in enumerate(done):
        if result.record:
            passes[i].replay(ctx, Record.from_dict(result.record))
    saved = [(_stage_dir(ctx.output_dir, r.index, r.label) / WEIGHTS_FILE, shas[r.index])
             for r in done if passes[r.index].changes_model]  # fmt: skip
    if not saved:
        return done
    check_sha256(saved[-1][0], saved[-1][1], "stage checkpoint", STAGE_FIX)
    saved = [path for path, _ in saved]
    state, _ = load_compact(saved[-1])
    load_state_checked(ctx.model, state, f"stage checkpoint {saved[-1]}", "use another --out or --no-resume")
    for i, result in enumerate(done):
        if result.record:
            passes[i].restore(ctx, Record.from_dict(result.record))
    return done


def _read_stage(path: Path) -> dict[str, Any]:
    """A finished stage's stage.json; garbage or a missing field is a one-line error."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path} is unreadable ({err}); {STAGE_FIX}") from None
    missing = [f for f in ("key", "index", "label", "pass_name", "config", "metrics", "record", "seconds")
               if not isinstance(info, dict) or f not in info]  # fmt: skip
    if missing:
        raise ModelError(
            f"{path} is incomplete (no {', '.join(missing)}); delete its stage folder or rerun with --no-resume"
        )
    unknown = set(info) - {"key", "weights_sha256", "resumed", *StageResult.__dataclass_fields__}
    if unknown:
        raise ModelError(
            f"{path} has unknown fields {sorted(unknown)}; delete its stage folder or rerun with --no-resume"
        )
    return info


def _record(recipe: Recipe, results: list[StageResult], model: nn.Module, task: Task) -> dict[str, Any]:
    given = getattr(model, SPEC_ATTR, None) or recipe.model
    recipe_dict = recipe.to_dict()
    for key in ("model", "dataset", "task"):
        if key in recipe_dict:
            recipe_dict[key] = absolute_spec(recipe_dict[key])
    adapter = recipe.adapter
    if isinstance(adapter, str):  # stored as data: the run folder must not depend on the YAML file staying
        adapter = yaml.safe_load(Path(adapter).read_text()) if Path(adapter).is_file() else adapter
    return {
        "primary_metric": task.primary_metric,
        "higher_is_better": getattr(task, "higher_is_better", True) is not False,
        "model_spec": absolute_spec(given),  # `measure/eval/bench RUN` rebuild the model from it, from any folder
        "model_name": given or type(model).__name__,
        "adapter": adapter,
        "recipe": recipe_dict,
        "seed": recipe.seed,
        "versions": environment_versions(),
        "model_class": type(model).__name__,
        "stages": [r.__dict__ for r in results],
    }


def absolute_spec(spec: str | None) -> str | None:
    """`spec` with a `py:` file path made absolute (other specs unchanged): a recipe written for later
    runs from any folder.

    Example:
        >>> absolute_spec("py:my_models.py:build")
        'py:/home/me/project/my_models.py:build'
    """
    if not isinstance(spec, str) or not spec.startswith("py:"):
        return spec
    target, sep, attr = spec[3:].rpartition(":")
    if sep and (target.endswith(".py") or "/" in target):
        return f"py:{Path(target).expanduser().resolve()}:{attr}"
    return spec


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's record.json; a missing or unreadable one is a one-line error."""
    path = Path(run_dir) / "record.json"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        done = sorted(p.parent.name for p in Path(run_dir).glob(f"stages/*/{STAGE_FILE}"))
        if done:
            raise ConfigError(
                f"{run_dir} is an unfinished run (finished stages: {', '.join(done)}; no record.json yet): rerun "
                "the command that started it to resume after them"
            ) from None
        raise ConfigError(f"{run_dir} holds no record.json: not a finished run folder") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); rerun the recipe with --no-resume") from None
    if not isinstance(record, dict) or not isinstance(record.get("recipe"), dict) or "stages" not in record:
        raise ConfigError(f"{path} is not a run record (no recipe or stages); rerun the recipe with --no-resume")
    if "record_sha256" in record and record["record_sha256"] != json_digest(record, "record_sha256"):
        raise ModelError(
            f"{path} does not match its recorded SHA-256 (edited or corrupted); rerun the recipe with --no-resume"
        )
    return record


def load_run(run_dir: str | Path, base_model: nn.Module) -> nn.Module:
    """Rebuild a run's compressed model: replay each stage's record on `base_model`, load final weights.

    Example:
        >>> model = load_run("runs/default", load_model("fashion-clip"))
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    fix = "rerun the recipe with --no-resume"
    check_sha256(run_dir / WEIGHTS_FILE, record.get("weights_sha256"), "final weights", fix)
    for stage in record["stages"]:  # every artifact the record names belongs to it
        artifacts = (stage.get("artifacts") if isinstance(stage, dict) else None) or {}
        if artifacts.get("onnx_sha256"):
            check_sha256(run_dir / Path(artifacts["onnx"]).name, artifacts["onnx_sha256"], "ONNX artifact", fix)
    recipe = Recipe.from_dict(record["recipe"], "record.recipe")
    passes = [build_pass(stage, f"recipe.stages[{i}]") for i, stage in enumerate(recipe.stages)]
    ctx = RunContext(base_model, None, None, None, run_dir, run_dir)  # type: ignore[arg-type]
    stages = record["stages"]
    for stage in stages:
        if stage["record"]:
            passes[stage["index"]].replay(ctx, Record.from_dict(stage["record"]))
    state, _ = load_compact(run_dir / WEIGHTS_FILE)
    load_state_checked(base_model, state, str(run_dir / WEIGHTS_FILE), "was the run made from this model?")
    for stage in stages:
        if stage["record"]:
            passes[stage["index"]].restore(ctx, Record.from_dict(stage["record"]))
    return base_model.eval()
