"""Choose a config per module by name: exact name, `re:` regex, `modality:` tag or `_default`.

The first matching key wins (torchao's FqnToConfig, Distiller's overrides). A value of
`None` means "skip this module".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from mmcompress.errors import ConfigError, UnsupportedError

LAYER_TYPES = {"linear": nn.Linear, "conv": nn.Conv2d, "embedding": nn.Embedding}  # `layer_types` of weight techniques


def _key_matches(key: str, name: str, modality: str | None) -> bool:
    if key == "_default":
        return True
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    if key.startswith("modality:"):
        return modality == key[len("modality:") :]
    return key == name


def validate_mapping(mapping: Mapping[str, Any]) -> None:
    """Check that every key is well formed and every regex compiles."""
    if not mapping:
        raise ConfigError("target mapping is empty; give at least one key such as '_default'")
    for key in mapping:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"target key {key!r} must be a non-empty string")
        if key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as err:
                raise ConfigError(f"target key {key!r} is not a valid regex: {err}") from None


def resolve_targets(
    model: nn.Module,
    mapping: Mapping[str, Any],
    is_supported: Callable[[nn.Module], bool],
    modality_of: Callable[[str], str | None],
) -> Iterator[tuple[str, nn.Module, Any]]:
    """Yield `(name, module, config)` for every supported module with a non-None config.

    An exact-name key that names an unsupported or missing module is an error.

    Args:
        model: the model to walk.
        mapping: ordered mapping of key -> config (or None to skip).
        is_supported: predicate for module types the algorithm can handle.
        modality_of: maps a module name to its modality tag (or None).

    Example:
        >>> list(resolve_targets(model, {"modality:text": None, "_default": cfg},
        ...                      lambda m: isinstance(m, nn.Linear), adapter.modality_of))
    """
    validate_mapping(mapping)
    yield from _matches(model, mapping, is_supported, modality_of)


def first_match(mapping: Mapping[str, Any], name: str, modality: str | None) -> Any:
    """The config of the first key that matches `name` (None: no key matches, or the key skips it).

    Example:
        >>> first_match({"re:head.*": None, "_default": 8}, "encoder.fc", None)
        8
    """
    for key, config in mapping.items():
        if _key_matches(key, name, modality):
            return config
    return None


def _matches(model, mapping, is_supported, modality_of):
    modules = dict(model.named_modules())
    for key in mapping:
        if key.startswith(("re:", "modality:")) or key == "_default":
            continue
        if key not in modules:
            raise ConfigError(f"target {key!r} names no module of the model")
        if mapping[key] is not None and not is_supported(modules[key]):
            hint = (
                f"; target its layers instead (e.g. 're:{re.escape(key)}\\..*')"
                if any(True for _ in modules[key].children())
                else ""  # a leaf layer of a type the technique does not handle
            )
            raise UnsupportedError(
                f"target {key!r} is a {type(modules[key]).__name__}, which this algorithm does not support{hint}"
            )
    for name, module in modules.items():
        if not name or not is_supported(module):
            continue
        config = first_match(mapping, name, modality_of(name))
        if config is not None:
            yield name, module, config


def as_mapping(config, cls) -> dict[str, object]:
    """Accept a config, a dict of fields, or a target mapping of key -> config/dict/None."""
    if isinstance(config, cls):
        return {"_default": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected a {cls.__name__} or a target mapping, got {type(config).__name__}")
    target_like = any(isinstance(k, str) and (k.startswith(("re:", "modality:")) or k == "_default") for k in config)
    if not target_like and all(k in cls.model_fields for k in config):
        return {"_default": cls.from_dict(dict(config))}
    not_configs = [k for k, v in config.items() if not (v is None or isinstance(v, (cls, Mapping)))]
    if not_configs:  # a flat dict of fields with a misspelled one, not a target mapping
        unknown = [k for k in config if k not in cls.model_fields]
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {unknown}; fields are {sorted(cls.model_fields)} "
            "(or give a target mapping: name / 're:...' / 'modality:...' / '_default' -> config)"
        )
    return {
        k: (v if v is None or isinstance(v, cls) else cls.from_dict(dict(v), f"targets[{k!r}]"))
        for k, v in config.items()
    }
