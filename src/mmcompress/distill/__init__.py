"""Knowledge distillation: losses, students built from teachers, and the distillation trainer."""

from mmcompress.distill.api import distill
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.students import every_kth, keep_layers

__all__ = ["DistillConfig", "distill", "every_kth", "keep_layers"]
