"""Knowledge distillation: losses, students built from teachers, and the distillation trainer."""

from mmcompress.core.lazy import submodule_getattr
from mmcompress.distill.api import distill
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.seq2seq import Seq2SeqRepairConfig, distill_seq2seq
from mmcompress.distill.students import every_kth, keep_layers

__all__ = ["DistillConfig", "Seq2SeqRepairConfig", "distill", "distill_seq2seq", "every_kth", "keep_layers"]

__getattr__ = submodule_getattr(__name__)
