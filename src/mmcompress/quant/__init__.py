"""Quantization: pure primitives, integer-storage modules and the `quantize` verb."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
