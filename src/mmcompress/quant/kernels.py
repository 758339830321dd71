"""Fast PyTorch kernels for quantized layers; the float simulation stays the reference.

Each quantized module has a `kernel` attribute:
- "auto" (default): the fastest applicable path below, chosen per layer shape (`kernel_select.py`);
- "simulate": the reference: dequantize the codes on every call (no extra memory);
- "cache": keep the dequantized float weight between calls (float32: 4 bytes per weight, on top of
  the int8 codes) and recompute it only when `qweight`/`scale`/`zero_point` change (their version
  counter or storage moved, e.g. `load_state_dict`, `.to()`); weight-only layers then run exactly as
  fast as float layers. The cache is neither a buffer nor saved (state_dict, deepcopy, pickle drop it);
- "onednn": W8A8 dynamic Linear on oneDNN's int8 GEMM (`torch.ops.onednn.qlinear_pointwise`,
  u8s8 with int32 accumulation: VNNI / AMX), the dequantization fused into its epilogue;
- "int_mm": W8A8 dynamic Linear on `torch._int_mm` (int8 x int8 -> int32), rows in L2-sized chunks;
- "gemv": a weight-only Linear on one row (a decoder step) computed straight from the int8 codes by
  a `torch.compile`d multiply-reduce (inductor fuses the dequantization into the reduction, as
  gpt-fast's int8 weight-only path does): it reads 1 byte per weight instead of 4, so on weights
  too large for the caches (Whisper's 51864 x 384 output layer) it runs about 2x faster than the
  float GEMV. It compiles once per weight shape (a few seconds); without a working compiler the
  layer falls back to "cache" with a warning.

The integer kernels compute exactly the integers of the simulation (same input codes, same weight
codes, int32 sums) and differ from it only in the float rounding of the final scaling: a relative
difference of a few float32 ulps per layer. Across a deep model those ulps move a few later input codes
across rounding boundaries, so whole outputs drift further (all-MiniLM-L6-v2 W8A8: cosine 0.997 to
the simulation, each layer fed the same input within 1e-5): two equally good quantized models.
They apply to float32 CPU inputs without autograd, outside
tracing/compiling (there the simulation runs, which inductor fuses). "int_mm" takes symmetric
per-channel weights of at most 8 bits; "onednn" also takes zero points (codes of at most 7 bits:
codes - zero fit int8) and steps per group of inputs (W4A8: 4-bit g128 codes): one int8 GEMM per
group, each adding its scaled product into the first one's output (oneDNN's "sum" post-op). On AVX2
without VNNI oneDNN's u8s8 sums saturate int16 pairs, so it takes symmetric codes of at most 7 bits
and zero-point codes of at most 6 there (`onednn_exact`); wider codes run on "int_mm" or the cache
(a forced "onednn" too: `kernel_select.runnable`), never on a kernel that would round them wrong. At
1500 x 384 x 1536 (2 threads, AVX-512 VNNI) three 128-input groups cost 1.45x one per-channel GEMM,
still 3x faster than the float GEMM. Per-tensor inputs use ONNX DynamicQuantizeLinear's uint8
codes (u8 with a zero point on oneDNN; shifted to int8 with an exact column-sum correction on
`_int_mm`); per-token inputs use symmetric int8 codes with one step per row (on oneDNN plus 128
as uint8 with zero point 128: signed int8 inputs ran on a reference kernel on an AVX-512 VNNI CPU
without AMX, 5-15 s for one 1500 x 384 x 1536 product). `module.last_kernel` says which path the
last call took.

Example:
    >>> set_kernel(model, "simulate")  # the reference path everywhere, no float weight cache
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.cpu import integer_weight_bits
from mmcompress.quant.fused_codes import fused, tensor_qparams_eager, token_codes_eager

KERNELS = ("auto", "simulate", "cache", "onednn", "int_mm", "gemv")
INTEGER_KERNELS = ("onednn", "int_mm")
CHUNK_BYTES = 1 << 20  # int_mm: rows per chunk so one chunk's float output stays in L2
ACTIVATED = "_mmcompress_activated"  # output tag: the int8 kernel applied the layer's `post_act` (fuse_act.py)
ARMED = "_mmcompress_fuse_armed"  # set by the owner's pre-hook for the one call that may fuse (fuse_act.py)
SIBLINGS = "_mmcompress_siblings"  # QuantLinear.__dict__ entry: its query/key/value group (siblings.py)
ONEDNN_ACT = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def set_kernel(model: nn.Module, kernel: str) -> int:
    """Set `kernel` on every quantized layer of `model`; returns how many layers were set.

    Args:
        model: a model holding quantized layers (or one layer).
        kernel: one of KERNELS.

    Example:
        >>> set_kernel(model, "cache")
        12
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
    n = 0
    for module in model.modules():
        if hasattr(module, "qweight") and hasattr(module, "kernel"):
            module.kernel = kernel
            module.__dict__.pop("_float_weight", None)
            module.__dict__["_kernel_cache"] = {}
            n += 1
    return n


