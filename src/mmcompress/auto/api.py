"""`auto_compress`: search, then write the chosen plan as a recipe, evaluate robustness of the
original and the chosen model, and write the report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from mmcompress.auto.plan import plan_to_recipe
from mmcompress.auto.report import summary_dict, write_auto_report
from mmcompress.auto.robustness import robustness
from mmcompress.auto.search import AutoResult, Constraints, search_plans
from mmcompress.auto.verify import verify_choice
from mmcompress.core.extras import require
from mmcompress.core.io import atomic_write_bytes, atomic_write_json, check_writable


def auto_compress(
    model: Any,
    out_dir: str | Path,
    *,
    data: Any = None,
    task: Any = None,
    adapter: Any = None,
    max_drop: float = 1.0,
    max_size_mb: float | None = None,
    max_latency_ms: float | None = None,
    time_budget_min: float = 20.0,
    max_trials: int | None = None,
    jobs: int = 1,
    backend: str = "process",
    seed: int = 0,
    test_limit: int | None = 2000,
    check_robustness: bool = True,
    verify_top: int = 3,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    tune_steps: int = 0,
) -> AutoResult:
    """Find the best per-modality compression plan of a model under constraints.

    Writes to `out_dir`: `trials/` (cache; a rerun resumes), `runs/<plan>/` (each trial's run),
    `chosen.yaml` (the chosen plan as a recipe on the full test set: `mmcompress run chosen.yaml`
    reproduces it), `auto.json` (every trial, the frontier, the choice) and `auto_report.md/html`.
    When no plan meets the constraints, `result.chosen` is None and `result.message` names the
    closest plan and by how much it misses.

    Args:
        model: a model spec (built-in name, `hf:...`, `py:<file.py>:<factory>`, ...) or an nn.Module.
        data, task, adapter: specs or objects for a model that is not built-in (a data spec or a
            `(train, test)` pair; task `agreement` compares with the float model and needs no labels;
            an adapter gives per-modality plans, without one the model is one tower).
        max_drop: largest allowed drop of the task's primary metric, in points.
        max_size_mb, max_latency_ms: optional limits (latency: ONNX Runtime, batch 32, 2 threads).
        time_budget_min, max_trials, jobs, backend, seed, test_limit: search settings (see
            `search_plans`; backend "ray" runs trials as Ray tasks, the output folder must then be
            shared by the workers).
        check_robustness: evaluate the original and chosen model under input corruptions.
        verify_top: re-run this many of the smallest feasible plans on the full test set and choose
            the first that still meets the constraints (0: trust the subset scores).
        cache_dir, data_dir: the trained-baseline cache and a folder searched first for data files.
        tune_steps: > 0 lets quantized plans be distillation-tuned for this many steps
            (`tune_quantized`); the search decides where it pays.

    Example:
        >>> result = auto_compress("fashion-clip", "runs/auto", max_drop=1.0, time_budget_min=20)
        >>> result = auto_compress(my_net, "runs/auto", data=(train, test), task="agreement")
        >>> print(result.message)
    """
    import copy

    from mmcompress.evaluate.measure import measure
    from mmcompress.models.zoo import task_for
    from mmcompress.recipe.runner import absolute_spec, load_run
    from mmcompress.recipe.specs import resolve_workload

    require("optuna", "auto", "the compression search")  # before any work
    check_writable(out_dir)
    out = Path(out_dir)
    constraints = Constraints(max_drop, max_size_mb, max_latency_ms)
    work = resolve_workload(model, data, task, adapter=adapter, progress=progress, cache_dir=cache_dir,
                            data_dir=data_dir)  # fmt: skip
    work.require_data("auto")
    result = search_plans(work, out, constraints=constraints, time_budget_min=time_budget_min,
                          max_trials=max_trials, jobs=jobs, backend=backend, seed=seed, test_limit=test_limit,
                          progress=progress, tune_steps=tune_steps)  # fmt: skip
    if verify_top and test_limit is not None:
        verify_choice(result, work, out, top=verify_top)
    original = work.model
    before_mb = {t: s.stored_bytes / 1e6 for t, s in measure(original).per_modality.items()}
    table, notes = None, []
    if result.chosen is not None:
        plan = result.trials[result.chosen].plan
        specs = {"dataset": absolute_spec(data) if isinstance(data, str) else None,
                 "task": absolute_spec(task) if isinstance(task, str) else None,
                 "adapter": _absolute_file(adapter) if isinstance(adapter, (str, Path)) else None}  # fmt: skip
        recipe = plan_to_recipe(plan, absolute_spec(work.spec), seed=seed, specs=specs, baseline=True)
        result.recipe_path = out / "chosen.yaml"
        header = f"# mmcompress auto: {plan.describe()}\n"
        if work.spec is None:
            header += "# made from a Python model object: run it with --model SPEC (and --data/--task)\n"
        atomic_write_bytes(result.recipe_path, (header + yaml.safe_dump(recipe.to_dict(), sort_keys=False)).encode())
        if check_robustness:
            run_dir = out / "verified" / plan.key()
            chosen = load_run(run_dir if run_dir.is_dir() else out / "runs" / plan.key(), copy.deepcopy(original))
            test = work.test if test_limit is None or len(work.test) <= test_limit else _first(work.test, test_limit)
            make_task = (lambda ds: task_for(original, ds)) if work.builtin else (lambda ds: work.task)
            table = robustness({"float32": original, "chosen": chosen}, make_task, test, seed, notes=notes)
            if notes:
                warnings.warn("auto: robustness: " + "; ".join(notes), stacklevel=2)
    result.extra["robustness"], result.extra["robustness_notes"] = table, notes
    atomic_write_json(out / "auto.json", {**summary_dict(result), "robustness": table, "robustness_notes": notes,
                                         "verified": result.extra.get("verified")})  # fmt: skip
    result.extra["report"] = [str(p) for p in write_auto_report(result, out, before_mb, table)]
    return result


def _absolute_file(path: str | Path) -> str:
    """An adapter given as a file: its absolute path (chosen.yaml then runs from any folder)."""
    return str(Path(path).resolve()) if Path(path).is_file() else str(path)


def _first(ds: Any, n: int) -> Any:
    import torch.utils.data

    return ds.subset(n) if hasattr(ds, "subset") else torch.utils.data.Subset(ds, range(n))


def load_summary(out_dir: str | Path) -> dict:
    """The `auto.json` of a finished search."""
    return json.loads((Path(out_dir) / "auto.json").read_text())
