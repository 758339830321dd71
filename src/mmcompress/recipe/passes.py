"""Pass interface and registry; each pass is a small class with a Config and `run`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

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


def build_pass(stage, where: str) -> Pass:
    """Validate a StageSpec against its pass and build the pass."""
    from mmcompress.errors import ConfigError

    load_builtin_passes()
    cls = PASSES.get(stage.pass_)
    config = cls.Config.from_dict(stage.config, f"{where}.config")
    targets = None
    if stage.targets is not None:
        if not cls.accepts_targets:
            raise ConfigError(f"{where}.targets: pass {stage.pass_!r} does not take targets")
        targets = {
            key: None if value is None else cls.Config.from_dict({**stage.config, **value}, f"{where}.targets[{key}]")
            for key, value in stage.targets.items()
        }
    return cls(config, targets)


def validate_stage(stage, where: str) -> None:
    """Raise ConfigError naming the field if the stage's pass or config is invalid."""
    from mmcompress.errors import ConfigError

    try:
        build_pass(stage, where)
    except ConfigError as err:
        msg = str(err)
        raise ConfigError(msg if where in msg else f"{where}.pass: {msg}") from None


def load_builtin_passes() -> None:
    """Import the modules that register the built-in passes."""
    from mmcompress.recipe import builtin_passes, distill_pass, graph_passes, prune_passes  # noqa: F401
