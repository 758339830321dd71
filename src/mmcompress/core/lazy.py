"""Attribute access to a package's submodules on first use (PEP 562), so that
`import mmcompress; mmcompress.graph.export.export_onnx` works without importing every module."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def submodule_getattr(package: str) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `package.<name>` when `name` is one of its submodules.

    Example:
        >>> __getattr__ = submodule_getattr(__name__)  # in a package's __init__.py
    """

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
