"""Core plumbing shared by every technique: configs, targets, registry, records, I/O, batches."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
