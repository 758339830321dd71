"""Markdown + self-contained HTML report with matplotlib plots."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
