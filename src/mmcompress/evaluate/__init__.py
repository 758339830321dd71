"""Task metrics, size/latency measurement."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
