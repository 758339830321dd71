"""`auto_compress`: search, then write the chosen plan as a recipe, evaluate robustness of the
original and the chosen model, and write the report."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmcompress.auto.plan import plan_to_recipe
from mmcompress.auto.report import summary_dict, write_auto_report
from mmcompress.auto.robustness import robustness
from mmcompress.auto.search import AutoResult, Constraints, search_plans
from mmcompress.auto.verify import verify_choice
from mmcompress.core.io import atomic_write_bytes, atomic_write_json


def auto_compress(
    model_name: str,
    out_dir: str | Path,
    *,
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
) -> AutoResult:
    """Find the best per-modality compression plan of a built-in model under constraints.

    Writes to `out_dir`: `trials/` (cache; a rerun resumes), `runs/<plan>/` (each trial's run),
    `chosen.yaml` (the chosen plan as a recipe on the full test set: `mmcompress run chosen.yaml`
    reproduces it), `auto.json` (every trial, the frontier, the choice) and `auto_report.md/html`.
    When no plan meets the constraints, `result.chosen` is None and `result.message` names the
    closest plan and by how much it misses.

    Args:
        model_name: a built-in model.
        max_drop: largest allowed drop of the task's primary metric, in points.
        max_size_mb, max_latency_ms: optional limits (latency: ONNX Runtime, batch 32, 2 threads).
        time_budget_min, max_trials, jobs, backend, seed, test_limit: search settings (see
            `search_plans`; backend "ray" runs trials as Ray tasks, the output folder must then be
            shared by the workers).
        check_robustness: evaluate the original and chosen model under input corruptions.
        verify_top: re-run this many of the smallest feasible plans on the full test set and choose
            the first that still meets the constraints (0: trust the subset scores).

    Example:
        >>> result = auto_compress("fashion-clip", "runs/auto", max_drop=1.0, time_budget_min=20)
        >>> print(result.message)
    """
    from mmcompress.data.registry import load_dataset
    from mmcompress.evaluate.measure import measure
    from mmcompress.models.zoo import build_model, get_spec, load_model, task_for
    from mmcompress.recipe.runner import load_run

    out = Path(out_dir)
    constraints = Constraints(max_drop, max_size_mb, max_latency_ms)
    result = search_plans(model_name, out, constraints=constraints, time_budget_min=time_budget_min,
                          max_trials=max_trials, jobs=jobs, backend=backend, seed=seed, test_limit=test_limit,
                          progress=progress)  # fmt: skip
    if verify_top and test_limit is not None:
        verify_choice(result, model_name, out, top=verify_top)
    original = load_model(model_name, progress=progress)
    before_mb = {t: s.stored_bytes / 1e6 for t, s in measure(original).per_modality.items()}
    table = None
    if result.chosen is not None:
        plan = result.trials[result.chosen].plan
        recipe = plan_to_recipe(plan, model_name, seed=seed)
        result.recipe_path = out / "chosen.yaml"
        header = f"# mmcompress auto: {plan.describe()}\n"
        atomic_write_bytes(result.recipe_path, (header + yaml.safe_dump(recipe.to_dict(), sort_keys=False)).encode())
        if check_robustness:
            run_dir = out / "verified" / plan.key()
            chosen = load_run(run_dir if run_dir.is_dir() else out / "runs" / plan.key(), build_model(model_name))
            test = load_dataset(get_spec(model_name).dataset, "test", limit=test_limit)
            table = robustness({"float32": original, "chosen": chosen}, lambda ds: task_for(original, ds), test, seed)
    result.extra["robustness"] = table
    atomic_write_json(out / "auto.json", {**summary_dict(result), "robustness": table,
                                         "verified": result.extra.get("verified")})  # fmt: skip
    result.extra["report"] = [str(p) for p in write_auto_report(result, out, before_mb, table)]
    return result


def load_summary(out_dir: str | Path) -> dict:
    """The `auto.json` of a finished search."""
    return json.loads((Path(out_dir) / "auto.json").read_text())
