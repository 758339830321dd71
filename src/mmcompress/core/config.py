"""Base class for frozen, self-validating configs that round-trip to JSON/YAML."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mmcompress.errors import ConfigError

C = TypeVar("C", bound="FrozenConfig")
_NESTED: ContextVar[int] = ContextVar("mmcompress_config_depth", default=0)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into one line naming each bad field and what is allowed.

    Example:
        >>> try:
        ...     QuantConfig(weight_bits=1)
        ... except ValidationError as e:
        ...     format_validation_error(e, "quantize")
    """
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}'")
        else:
            parts.append(f"'{where}': {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


class FrozenConfig(BaseModel):
    """Frozen pydantic model that forbids unknown fields.

    Example:
        >>> class MyConfig(FrozenConfig):
        ...     bits: int = 8
        >>> MyConfig.from_dict({"bits": 4}).to_dict()
        {'bits': 4}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        depth = _NESTED.get()
        token = _NESTED.set(depth + 1)  # pydantic calls __init__ for nested configs too
        try:
            super().__init__(**data)
        except ValidationError as err:  # the outermost direct call names the field, like from_dict
            if depth:
                raise
            raise ConfigError(format_validation_error(err, type(self).__name__)) from None
        finally:
            _NESTED.reset(token)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
        """Validate a plain dict, raising ConfigError that names the bad field."""
        token = _NESTED.set(_NESTED.get() + 1)
        try:
            return cls.model_validate(data or {})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, where or cls.__name__)) from None
        finally:
            _NESTED.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """YAML text that `from_yaml` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        """Parse YAML text into this config."""
        return cls.from_dict(yaml.safe_load(text) or {})


def yaml_error_line(err: Exception, source: str) -> str:
    """A YAML parse error as one line naming line and column ("recipe.yaml line 4, column 7: ...").

    Example:
        >>> yaml_error_line(err, "recipes/w8.yaml")
    """
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"{source} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
    context = getattr(err, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")
