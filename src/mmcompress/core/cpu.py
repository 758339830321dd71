"""What the CPU's integer instructions can do, and the weight bits integer kernels should use.

x86 u8 x s8 dot products come in two kinds:
- AVX2 without VNNI (`vpmaddubsw`) multiplies pairs of uint8 x int8 and adds each pair into an
  int16 that saturates: 255 * 127 * 2 = 64770 > 32767, so 8-bit weights can overflow; 7-bit
  weights (|code| <= 63: 255 * 63 * 2 = 32130) cannot. ONNX Runtime's MatMulInteger and
  fbgemm use this path on such CPUs.
- AVX-512 VNNI / AVX-VNNI (`vpdpbusd`) and AMX (`tdpbusd`, `tdpbssd`) add products straight into
  int32: no saturation, 8-bit weights are exact.

`integer_weight_bits` turns that into the weight bits W8A8 layers default to; records keep the
features and the choice (`integer_kernel_info`) so a result can be traced to the CPU it was made for.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

FLAGS = {  # our name -> the /proc/cpuinfo flag
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
    "avx512_bf16": "avx512_bf16",
    "amx_bf16": "amx_bf16",
}


@dataclass(frozen=True)
class CpuFeatures:
    """The integer-relevant instruction sets of this CPU.

    Attributes:
        arch: machine name ("x86_64", "aarch64", ...).
        avx2, avx512f, avx512_vnni, avx_vnni, amx_int8, avx512_bf16, amx_bf16: instruction sets present.
        source: where they came from ("/proc/cpuinfo", "torch" or "none").

    Example:
        >>> CpuFeatures("x86_64", avx2=True).vnni
        False
    """

    arch: str
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx_int8: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False
    source: str = "none"

    @property
    def vnni(self) -> bool:
        """u8s8 products accumulate in int32 (VNNI or AMX): 8-bit weights cannot saturate."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    @property
    def bf16(self) -> bool:
        """bfloat16 matrix tiles (AMX): bf16 matrix products beat float32. AVX-512 BF16 alone does not
        (Whisper's 1500 x 1500 attention, 2 threads: float32 16 ms, bf16 25 ms on such a Xeon)."""
        return self.amx_bf16

    def to_dict(self) -> dict:
        return {**asdict(self), "vnni": self.vnni, "bf16": self.bf16}


def parse_cpuinfo(text: str, arch: str = "x86_64") -> CpuFeatures:
    """Features from the text of /proc/cpuinfo (the first `flags` line).

    Example:
        >>> parse_cpuinfo("flags : fpu avx2 avx512f avx512_vnni").avx512_vnni
        True
    """
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            return CpuFeatures(arch, **{name: flag in flags for name, flag in FLAGS.items()}, source="/proc/cpuinfo")
    return CpuFeatures(arch)


def from_torch_capability(capability: str, arch: str) -> CpuFeatures:
    """Features implied by `torch.backends.cpu.get_cpu_capability()` ("AVX2", "AVX512", "DEFAULT", ...).

    Torch does not report VNNI; "AVX512" is taken as AVX-512 without VNNI (the cautious answer).

    Example:
        >>> from_torch_capability("AVX2", "x86_64").avx2
        True
    """
    cap = capability.upper()
    avx512 = "AVX512" in cap
    return CpuFeatures(arch, avx2=avx512 or "AVX2" in cap, avx512f=avx512, source="torch")


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's features: /proc/cpuinfo where it exists (Linux), else torch's CPU capability.

    Example:
        >>> cpu_features().arch == platform.machine()
        True
    """
    arch = platform.machine()
    info = Path("/proc/cpuinfo")
    try:
        features = parse_cpuinfo(info.read_text(), arch) if info.exists() else None
    except OSError:
        features = None
    if features is not None and features.source != "none":
        return features
    try:
        import torch

        return from_torch_capability(torch.backends.cpu.get_cpu_capability(), arch)
    except (ImportError, AttributeError):
        return CpuFeatures(arch)


def integer_weight_bits(features: CpuFeatures | None = None) -> int:
    """Weight bits for layers that run on u8s8 integer kernels: 7 on x86 with AVX2 but no VNNI/AMX
    (pairs of products saturate int16 there), 8 everywhere else.

    Example:
        >>> integer_weight_bits(CpuFeatures("x86_64", avx2=True))
        7
        >>> integer_weight_bits(CpuFeatures("x86_64", avx2=True, avx512_vnni=True))
        8
    """
    features = cpu_features() if features is None else features
    return 7 if features.avx2 and not features.vnni else 8


def integer_kernel_info(features: CpuFeatures | None = None) -> dict:
    """What a record keeps about the CPU: its features and the weight bits `weight_bits: auto` picks on it.

    Example:
        >>> integer_kernel_info()["auto_weight_bits"] in (7, 8)
        True
    """
    features = cpu_features() if features is None else features
    return {"cpu": features.to_dict(), "auto_weight_bits": integer_weight_bits(features)}  # what "auto" picks here
