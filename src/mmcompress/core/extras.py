"""Optional dependencies: a feature imports its package through `require`, so a missing one is a
one-line error naming the extra to install, not a traceback.

Extras (pyproject.toml): hf (transformers, sentence-transformers, the packaged MiniLM), auto
(optuna), report (matplotlib), data (scikit-learn, scipy), ray.

Example:
    >>> optuna = require("optuna", "auto", "the compression search")
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mmcompress.errors import MissingExtraError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError: "<feature> needs <package>: pip install 'mmcompress[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = (err.name or module).split(".")[0]
        raise MissingExtraError(
            f"{feature} needs the {missing!r} package, which is not installed: pip install 'mmcompress[{extra}]'"
        ) from None
