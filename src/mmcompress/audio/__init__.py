"""Audio as a modality: log-mel features, spoken-digit and real-speech datasets, word error rate."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
