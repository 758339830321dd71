"""Storage formats, ONNX export and runtime."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
