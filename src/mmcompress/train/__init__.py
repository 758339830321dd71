"""Training: tasks (loss + evaluation per model kind) and one loop with AMP and torch.distributed."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
