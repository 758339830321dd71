"""Errors raised by mmcompress. Each message says what is wrong and what to do."""

from __future__ import annotations


class MMCompressError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(MMCompressError, ValueError):
    """A config, recipe or target mapping is invalid (the message names the field)."""


class DataError(MMCompressError):
    """Data is missing, corrupted, empty or contains NaN/Inf."""


class ModelError(MMCompressError):
    """A model name, checkpoint or module is unknown or incompatible."""


class UnsupportedError(MMCompressError):
    """An algorithm was asked to handle a layer type it cannot handle."""


def shortened(names: list[str], show: int = 6) -> str:
    """The first `show` names, comma-separated, and how many more (for warnings that name layers).

    Example:
        >>> shortened(["a", "b", "c"], show=2)
        'a, b and 1 more'
    """
    return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")


def unknown_name(kind: str, name: str, valid: list[str]) -> str:
    """Build the standard 'unknown X' message that lists valid names.

    Example:
        >>> unknown_name("model", "foo", ["a", "b"])
        "unknown model 'foo'; valid names: a, b"
    """
    return f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}"


class MissingExtraError(MMCompressError, ImportError):
    """An optional dependency a feature needs is not installed (names the pip extra)."""
