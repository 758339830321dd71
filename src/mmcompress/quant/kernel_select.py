"""Which kernel a quantized layer runs on a given input (see `kernels.py` for the kernels).

A fixed rule, from measurements on this project's machine (Xeon with AVX-512 VNNI and AMX,
torch 2.13 CPU, one thread, medians of interleaved rounds; the machine was shared, so take the
ratios as +-20%). Speed-up over float32 `F.linear`, per-tensor / per-token inputs:

    rows x in x out     oneDNN int8    torch._int_mm   float GEMM, cached weight + simulated input
    4096 x 384 x 1536   2.99 / 1.37    1.00 / 0.96     0.71 / 0.87
    4096 x 1536 x 384   1.39 / 1.00    0.93 / 0.98     0.35 / 0.54
     128 x 384 x 1536   1.29 / 1.60    1.18 / 1.21     0.29 / 0.83
      16 x 384 x 1536   0.96 / 1.37    1.23 / 1.39     0.95 / 1.36
       4 x 384 x 1536   0.70 / 0.80    0.56 / 0.83     0.86 / 0.99
       1 x 384 x 1536   0.39 / 0.43    0.36 / 0.46     0.60 / 0.54

(`torch.ops.aten._weight_int8pack_mm` was 4-50x slower than float here and is not used.) Those
weights fit in the caches. On one row, a weight too large for them makes the float GEMV
memory-bound, and reading int8 codes wins (ms, one row, 2 threads):

    out x in        float32 MB   float GEMV   oneDNN int8 (W8A8)   compiled int8 GEMV (weight-only)
    1536 x 384           2.4        0.050        0.071                0.088
    4096 x 1024         16.8        0.420        0.214                0.337
    8192 x 1024         33.6        0.768        0.374                0.803
    51864 x 384         79.7        1.866        0.666                0.897
    11008 x 4096       180.4        6.029        1.340                2.133

Hence:
- W8A8 dynamic Linear: oneDNN's int8 GEMM from MIN_ROWS rows (tokens x batch), or on any number
  of rows for a weight of BIG_WEIGHTS or more; below that the integer kernel's fixed costs (input
  quantization, a dequantizing pass, oneDNN's call overhead) lose to the float GEMM with the
  cached weight and the simulated input quantization;
- weight-only Linear on one row (decoder steps) with GEMV_WEIGHTS or more weights: the compiled
  int8 GEMV (`kernels.gemv_linear`) where it measured faster than the cached float weight on this
  CPU (`gemv_wins`, timed once per shape: the table above is AVX-512; on an AVX2-only EPYC the GEMV
  was 1.8x slower than float on 51864 x 384);
- W4A8 (steps per group of inputs, dynamic inputs): one oneDNN GEMM per group once rows x out
  reaches GROUPED_WORK (per tensor / per token inputs; below, the cached weight is faster: its
  per-tensor inputs come from the fused codes too). Speed-up over the cached weight, g128, 2
  threads, AVX-512 VNNI without AMX (`torch._int_mm` takes symmetric per-channel codes only):

    in x out      32 rows   64       128      256      512   (per tensor / per token)
    384 x 1536    1.1/0.7   1.4/0.9  1.7/1.2  2.0/1.5  2.1/1.9
    384 x 384     0.5/0.4   0.7/0.5  0.9/0.6  1.2/0.9  1.6/1.3
    256 x 1024    0.9/0.5   1.0/0.7  1.4/1.0  1.9/1.3  2.0/1.5
    1024 x 256    0.4/0.4   0.5/0.5  0.8/0.8  1.0/0.9  1.5/1.5
    256 x 256     0.3/0.3   0.7/0.4  0.7/0.5  0.8/0.5  1.4/0.5

  Break-even sits near rows x out = 50k-100k per tensor and 70k-130k per token. Against the float
  layer they pay only from about 256-512 rows: W4A8 is a configuration for batches (and long
  sequences), where W8A8 per channel already wins from 16 rows;
- everything else (weight-only, static inputs that `integer_sim` does not take, convolutions,
  embeddings): the cached dequantized weight.
"""

from __future__ import annotations

import functools
import math
import time
import warnings

import torch
from torch import nn

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.errors import shortened
from mmcompress.quant.kernels import (
    INTEGER_KERNELS,
    float_weight,
    gemv_applies,
    gemv_linear,
    int_mm_applies,
    integer_applies,
    onednn_applies,
    skip_fast_paths,
)

