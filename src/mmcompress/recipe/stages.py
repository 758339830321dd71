"""Recipe stages built from the registered passes; importing this module registers the built-in
passes (evaluate, quantize, prune, distill, graph passes, ...)."""

from __future__ import annotations

from mmcompress.errors import ConfigError
from mmcompress.recipe import builtin_passes, distill_pass, graph_passes, prune_passes, tune_pass  # noqa: F401  (register)
from mmcompress.recipe.passes import PASSES, Pass


def build_pass(stage, where: str) -> Pass:
    """Validate a StageSpec against its pass and build the pass."""
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
    try:
        build_pass(stage, where)
    except ConfigError as err:
        msg = str(err)
        raise ConfigError(msg if where in msg else f"{where}.pass: {msg}") from None
