"""Recipe schema: model, dataset, and an ordered list of stages, each a registered pass + config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field

from mmcompress.core.config import FrozenConfig, yaml_error_line
from mmcompress.errors import ConfigError
from mmcompress.models.zoo import MODELS
from mmcompress.recipe.stages import validate_stage
from mmcompress.train.config import TrainConfig


class StageSpec(FrozenConfig):
    """One stage: `pass` names a registered pass; `config` its fields; `targets` per-module overrides.

    Example:
        >>> StageSpec.from_dict({"pass": "prune", "config": {"sparsity": 0.5}}).pass_
        'prune'
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    pass_: str = Field(alias="pass")
    name: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    targets: dict[str, dict[str, Any] | None] | None = None

    @property
    def label(self) -> str:
        return self.name or self.pass_


class DataSpec(FrozenConfig):
    """Which part of the data a run uses (small subsets for quick runs and tests)."""

    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)


class Recipe(FrozenConfig):
    """A compression recipe.

    Attributes:
        model: a model spec: built-in name (see `mmcompress models`), `hf:...`, `st:...`,
            `py:<module or file.py>:<factory>` or a run folder; `compress` takes the model object
            instead. None: given on the command line (`mmcompress run RECIPE --model SPEC`).
        dataset: a data spec: built-in dataset name or `py:...:<factory>` returning
            (train, test[, task]) (default: a built-in model's own dataset).
        task: `classification`, `agreement` (top-1 agreement with the float model, no labels
            needed), `cosine`, or `py:...:<factory>` returning a Task or an evaluation function.
        adapter: towers of the model for `modality:` targets (a YAML file or a mapping).
        seed: seeds every stage.
        data: subset sizes (`train_limit` also applies to training the baseline).
        train: TrainConfig overrides for training the baseline when it is not cached.
        stages: the ordered passes.
        warn_drop: warn (and record `drop_points`) when an evaluated stage's primary metric is this
            many points (x100) below the first evaluation's; None: never.

    Example:
        >>> recipe = load_recipe(None)  # the built-in default recipe
        >>> [s.pass_ for s in recipe.stages][:2]
        ['evaluate', 'prune']
    """

    model: str | None = None
    dataset: str | None = None
    task: str | None = None
    adapter: str | dict[str, Any] | None = None
    seed: int = 0
    data: DataSpec = DataSpec()
    train: dict[str, Any] | None = None
    stages: list[StageSpec] = Field(min_length=1)
    warn_drop: float | None = Field(1.0, ge=0)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def default_recipe_text() -> str:
    """The YAML text of the built-in default recipe."""
    return resources.files("mmcompress.recipe").joinpath("default.yaml").read_text()


def load_recipe(source: str | Path | dict | None) -> Recipe:
    """Load and fully validate a recipe (schema + every stage's pass config).

    Args:
        source: a YAML file path, a dict, or None for the built-in default recipe.

    Example:
        >>> load_recipe("recipes/quick.yaml").stages[0].label
        'baseline'
    """
    if source is None:
        data = yaml.safe_load(default_recipe_text())
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe is not valid YAML: {yaml_error_line(err, str(path))}") from None
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a mapping with 'stages'")
    recipe = Recipe.from_dict(data, "recipe")
    TrainConfig.from_dict(recipe.train, "recipe.train")  # overrides must be valid training fields
    for i, stage in enumerate(recipe.stages):
        validate_stage(stage, f"recipe.stages[{i}]")
    return recipe


def baseline_train_config(recipe: Recipe):
    """The TrainConfig for the recipe's baseline: the model's default with `recipe.train` overrides."""
    base = MODELS[recipe.model].train.to_dict() if recipe.model in MODELS else {}
    return TrainConfig.from_dict({**base, **(recipe.train or {})}, "recipe.train")
