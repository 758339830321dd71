"""Run a recipe on a built-in model and dataset, then write the report (what `mmcompress run` does)."""

from __future__ import annotations

from pathlib import Path

from mmcompress.core.io import check_writable, ensure_writable_dir
from mmcompress.data.registry import load_dataset
from mmcompress.models.zoo import get_spec, load_model
from mmcompress.recipe.runner import RunResult, compress
from mmcompress.recipe.schema import Recipe, baseline_train_config, load_recipe
from mmcompress.report.render import write_report


def run_recipe(
    recipe: Recipe | str | Path | None,
    output_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_stage=None,
) -> RunResult:
    """Load (or train) the recipe's built-in model, run the recipe, write report.md/html.

    Args:
        recipe: Recipe, YAML path, or None for the built-in default.
        output_dir: run folder.
        data_dir: folder searched first for dataset files.
        cache_dir: trained-checkpoint cache.
        resume, progress, on_stage: as for `compress`.

    Example:
        >>> result = run_recipe(None, "runs/default")
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    spec = get_spec(recipe.model)
    check_writable(output_dir)  # fail before any work, creating nothing
    dataset = recipe.dataset or spec.dataset
    train = load_dataset(dataset, "train", data_dir=data_dir, limit=recipe.data.train_limit)
    test = load_dataset(dataset, "test", data_dir=data_dir, limit=recipe.data.test_limit)
    ensure_writable_dir(output_dir)
    model = load_model(
        recipe.model,
        cache_dir=cache_dir,
        data_dir=data_dir,
        progress=progress,
        train=baseline_train_config(recipe),
        train_limit=recipe.data.train_limit,
    )
    result = compress(
        model, recipe, data=(train, test), output_dir=output_dir, resume=resume, progress=progress, on_stage=on_stage
    )
    write_report(output_dir)
    return result
