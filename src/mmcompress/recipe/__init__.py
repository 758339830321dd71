"""Recipes: a YAML list of registered passes, validated and run stage by stage."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
