"""Pruning: importance, masks, and the `prune` verb."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
