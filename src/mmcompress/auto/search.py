"""`search_plans`: multi-objective search (size, latency, metric) over per-modality plans with
Optuna, cached and resumable trials, optional worker processes, and a constrained choice."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.auto.evaluate import MetricFn, evaluate_plan, latency_inputs, ort_latency_ms
from mmcompress.auto.pareto import pareto_front
from mmcompress.auto.setup_key import claim_setup, search_setup
from mmcompress.auto.space import SearchSpace, build_space
from mmcompress.auto.trials import TrialCache, TrialRecord
from mmcompress.auto.workers import Workers
from mmcompress.core.extras import require
from mmcompress.errors import ConfigError, DataError
from mmcompress.recipe.specs import Workload, resolve_workload


@dataclass(frozen=True)
class Constraints:
    """Limits the chosen plan must meet: metric drop in points, size in MB, ORT latency in ms."""

    max_drop: float = 1.0
    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def violations(self, metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
        """How far a trial misses each constraint (positive = violated)."""
        sign = baseline.get("higher_is_better", 1.0)  # -1: a lower metric (WER) is better
        out = {"max_drop": 100 * sign * (baseline["metric"] - metrics["metric"]) - self.max_drop}
        if self.max_size_mb is not None:
            out["max_size_mb"] = metrics["size_mb"] - self.max_size_mb
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = metrics["latency_ms"] - self.max_latency_ms
        return out


@dataclass
class AutoResult:
    """All trials, the Pareto frontier, the chosen trial (or why none fits) and the baseline."""

    trials: list[TrialRecord]
    frontier: list[int]
    chosen: int | None
    baseline: dict[str, float]
    constraints: Constraints
    space: SearchSpace
    message: str
    recipe_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _objectives(metrics: dict[str, float], sign: float = 1.0) -> tuple[float, float, float]:
    return metrics["size_mb"], metrics["latency_ms"], sign * metrics["metric"]


def choose(trials: list[TrialRecord], baseline: dict[str, float], constraints: Constraints) -> tuple[int | None, str]:
    """The smallest feasible trial (ties: faster, then more accurate), or None and the closest miss.

    Example:
        >>> index, why = choose(result.trials, result.baseline, Constraints(max_drop=1.0, max_size_mb=10))
    """
    ok = [(i, t) for i, t in enumerate(trials) if t.ok]
    if not ok:
        return None, "no trial finished; see the failed trials' errors"
    feasible = [(i, t) for i, t in ok if max(constraints.violations(t.metrics, baseline).values()) <= 0]
    if feasible:
        i, t = min(
            feasible,
            key=lambda it: (
                it[1].metrics["size_mb"],
                it[1].metrics["latency_ms"],
                -baseline.get("higher_is_better", 1.0) * it[1].metrics["metric"],
            ),
        )
        return i, f"chosen: {t.plan.describe()}"
    i, t = min(ok, key=lambda it: max(constraints.violations(it[1].metrics, baseline).values()))
    misses = {k: v for k, v in constraints.violations(t.metrics, baseline).items() if v > 0}
    detail = ", ".join(f"{k} by {v:.3g}" for k, v in misses.items())
    return None, f"no plan meets the constraints; the closest ({t.plan.describe()}) misses {detail}"


def search_plans(
    model: str | nn.Module | Workload,
    out_dir: str | Path,
    *,
    data: Any = None,
    task: Any = None,
    constraints: Constraints = Constraints(),
    time_budget_min: float = 20.0,
    max_trials: int | None = None,
    jobs: int = 1,
    backend: str = "process",
    seed: int = 0,
    test_limit: int | None = 2000,
    latency_batch: int = 32,
    metric_fn: MetricFn | None = None,
    progress: bool = True,
    tune_steps: int = 0,
) -> AutoResult:
    """Search per-modality compression plans of a model under constraints.

    Measures per-tower quantization sensitivity first (it prunes the bit widths), then lets
    Optuna's multi-objective TPE sampler propose plans (bits, W7A8, sparsity, channels per tower,
    fine-tuning), the first one always 8-bit weights with nothing pruned; each plan runs as a recipe
    and its ONNX artifact is timed in ONNX Runtime.
    Trials are cached in `out_dir/trials` (a rerun resumes; a plan is never evaluated twice);
    a trial that raises or returns NaN is recorded as failed and the search goes on.

    Args:
        model: a model spec (a built-in's cached trained baseline is the starting point; `hf:`,
            `py:...:factory`, ...), an nn.Module, or a resolved Workload.
        data, task: data and task specs or objects for a model that is not built-in (see
            `mmcompress.recipe.specs`; task `agreement` needs no labels).
        out_dir: trials, per-trial runs, the chosen recipe (`chosen.yaml`) and the report.
        constraints: max metric drop (points), size (MB) and latency (ms).
        time_budget_min: no trial starts after this many minutes.
        max_trials: stop after this many trials (cached ones count).
        jobs: trials evaluated at once (threads are split between them).
        backend: "process" (local worker processes when jobs > 1) or "ray" (Ray tasks; a cluster
            when `ray.init` finds one, e.g. through RAY_ADDRESS).
        test_limit: test samples per trial (the chosen plan is re-evaluated by `mmcompress run`).
        metric_fn: model -> score replacing the task's primary metric.
        tune_steps: when > 0, quantized plans may also be distillation-tuned for this many steps
            (`tune_quantized`, taught by the float model); the search decides where it pays.

    Example:
        >>> result = search_plans("fashion-clip", "runs/auto", constraints=Constraints(max_drop=1.0))
        >>> result.trials[result.chosen].plan.describe()
    """
    optuna = require("optuna", "auto", "the compression search")

    if jobs < 1 or time_budget_min <= 0:
        raise ConfigError("jobs must be >= 1 and time_budget_min > 0")
    out = Path(out_dir)
    start = time.perf_counter()
    work = as_workload(model, data, task, progress=progress)
    model, train, task = work.model, work.train, work.task
    test = _subset(work.test, test_limit) if test_limit else work.test
    train_config = work.train_config.to_dict() if work.train_config is not None else None
    setup = search_setup(model, task, train, test, latency_batch=latency_batch, metric_fn=metric_fn,
                         freeze=list(work.freeze or ()), train_config=train_config)  # fmt: skip
    claim_setup(out, setup)  # trials measured on other data or settings are set aside, not reused
    calib = [task.batch(train, i)[0] for i in torch.arange(min(256, len(train))).split(64)]
    space = build_space(model, calib, task, _subset(test, 1000), max(3.0, 3 * constraints.max_drop))
    space.finetune_freeze = work.freeze  # fine-tune like the model was trained
    if tune_steps:
        space.tune_steps = (0, tune_steps)
    if work.train_config is not None:
        space.finetune_lr, space.finetune_batch_size = work.train_config.lr, work.train_config.batch_size
    baseline = _baseline(model, task, test, out / "baseline", latency_batch, metric_fn)
    sign = baseline["higher_is_better"]
    cache = TrialCache(out / "trials")
    records: dict[str, TrialRecord] = {r.plan.key(): r for r in cache.all()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=6)
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"], sampler=sampler)
    for record in records.values():
        _add_cached(study, space, record, constraints, baseline)
    study.enqueue_trial(space.first_params(), skip_if_exists=True)  # a cached one is told, not re-run
    threads = max(1, 2 // jobs)
    durations: list[float] = [r.seconds for r in records.values() if r.seconds]
    workers = Workers(backend, jobs)
    shared_model, shared_data = workers.share(model), workers.share((train, test))
    try:
        while max_trials is None or len(records) < max_trials:
            elapsed = (time.perf_counter() - start) / 60
            expected = (sorted(durations)[len(durations) // 2] / 60) if durations else 0.0
            if elapsed + expected > time_budget_min:
                break
            wanted = jobs if max_trials is None else min(jobs, max_trials - len(records))
            asked = [study.ask() for _ in range(wanted)]
            plans = [space.suggest(t) for t in asked]
            runs, twins = [], []  # twins: trials that drew a plan already running in this round
            for trial, plan in zip(asked, plans, strict=True):
                done = records.get(plan.key())
                if done is not None:
                    _tell(study, trial, done, constraints, baseline)
                elif any(plan.key() == other.key() for _, other, _ in runs):
                    twins.append((trial, plan.key()))
                else:
                    args = (shared_model, plan, work.spec, shared_data, out / "runs" / plan.key(), latency_batch,
                            threads, metric_fn, task)  # fmt: skip
                    runs.append((trial, plan, workers.submit(_run_trial, *args)))
            for trial, plan, outcome in runs:
                record = workers.result(outcome)
                record.params = dict(trial.params)
                records[plan.key()] = record
                cache.put(record)
                durations.append(record.seconds)
                _tell(study, trial, record, constraints, baseline)
                if progress:
                    _print_trial(len(records), record, baseline)
            for trial, key in twins:
                _tell(study, trial, records[key], constraints, baseline)
    finally:
        workers.close()
    trials = list(records.values())
    ok = [i for i, t in enumerate(trials) if t.ok]
    front = [ok[j] for j in pareto_front([_objectives(trials[i].metrics, sign) for i in ok], (False, False, True))]
    chosen, message = choose(trials, baseline, constraints)
    return AutoResult(trials, front, chosen, baseline, constraints, space, message)


def as_workload(model: Any, data: Any = None, task: Any = None, *, progress: bool = True) -> Workload:
    """A resolved model + data + task (a Workload passes through).

    Example:
        >>> as_workload("digits-cnn").task.primary_metric
        'accuracy'
    """
    if isinstance(model, Workload):
        return model
    work = resolve_workload(model, data, task, progress=progress)
    work.require_data("the search")
    return work


def _subset(ds: Any, n: int) -> Any:
    if len(ds) <= n:
        return ds
    return ds.subset(n) if hasattr(ds, "subset") else torch.utils.data.Subset(ds, range(n))


def _run_trial(model, plan, model_spec, data, run_dir, latency_batch, threads, metric_fn, task=None) -> TrialRecord:
    """Evaluate one plan; any error or NaN becomes a failed record (the search continues)."""
    start = time.perf_counter()
    try:
        metrics = evaluate_plan(model, plan, model_spec, data, run_dir, latency_batch=latency_batch,
                                threads=threads, metric_fn=metric_fn, task=task)  # fmt: skip
        return TrialRecord(plan, {}, "ok", metrics, seconds=time.perf_counter() - start)
    except Exception as err:  # a failing trial must not stop the search
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        return TrialRecord(plan, {}, "failed", {}, error=detail[:500], seconds=time.perf_counter() - start)


def _baseline(model, task, test, out: Path, latency_batch: int, metric_fn) -> dict[str, float]:
    from mmcompress.evaluate.measure import measure
    from mmcompress.graph.export import export_onnx

    inputs = latency_inputs(task, test, latency_batch)
    export_onnx(model, inputs, out / "model.onnx")
    metric = metric_fn(model) if metric_fn else task.evaluate(model, test)[task.primary_metric]
    if not isinstance(metric, (int, float)) or not math.isfinite(metric):
        raise DataError(f"the evaluation of the original model returned {metric!r}; the search needs a finite baseline")
    return {
        "metric": float(metric),
        "higher_is_better": -1.0 if getattr(task, "higher_is_better", True) is False and not metric_fn else 1.0,
        "size_mb": measure(model).total.stored_bytes / 1e6,
        "latency_ms": ort_latency_ms(out / "model.onnx", inputs, threads=2),
    }


def _tell(study, trial, record: TrialRecord, constraints: Constraints, baseline: dict) -> None:
    optuna = require("optuna", "auto", "the compression search")

    if not record.ok:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for key, value in constraints.violations(record.metrics, baseline).items():
        trial.set_constraint(key, value)
    study.tell(trial, list(_objectives(record.metrics, baseline.get("higher_is_better", 1.0))))


def _add_cached(study, space: SearchSpace, record: TrialRecord, constraints: Constraints, baseline: dict) -> None:
    """Give the sampler a cached trial (resume) with the distributions it was drawn from."""
    optuna = require("optuna", "auto", "the compression search")

    dists = _distributions(space, record.params)
    if set(dists) != set(record.params):
        return  # drawn from another space: kept in the results, not shown to the sampler
    if not record.ok:
        study.add_trial(optuna.trial.create_trial(params=record.params, distributions=dists,
                                                  state=optuna.trial.TrialState.FAIL))  # fmt: skip
        return
    values = list(_objectives(record.metrics, baseline.get("higher_is_better", 1.0)))
    violations = constraints.violations(record.metrics, baseline)
    frozen = optuna.trial.create_trial(params=record.params, distributions=dists, values=values, constraints=violations)
    study.add_trial(frozen)


def _distributions(space: SearchSpace, params: dict) -> dict:
    from optuna.distributions import CategoricalDistribution as C

    dists = {}
    for name, tower in space.towers.items():
        dists[f"{name}.bits"] = C(list(tower.bits))
        if tower.dynamic:
            dists[f"{name}.activations"] = C(["none", "dynamic"])
        dists[f"{name}.sparsity"] = C(list(tower.sparsity))
        dists[f"{name}.channels"] = C(list(tower.channels))
        if tower.embeddings:
            dists[f"{name}.embedding_bits"] = C(list(tower.bits))
    dists["finetune_epochs"] = C(list(space.finetune_epochs))
    dists["tune_steps"] = C(list(space.tune_steps))
    return {k: v for k, v in dists.items() if k in params and params[k] in v.choices}


def _print_trial(n: int, record: TrialRecord, baseline: dict) -> None:
    if record.ok:
        m = record.metrics
        drop = 100 * baseline.get("higher_is_better", 1.0) * (baseline["metric"] - m["metric"])
        print(f"trial {n}: {m['size_mb']:.2f} MB, {m['latency_ms']:.1f} ms, drop {drop:+.2f} pt "
              f"({record.seconds:.0f} s) - {record.plan.describe()}", flush=True)  # fmt: skip
    else:
        print(f"trial {n}: failed ({record.error}) - {record.plan.describe()}", flush=True)
