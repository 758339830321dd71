"""CPU feature detection and the integer weight-bits rule (7 bits only where u8s8 kernels saturate)."""

import json

from mmcompress.core.cpu import (
    CpuFeatures,
    cpu_features,
    from_torch_capability,
    integer_kernel_info,
    integer_weight_bits,
    parse_cpuinfo,
)

SAPPHIRE = "processor : 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8\n"
HASWELL = "processor : 0\nflags\t\t: fpu sse avx avx2 fma\n"


def test_parse_cpuinfo_reads_the_flags_line():
    f = parse_cpuinfo(SAPPHIRE)
    assert (f.avx2, f.avx512f, f.avx512_vnni, f.avx_vnni, f.amx_int8, f.vnni) == (True,) * 6
    assert f.source == "/proc/cpuinfo"
    assert not f.bf16 and parse_cpuinfo(SAPPHIRE.replace("amx_int8", "amx_int8 amx_bf16")).bf16
    cooper = parse_cpuinfo(SAPPHIRE.replace("avx_vnni", "avx_vnni avx512_bf16"))  # AVX-512 BF16 without AMX
    assert cooper.avx512_bf16 and not cooper.to_dict()["bf16"]  # measured slower than float32 there
    h = parse_cpuinfo(HASWELL)
    assert h.avx2 and not h.avx512f and not h.vnni and not h.bf16
    assert parse_cpuinfo("no flags here").source == "none"


def test_weight_bits_are_seven_only_on_avx2_without_vnni():
    assert integer_weight_bits(parse_cpuinfo(HASWELL)) == 7
    assert integer_weight_bits(parse_cpuinfo(SAPPHIRE)) == 8
    assert integer_weight_bits(CpuFeatures("x86_64", avx2=True, avx_vnni=True)) == 8
    assert integer_weight_bits(CpuFeatures("aarch64")) == 8  # no x86 u8s8 saturation


def test_torch_capability_fallback_is_cautious():
    assert from_torch_capability("AVX512", "x86_64").avx512f and not from_torch_capability("AVX512", "x86_64").vnni
    assert integer_weight_bits(from_torch_capability("AVX2", "x86_64")) == 7
    assert not from_torch_capability("DEFAULT", "aarch64").avx2


def test_this_machine_info_is_json():
    info = integer_kernel_info()
    assert json.loads(json.dumps(info)) == info
    assert info["auto_weight_bits"] == integer_weight_bits(cpu_features())