def skip_fast_paths(x: torch.Tensor | None = None) -> bool:
    """Tracing, exporting, compiling, or autograd through `x`: the reference path must run."""
    if torch._C._is_tracing() or torch.compiler.is_compiling():  # (torch.jit.is_tracing without its wrapper)
        return True
    return x is not None and x.requires_grad and torch.is_grad_enabled()


def has_hooks(module: nn.Module) -> bool:
    """Whether `module` (or every module: global hooks) has forward or backward hooks."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return bool(module._forward_hooks or module._forward_pre_hooks or getattr(module, "_backward_hooks", None))


def version_key(buffers: dict) -> tuple:
    """Identity and version of the codes and steps (and the codes' storage): any change
    (load_state_dict, `.to()`, an in-place edit, `.data =`) gives a new key."""
    codes = buffers["qweight"]
    key = (id(codes), codes._version, codes.data_ptr())
    for name in ("scale", "zero_point", "act_smooth"):
        t = buffers.get(name)
        key += (None,) if t is None else (id(t), t._version)
    return key


def bias_key(module: nn.Module) -> tuple:
    """Identity and version of the module's bias (None when it has none)."""
    bias = module._parameters.get("bias")
    return (None,) if bias is None else (id(bias), bias._version)


def _cached(module: nn.Module, name: str, build):
    """`build()` kept in module._kernel_cache[name] until the codes/steps (or the bias) change."""
    cache = module.__dict__.setdefault("_kernel_cache", {})
    key = version_key(module._buffers) + bias_key(module)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = (key, build())
        cache[name] = hit
    return hit[1]


def float_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight in `dtype`, cached (the caller checked that caching is allowed).

    The check runs on every call of a weight-only layer (decoders call them once per token), so it
    only compares identities and version counters.

    Example:
        >>> float_weight(qlinear, torch.float32).shape == qlinear.qweight.shape
        True
    """
    buffers = module._buffers
    codes, scale, zero = buffers["qweight"], buffers["scale"], buffers.get("zero_point")
    hit = module.__dict__.get("_float_weight")
    if (
        hit is not None
        and hit[0] is codes
        and hit[1] == codes._version
        and hit[2] is scale
        and hit[3] == scale._version
        and hit[4] is zero
        and (zero is None or hit[5] == zero._version)
        and hit[6] == dtype
        and hit[7] == codes.data_ptr()
    ):
        return hit[8]
    weight = module.dequantized_weight().to(dtype)
    if scale.requires_grad:  # steps being trained: nothing to cache
        return weight
    version = None if zero is None else zero._version
    entry = (codes, codes._version, scale, scale._version, zero, version, dtype, codes.data_ptr(), weight.detach())
    module.__dict__["_float_weight"] = entry
    return entry[8]


def integer_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """True when an int8 kernel may run `module` on `x` (fast paths allowed, see the module
    docstring): dynamic inputs, weight codes of at most 8 bits per channel or per group.
    `onednn_applies` and `int_mm_applies` add what each kernel needs of the codes."""
    act, buffers = module.act, module._buffers
    return (
        act is not None
        and act.mode == "dynamic"
        and module.simulate_activations
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and buffers["qweight"].dim() == 2
        and module.grid.bits <= 8
        and x.shape[-1] == buffers["qweight"].shape[1]
        and not buffers["scale"].requires_grad
        and x.numel() > 0
    )


def onednn_exact(module: nn.Module) -> bool:
    """Whether oneDNN's u8s8 GEMM sums this layer's weight codes exactly on this CPU: the codes (minus
    their zero point: one bit wider than the codes) span at most `integer_weight_bits()` bits, 8 with
    VNNI / AMX, 7 on AVX2 without them, whose `vpmaddubsw` adds pairs of uint8 x int8 products into
    an int16 that saturates (8-bit weights there: a 384 x 1536 layer off by 26% per token, silently)."""
    span = module.grid.bits + (module._buffers.get("zero_point") is not None)
    return span <= integer_weight_bits()


def onednn_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """True when oneDNN's int8 GEMM may run `module` on `x`: `integer_applies` and `onednn_exact`."""
    return onednn_exact(module) and integer_applies(module, x)


def int_mm_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """True when `torch._int_mm` may run `module` on `x`: `integer_applies` and symmetric
    per-channel weight codes (one step per output column). Its int8 x int8 products are exact on
    every CPU (no pairwise int16 sums), so 8-bit codes run on it where oneDNN's would saturate."""
    buffers = module._buffers
    return buffers["scale"].shape[1] == 1 and buffers.get("zero_point") is None and integer_applies(module, x)


def tensor_qparams(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """ONNX DynamicQuantizeLinear's uint8 step and zero point for the whole input (step 1, zero 0 if all zeros)."""
    step, zero = tensor_qparams_eager(x)
    return step, int(zero)


def input_codes(x: torch.Tensor, qparams: tuple[torch.Tensor, int] | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Integer codes of a (M, K) float32 input as the simulation forms them, their step and zero point.

    qparams None (per token): int8 codes round(x / step), step = max|row| / 127 per row, shape
    (M, 1), zero 0. qparams (step, zero) (per tensor, from `tensor_qparams`): uint8 codes
    clamp(round(x / step) + zero, 0, 255).

    Example:
        >>> codes, step, zero = input_codes(torch.randn(4, 8), None)
    """
    if qparams is None:
        codes, step = token_codes_eager(x)
        return codes, step, 0
    step, zero = qparams
    return torch.div(x, step).round_().add_(zero).clamp_(0, 255).to(torch.uint8), step, zero


def _chunks(x2: torch.Tensor, n: int, per_token: bool):
    """Row chunks of x2 small enough for one chunk's (rows, n) float32 output to stay in L2, with codes."""
    qparams = None if per_token else tensor_qparams(x2)
    rows = max(32, CHUNK_BYTES // (4 * n))
    for start in range(0, x2.shape[0], rows):
        yield start, input_codes(x2[start : start + rows], qparams)


def _onednn_operands(module: nn.Module) -> tuple:
    """`onednn_operands` of the module's codes, steps, zero points and bias."""
    bias = None if module.bias is None else module.bias.detach()
    return onednn_operands(module.qweight, module.scale, bias, module._buffers.get("zero_point"))


def onednn_operands(
    codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, zero: torch.Tensor | None = None
) -> tuple:
    """(N, K) codes, (N, G) steps (G groups of K / G inputs), optional (N, G) zero points and an
    optional (N,) bias as oneDNN's operands: per group, the packed int8 weight codes - zero (exact:
    at most 7-bit codes with a zero point) and its (N,) steps; zero weight zero points; the bias."""
    n, k = codes.shape
    groups = scale.shape[1]
    size = k // groups
    ints = codes if zero is None else (codes.short() - zero.short().repeat_interleave(size, dim=1)).to(torch.int8)
    steps = scale.float()
    prepack = torch.ops.onednn.qlinear_prepack
    parts = tuple(
        (prepack(ints[:, g * size : (g + 1) * size].contiguous(), None), steps[:, g].contiguous())
        for g in range(groups)
    )
    bias = None if bias is None else bias.float().contiguous()
    return parts, torch.zeros(n, dtype=torch.long), bias


def onednn_linear(
    module: nn.Module, x2: torch.Tensor, per_token: bool, smooth: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, K) float32 -> (M, N) float32 on oneDNN's int8 GEMM. Per tensor: uint8 codes with a zero
    point, every step and the bias applied in its epilogue. Per token: int8 codes, the row steps
    and bias applied after it. The input codes (and the per-token rescale) come from one compiled
    pass each, or for small per-tensor inputs from ATen's quantize (`fused_codes`)."""
    operands = _cached(module, "onednn", lambda: _onednn_operands(module))
    act = module.post_act if module.__dict__.get(ARMED) else None
    return onednn_gemm(x2, operands, per_token, smooth, act)


def onednn_gemm(x2: torch.Tensor, operands: tuple, per_token: bool, smooth: torch.Tensor | None, act: str | None):
    """`onednn_linear` on prepared operands (per group: packed weight and steps; zero points; bias)."""
    parts, w_zero, bias = operands
    if not per_token:
        codes, step, zero = fused("tensor", x2, smooth)
        if len(parts) == 1:  # one call: steps, zero point, bias and a fused GELU all in the kernel
            unary, algorithm = ONEDNN_ACT.get(act, ("none", ""))
            args = (codes, float(step), int(zero), *parts[0], w_zero, bias, 1.0, 0, torch.float32)
            return torch.ops.onednn.qlinear_pointwise(*args, unary, [], algorithm)
        y = _group_sums(codes, float(step), int(zero), parts, w_zero, bias)
        return y if act is None else F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")
    codes, step = fused("token_u8", x2, smooth)  # uint8, zero point 128 (signed inputs are slow on x86)
    y = _group_sums(codes, 1.0, 128, parts, w_zero, None)
    return fused("rescale", y, step, bias, act)  # act(sums * w_scale * step + bias) in one pass


def _group_sums(codes: torch.Tensor, step: float, zero: int, parts: tuple, w_zero: torch.Tensor, bias) -> torch.Tensor:
    """sum over groups g of step * w_step_g * (codes_g - zero) @ w_codes_g^T (+ bias): one oneDNN call
    per group, each adding its product into the first call's output (oneDNN's "sum" post-op)."""
    size = codes.shape[1] // len(parts)
    (packed, w_scale), rest = parts[0], parts[1:]
    first = codes if not rest else codes[:, :size]
    y = torch.ops.onednn.qlinear_pointwise(
        first, step, zero, packed, w_scale, w_zero, bias, 1.0, 0, torch.float32, "none", [], ""
    )
    for g, (packed, w_scale) in enumerate(rest, start=1):
        part = codes[:, g * size : (g + 1) * size]
        args = (part, step, zero, packed, w_scale, w_zero, y, None, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0)
        torch.ops.onednn.qlinear_pointwise.binary(*args, "none", [], "")  # adds into y in place
    return y


def _int_mm_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    codes = module.qweight.to(torch.int8)
    return codes.t().contiguous(), codes.sum(1, dtype=torch.int32)  # (K, N), (N,)


def int_mm_linear(module: nn.Module, x2: torch.Tensor, per_token: bool) -> torch.Tensor:
    """(M, K) float32 -> (M, N) float32 on torch._int_mm, in row chunks (M > 16 per call: padded).

    Per tensor, uint8 codes q become int8 q - 128: sum (q - z) w = sum (q - 128) w + (128 - z) sum w.
    """
    w_t, col_sums = _cached(module, "int_mm", lambda: _int_mm_weight(module))
    w_scale = _cached(module, "w_scale", lambda: module.scale.reshape(-1).float().contiguous())
    out = torch.empty(x2.shape[0], w_t.shape[1])
    for start, (codes, step, zero) in _chunks(x2, w_t.shape[1], per_token):
        if not per_token:
            codes = codes.view(torch.int8).add_(-128)  # uint8 bits - 128 wraps to exactly q - 128
        r = codes.shape[0]
        acc = torch._int_mm(codes if r > 16 else F.pad(codes, (0, 0, 0, 17 - r)), w_t)[:r]
        yc = out[start : start + r]
        torch.mul(acc, w_scale, out=yc)
        if not per_token:
            yc.addcmul_(col_sums.float(), w_scale, value=128 - zero)
        yc.mul_(step)
        if module.bias is not None:
            yc.add_(module.bias)
    return out


RUNNERS = {"onednn": onednn_linear, "int_mm": int_mm_linear}
_GEMV: dict = {}  # "fn": the compiled multiply-reduce, "broken": why compiling failed


def gemv_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """True when the compiled weight-only GEMV may run `module` on `x`: one float32 CPU row, codes
    of at most 8 bits with steps per output channel or per group, no input quantization."""
    buffers = module._buffers
    return (
        getattr(module, "act", None) is None
        and "act_smooth" not in buffers
        and "broken" not in _GEMV
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.numel() == x.shape[-1]
        and buffers["qweight"].dim() == 2
        and x.shape[-1] == buffers["qweight"].shape[1]
        and module.grid.bits <= 8
        and not buffers["scale"].requires_grad
    )


def _gemv_reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor):
    """x (K,), codes (N, G, g) int8, scale/zero (N, G), bias (N,) -> (N,): sum_k x_k (c_nk - z) s."""
    sums = ((codes.float() - zero.float()[..., None]) * x.view(codes.shape[1], codes.shape[2])).sum(-1)
    return (sums * scale).sum(-1) + bias


def gemv_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """One row through a weight-only QuantLinear from its int8 codes; None if compiling failed
    (the caller then uses the cached float weight).

    Example:
        >>> y = gemv_linear(big_qlinear, torch.randn(1, 384))
    """
    if "fn" not in _GEMV:
        _GEMV["fn"] = torch.compile(_gemv_reference, dynamic=False)

    def operands():
        codes = module.qweight.reshape(module.qweight.shape[0], module.scale.shape[1], -1).to(torch.int8)
        n = codes.shape[0]
        bias = torch.zeros(n) if module.bias is None else module.bias.detach().float()
        return codes.contiguous(), module.scale.float().contiguous(), module._zero().to(torch.int8).contiguous(), bias

    codes, scale, zero, bias = _cached(module, "gemv", operands)
    try:
        y = _GEMV["fn"](x.reshape(-1).contiguous(), codes, scale, zero, bias)
    except Exception as err:  # no C++ compiler, an unsupported build: keep working on the float cache
        import warnings

        _GEMV["broken"] = f"{type(err).__name__}: {err}"[:300]
        warnings.warn(f"the compiled int8 GEMV is unavailable ({_GEMV['broken']}); using cached float weights",
                      stacklevel=2)  # fmt: skip
        return None
    return y.view(*x.shape[:-1], y.shape[0])


def integer_linear(module: nn.Module, x: torch.Tensor, kernel: str) -> torch.Tensor:
    """Run a W8A8 dynamic QuantLinear on `kernel`: (..., K) float32 -> (..., N) float32.

    Example:
        >>> y = integer_linear(qlinear, torch.randn(64, 384), "onednn")
    """
    smooth = getattr(module, "act_smooth", None)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], module.qweight.shape[0])
    per_token = module.act.granularity == "per_token"
    if kernel == "onednn":  # the smoothing multiply happens inside the compiled quantization pass
        out = onednn_linear(module, x2.contiguous(), per_token, smooth).view(*x.shape[:-1], -1)
        if module.__dict__.get(ARMED) and getattr(module, "post_act", None) is not None:
            module.__dict__[ARMED] = False  # one fused call per owner forward
            setattr(out, ACTIVATED, module.post_act)  # FusedActivation passes it through
        return out
    y = RUNNERS[kernel](module, x2 * smooth if smooth is not None else x2.contiguous(), per_token)
    return y.view(*x.shape[:-1], y.shape[-1])