MIN_ROWS = 16  # W8A8: rows (tokens x batch) from which the int8 GEMM beats float
GROUPED_WORK = {"per_tensor": 96 << 10, "per_token": 128 << 10}  # W4A8: rows x out from which per-group GEMMs win
BIG_WEIGHTS = 4 << 20  # W8A8: weights from which the int8 GEMM beats float on any number of rows
GEMV_WEIGHTS = 16 << 20  # weight-only, one row: weights from which the compiled int8 GEMV beats float
INT_MM_SLOWEST = 2.0  # `torch._int_mm` over float32 GEMM time beyond which it is not a fallback
GEMV_TIMED: dict[tuple, bool] = {}  # (weight shape, step shape, threads) -> the GEMV beat float here
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


def choose_kernel(module: nn.Module, x: torch.Tensor) -> str:
    """The path `module` takes on `x`: "simulate", "cache" or an integer kernel; kept in `last_kernel`.

    Args:
        module: a quantized layer (its `kernel` attribute: "auto" or a forced choice).
        x: the layer's input.

    Example:
        >>> choose_kernel(qlinear, torch.randn(64, qlinear.in_features))
        'onednn'
    """
    kernel = module.kernel
    if kernel == "simulate" or skip_fast_paths(x):
        chosen = "simulate"
    elif kernel != "cache" and getattr(module, "act", None) is not None and integer_applies(module, x):
        rows, big = x.numel() // x.shape[-1], module.qweight.numel() >= BIG_WEIGHTS
        least = MIN_ROWS if module.scale.shape[1] == 1 else grouped_min_rows(module)
        chosen = kernel if kernel in INTEGER_KERNELS else "onednn" if rows >= least or big else "cache"
        chosen = runnable(chosen, module, x)
    elif kernel == "gemv" and gemv_applies(module, x):
        chosen = "gemv"
    elif kernel == "auto" and module.qweight.numel() >= GEMV_WEIGHTS and gemv_applies(module, x):
        chosen = "gemv" if gemv_wins(module, x) else "cache"  # (size first: decoders ask once per layer and token)
    else:
        chosen = "cache"
    if chosen != "simulate" or not torch.compiler.is_compiling():
        module.__dict__["last_kernel"] = chosen  # plain attribute: no nn.Module bookkeeping per call
    return chosen


