"""Verification of the choice: trials are scored on a test subset, so the smallest feasible plans
are re-run on the full test set and the first that still meets the constraints is chosen (with
dozens of trials, the best-looking subset score is biased upwards)."""

from __future__ import annotations

from pathlib import Path

from mmcompress.auto.evaluate import evaluate_plan
from mmcompress.auto.search import AutoResult, as_workload
from mmcompress.recipe.specs import Workload


def verify_choice(result: AutoResult, work: Workload, out_dir: str | Path, *, top: int = 3) -> AutoResult:
    """Re-evaluate up to `top` of the smallest feasible trials on the full test set; `result.chosen`
    becomes the first that passes (None if none does), `result.extra["verified"]` holds each check.

    Example:
        >>> verify_choice(result, resolve_workload("fashion-clip"), "runs/auto", top=3).message
    """
    base, limits = result.baseline, result.constraints
    feasible = [
        i for i, t in enumerate(result.trials) if t.ok and max(limits.violations(t.metrics, base).values()) <= 0
    ]
    feasible.sort(key=lambda i: (result.trials[i].metrics["size_mb"], result.trials[i].metrics["latency_ms"]))
    if not feasible:
        return result
    work = as_workload(work)
    model, train, test, task = work.model, work.train, work.test, work.task
    full = {**base, "metric": float(task.evaluate(model, test)[task.primary_metric])}
    checks = []
    result.chosen = None
    for index in feasible[:top]:
        plan = result.trials[index].plan
        folder = Path(out_dir) / "verified" / plan.key()
        metrics = evaluate_plan(model, plan, work.spec, (train, test), folder, task=task)
        misses = {k: v for k, v in limits.violations(metrics, full).items() if v > 0}
        checks.append({"trial": index, "plan": plan.describe(), "metrics": metrics, "misses": misses})
        if not misses:
            result.chosen = index
            break
    result.extra["verified"] = {"baseline": full, "checks": checks}
    if result.chosen is not None:
        m = checks[-1]["metrics"]
        result.message = (
            f"chosen: {result.trials[result.chosen].plan.describe()} (full test set: metric {m['metric']:.4f}, "
            f"{m['size_mb']:.2f} MB, {m['latency_ms']:.1f} ms)"
        )
    else:
        detail = "; ".join(f"{c['plan']} misses " + ", ".join(f"{k} by {v:.3g}" for k, v in c["misses"].items())
                           for c in checks)  # fmt: skip
        result.message = (
            f"none of the {len(checks)} smallest plans within the constraints on the test subset holds "
            f"on the full test set: {detail}"
        )
    return result
