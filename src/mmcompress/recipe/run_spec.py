"""Run a recipe on the model, data and task its specs name, then write the report (what
`mmcompress run` does): built-in models, `hf:`/`st:` checkpoints, `py:` factories and run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcompress.core.io import check_writable, ensure_writable_dir
from mmcompress.errors import ConfigError
from mmcompress.models.zoo import MODELS
from mmcompress.recipe.runner import RunResult, compress
from mmcompress.recipe.schema import Recipe, baseline_train_config, load_recipe
from mmcompress.recipe.specs import Workload, resolve_workload
from mmcompress.recipe.validate import check_recipe
from mmcompress.report.render import write_report


def recipe_for(
    recipe: Recipe | str | Path | dict | None,
    *,
    model: str | None = None,
    data: str | None = None,
    task: str | None = None,
    adapter: str | dict | None = None,
) -> Recipe:
    """The recipe with command-line specs in place of its own (`model` is required somewhere).

    Example:
        >>> recipe_for("recipes/w8.yaml", model="py:my_models.py:build", data="py:my_data.py:load").model
        'py:my_models.py:build'
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    updates: dict[str, Any] = {k: v for k, v in dict(model=model, dataset=data, task=task).items() if v}
    if adapter:
        updates["adapter"] = str(adapter) if isinstance(adapter, Path) else adapter
    recipe = recipe.model_copy(update=updates) if updates else recipe
    if not recipe.model:
        raise ConfigError("the recipe names no model: add 'model: SPEC' to it or pass --model SPEC")
    return recipe


def load_workload(
    recipe: Recipe, *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None, progress: bool = True
) -> Workload:
    """The recipe's model (a built-in's trained baseline), data and task, resolved from its specs.

    Example:
        >>> work = load_workload(load_recipe("recipes/quick.yaml"))
    """
    if recipe.train and recipe.model not in MODELS:  # a user's model is used as built: say so, never ignore it
        raise ConfigError(
            f"recipe.train (--epochs) trains the baseline of a built-in model; {recipe.model!r} is used as built "
            "(train it first with your own loop or `mmcompress.fit`, then compress the trained model)"
        )
    train = baseline_train_config(recipe) if recipe.model in MODELS else None
    work = resolve_workload(
        recipe.model, recipe.dataset, recipe.task, adapter=recipe.adapter, cache_dir=cache_dir, data_dir=data_dir,
        train=train, train_limit=recipe.data.train_limit, test_limit=recipe.data.test_limit, progress=progress,
    )  # fmt: skip
    work.require_data("running a recipe")
    return work


def run_recipe(
    recipe: Recipe | str | Path | None,
    output_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_stage=None,
    force: bool = False,
) -> RunResult:
    """Resolve the recipe's model, data and task, check the recipe against the model, run it and
    write report.md/html.

    Args:
        recipe: Recipe, YAML path, or None for the built-in default.
        output_dir: run folder.
        data_dir: folder searched first for dataset files.
        cache_dir: trained-checkpoint cache.
        resume, progress, on_stage, force: as for `compress`.

    Example:
        >>> result = run_recipe(recipe_for("recipes/w8.yaml", model="hf:whisper-tiny.en", data="py:speech.py:load"),
        ...                     "runs/whisper-w8")
    """
    recipe = recipe_for(recipe)
    check_writable(output_dir)  # fail before any work, creating nothing
    work = load_workload(recipe, data_dir=data_dir, cache_dir=cache_dir, progress=progress)
    check_recipe(recipe, work.model)
    ensure_writable_dir(output_dir)
    result = compress(work.model, recipe, data=(work.train, work.test), task=work.task, output_dir=output_dir,
                      resume=resume, progress=progress, on_stage=on_stage, force=force)  # fmt: skip
    write_report(output_dir)
    return result
