"""Pass interface and registry; each pass is a small class with a Config and `run`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from pydantic import ValidationError

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.core.registry import Registry
from mmcompress.recipe.context import RunContext, StageOutcome

PASSES: Registry[type[Pass]] = Registry("pass")


class Pass(abc.ABC):
    """A recipe stage. Subclasses set `Config` and implement `run`; model-changing passes `replay`.

    Example:
        >>> @PASSES.register("noop")
        ... class Noop(Pass):
        ...     Config = FrozenConfig
        ...     def run(self, ctx): return StageOutcome()
    """

    Config: ClassVar[type[FrozenConfig]]
    accepts_targets: ClassVar[bool] = False
    changes_model: ClassVar[bool] = True

    def __init__(self, config: FrozenConfig, targets: dict[str, Any] | None = None) -> None:
        self.config = config
        self.targets = targets

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> StageOutcome:
        """Apply the pass to `ctx.model` and return what it measured."""

    def replay(self, ctx: RunContext, record: Record) -> None:  # noqa: B027 - optional
        """Re-create structural changes from a saved record before a checkpoint is loaded."""

    def restore(self, ctx: RunContext, record: Record) -> None:  # noqa: B027 - optional
        """Re-attach state that checkpoints do not hold (e.g. masks) after a checkpoint is loaded."""


def with_suggestions(config: FrozenConfig, suggested: dict[str, Any]) -> FrozenConfig:
    """`config` with each suggested setting (a task's `pass_defaults`) the recipe did not set itself,
    where it is valid beside the others (e.g. `ablation_batches` only with method "ablation").

    Example:
        >>> cfg = with_suggestions(FinetuneConfig(epochs=1), {"lr": 1e-4, "epochs": 9})
        >>> cfg.lr, cfg.epochs
        (0.0001, 1)
    """
    for key, value in suggested.items():
        if key in config.model_fields_set or key not in type(config).model_fields:
            continue
        try:
            updated = type(config).model_validate({**config.model_dump(exclude_unset=True), key: value})
        except ValidationError:
            continue
        config = config.model_copy(update={key: getattr(updated, key)})  # marks the key set too
    return config
