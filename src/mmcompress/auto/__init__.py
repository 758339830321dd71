"""Automatic compression: search per-modality plans under constraints, keep the Pareto frontier,
evaluate robustness, and explain the choice in a report."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
