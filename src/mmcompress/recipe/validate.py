"""Check a recipe against the model before the first stage runs (not minutes later, after the baseline).

Errors: a target that matches no module, a `modality:` target on a model without that tower, an
N:M pattern whose group does not divide a targeted layer's inputs. What works differently from what a
recipe asked (a group size that does not divide a layer's inputs gives it per-channel steps) is
warned by the stage that does it, once, when it runs: quantize's own warning names the layers.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from mmcompress.core.targets import first_match
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for, describe_missing
from mmcompress.models.split_attention import SplitMultiheadAttention
from mmcompress.prune.structured import no_attention_message
from mmcompress.recipe.schema import Recipe

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
HANDLED = {  # layer types a pass works on when a target names one module exactly
    # attention: its q/k/v/out projections (models/split_attention.projection_targets)
    "quantize": (
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Embedding,
        nn.LSTM,
        nn.GRU,
        nn.MultiheadAttention,
        SplitMultiheadAttention,
    ),
    "prune": (nn.Linear, nn.Conv2d, nn.Embedding),
}


def check_recipe(recipe: Recipe, model: nn.Module) -> None:
    """Raise ConfigError for what cannot work on `model`, before the first stage runs.

    Example:
        >>> check_recipe(load_recipe("recipes/w8.yaml"), model)  # raises ConfigError if a target misses
    """
    adapter = adapter_for(model)
    modules = dict(model.named_modules())
    for i, stage in enumerate(recipe.stages):
        where = f"recipe.stages[{i}] ({stage.label})"
        targets = stage.targets or {}
        for key, value in targets.items():
            if value is not None and not _matches_any(key, modules, adapter):
                hint = _hint(key, adapter, model)
                raise ConfigError(f"{where}: target {key!r} matches no module of the model; {hint}")
            handled = HANDLED.get(stage.pass_)
            if value is not None and key in modules and handled and not isinstance(modules[key], handled):
                kinds = ", ".join(sorted({t.__name__ for t in handled}))
                raise ConfigError(
                    f"{where}: target {key!r} is a {type(modules[key]).__name__}, which {stage.pass_} cannot handle "
                    f"({kinds}); target its layers instead (e.g. 're:{key}\\..*')"
                )
        heads = [v for v in (stage.config, *targets.values()) if isinstance(v, dict) and v.get("unit") == "heads"]
        if stage.pass_ == "prune_structured" and heads:
            missing = no_attention_message(model, adapter)
            if missing:
                raise ConfigError(f"{where}: {missing}")
        for name, module, config in _targeted(stage.config, targets, modules, adapter):
            problem = _pattern_misfit(stage.pass_, config, name, module)
            if problem:
                raise ConfigError(f"{where}: {problem}")


def _matches_any(key: str, modules: dict[str, nn.Module], adapter) -> bool:
    if key == "_default":
        return True
    if key.startswith("modality:"):
        return key[len("modality:") :] in adapter.towers
    if key.startswith("re:"):
        return any(re.fullmatch(key[3:], name) for name in modules if name)
    return key in modules


def _hint(key: str, adapter, model: nn.Module) -> str:
    if key.startswith("modality:"):
        if not adapter.towers:
            return describe_missing(model)
        return f"the adapter's towers are {sorted(adapter.towers)}"
    names = [n for n in dict(model.named_modules()) if n][:8]
    return f"module names look like {', '.join(names)}"


def _targeted(config: dict[str, Any], targets: dict, modules: dict[str, nn.Module], adapter):
    """(name, module, effective config) of each weighted layer a stage reaches (first matching key wins)."""
    for name, module in modules.items():
        if not name or not isinstance(module, WEIGHTED):
            continue
        if not targets:
            yield name, module, config
            continue
        value = first_match(targets, name, adapter.modality_of(name))
        if value is not None:
            yield name, module, {**config, **value}


def _pattern_misfit(pass_name: str, config: dict[str, Any], name: str, module: nn.Module) -> str | None:
    pattern = str(config.get("pattern", "unstructured"))
    if pass_name == "prune" and ":" in pattern:
        m = int(pattern.split(":")[1])
        inputs = module.weight[0].numel()
        if inputs % m:
            return (
                f"N:M pattern {pattern} needs the inputs of every targeted layer to be a multiple of {m}; "
                f"{name!r} has {inputs}: exclude it (targets: {{{name!r}: null, _default: {{}}}})"
            )
    return None
