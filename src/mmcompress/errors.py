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


def unknown_name(kind: str, name: str, valid: list[str]) -> str:
    """Build the standard 'unknown X' message that lists valid names.

    Example:
        >>> unknown_name("model", "foo", ["a", "b"])
        "unknown model 'foo'; valid names: a, b"
    """
    return f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}"


class MissingExtraError(MMCompressError, ImportError):
    """An optional dependency a feature needs is not installed (names the pip extra)."""