def gemv_wins(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the compiled int8 GEMV runs this layer's one row faster than the cached float weight on
    this CPU: timed once per weight shape, step shape and thread count (best of 3 calls each).

    The GEMV reads a quarter of float32's bytes but converts every code to float: on the 51864 x 384
    output layer of Whisper tiny.en (2 threads) it took 0.9 ms against float's 1.9 ms on an AVX-512
    EPYC, and 14.8 ms against 8.2 ms on an AVX2-only EPYC, whose compiled loop converts 8 codes a step
    where AVX-512 converts 16. When it loses, the layer keeps the cached float weight (never slower
    than float); when it wins, that cache is dropped (it would hold the float32 weight for nothing).

    Example:
        >>> gemv_wins(big_qlinear, torch.randn(1, 384)) in (True, False)
        True
    """
    key = (tuple(module.qweight.shape), tuple(module.scale.shape), torch.get_num_threads())
    if key not in GEMV_TIMED:
        GEMV_TIMED[key] = _time_gemv(module, x)
    if GEMV_TIMED[key]:
        module.__dict__.pop("_float_weight", None)
    return GEMV_TIMED[key]


def _time_gemv(module: nn.Module, x: torch.Tensor) -> bool:
    weight, bias = float_weight(module, torch.float32), module.bias
    runs = {"gemv": lambda: gemv_linear(module, x), "float": lambda: torch.nn.functional.linear(x, weight, bias)}
    with torch.no_grad():
        if runs["gemv"]() is None:  # it could not compile: the caller falls back on its own
            return False
        runs["float"]()
        best = best_times(runs, rounds=3)
    return best["gemv"] < best["float"]


def best_times(runs: dict, rounds: int) -> dict[str, float]:
    """name -> the shortest of `rounds` timings (seconds) of each callable, the runs interleaved so
    that drift hits them alike.

    Example:
        >>> sorted(best_times({"a": lambda: None, "b": lambda: None}, rounds=2))
        ['a', 'b']
    """
    best = {name: math.inf for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def runnable(kernel: str, module: nn.Module, x: torch.Tensor) -> str:
    """`kernel`, or the other integer kernel where it cannot run this layer exactly, else "cache":
    oneDNN needs codes that fit its u8s8 sums on this CPU (`kernels.onednn_exact`: 8-bit weights on
    AVX2 without VNNI go to `torch._int_mm` where that is fast, `int_mm_fast`, else to the cache),
    `torch._int_mm` symmetric per-channel codes.

    Example:
        >>> runnable("int_mm", w4a8_layer, torch.randn(512, 384))  # steps per group: oneDNN only
        'onednn'
    """
    if kernel not in INTEGER_KERNELS:
        return kernel
    fits = {"onednn": ONEDNN and onednn_applies(module, x), "int_mm": int_mm_applies(module, x)}
    other = "int_mm" if kernel == "onednn" else "onednn"
    if kernel == "onednn" and not fits["onednn"] and fits["int_mm"] and not int_mm_fast():
        return "cache"  # the same numbers on the float weight, at float speed
    return kernel if fits[kernel] else other if fits[other] else "cache"


def warn_float_speed(layers: list[tuple[str, int, bool, bool]]) -> None:
    """Warn when W8A8 dynamic layers [(name, weight bits, symmetric, per_channel)] will run at float
    speed on this CPU: codes wider than oneDNN sums exactly here (the bits, plus one with a zero
    point; AVX2 without VNNI: 7) that `torch._int_mm` cannot take instead (it takes symmetric
    per-channel codes, where it is fast) run on the cached float weight (the same numbers, no int8
    speed-up).

    Example:
        >>> warn_float_speed([("encoder.fc1", 8, True, True)])  # warns on an AVX2-only CPU
    """
    exact = integer_weight_bits()
    int_mm = None  # timed only when a layer needs it

    def float_speed(bits: int, symmetric: bool, per_channel: bool) -> bool:
        nonlocal int_mm
        if bits + (not symmetric) <= exact:
            return False
        if not (symmetric and per_channel):
            return True
        int_mm = int_mm_fast() if int_mm is None else int_mm
        return not int_mm

    wide = [name for name, *code in layers if float_speed(*code)]
    if not wide:
        return
    warnings.warn(
        f"quantize: {len(wide)} layer(s) with dynamic int8 inputs keep float speed on this CPU: its int8 GEMMs "
        f"(u8s8 without VNNI) sum weight codes (minus any zero point) of at most {exact} bits exactly and "
        f"torch._int_mm is slower than float here or cannot take them, so they run on the cached float weight "
        f"(the same numbers); weight_bits 'auto' ({exact} here, symmetric) runs them on int8 GEMMs: {shortened(wide)}",
        UserWarning,
        stacklevel=3,
    )


def warn_auto_bits(narrowed: list[str]) -> None:
    """Say so when weight bits "auto" gave layers on integer kernels fewer than 8 bits because this
    CPU's int8 GEMMs cannot sum 8-bit codes exactly (AVX2 without VNNI: 7), the one choice "auto"
    makes that costs accuracy (real Whisper tiny.en W8A8: WER +4 to +5 points).

    Example:
        >>> warn_auto_bits(["encoder.fc1"])  # warns on an AVX2-only CPU
    """
    bits = integer_weight_bits()
    if not narrowed or bits >= 8:
        return
    warnings.warn(
        f"quantize: weight_bits 'auto' gave {len(narrowed)} layer(s) with integer inputs {bits}-bit weights: this "
        f"CPU's int8 GEMMs (u8s8 without VNNI) sum codes of at most {bits} bits exactly, so {bits} bits keep them on "
        f"the integer kernels at some accuracy (real Whisper tiny.en: WER +4 to +5 points); weight_bits 8 (--bits 8) "
        f"keeps 8 bits at float speed: {shortened(narrowed)}",
        UserWarning,
        stacklevel=3,
    )


@functools.lru_cache(maxsize=1)
def int_mm_fast() -> bool:
    """Whether `torch._int_mm` runs near float32 GEMM speed on this CPU (at most INT_MM_SLOWEST times
    its time on a 128 x 384 x 384 product; timed once per process, best of 3). With VNNI it matched
    float (the table above); on an AVX2-only EPYC it took 57x float's time (1500 x 384 x 1536: 617 ms
    against 10.7 ms), and Whisper tiny.en with an 8-bit W8A8 encoder on it transcribed in 58 s
    instead of 4.7 s. Where it is slow, 8-bit codes oneDNN cannot sum exactly take the cached float
    weight instead (the same numbers).

    Example:
        >>> int_mm_fast() in (True, False)
        True
    """
    a, b = torch.ones(128, 384, dtype=torch.int8), torch.ones(384, 384, dtype=torch.int8)
    af, bf = a.float(), b.float()
    runs = {"int_mm": lambda: torch._int_mm(a, b), "float": lambda: af @ bf}
    try:
        best = best_times(runs, rounds=4)  # the first round warms up
    except RuntimeError:  # a build without it
        return False
    return best["int_mm"] <= INT_MM_SLOWEST * best["float"]


def grouped_min_rows(module: nn.Module) -> int:
    """Rows from which a W4A8 layer (steps per group of inputs) runs its per-group int8 GEMMs.

    Example:
        >>> grouped_min_rows(w4a8_layer_with_384_outputs)  # per-tensor inputs
        256
    """
    return -(-GROUPED_WORK[module.act.granularity] // module.qweight.shape[0])
