"""Which kernel a quantized layer runs on a given input (see `kernels.py` for the kernels).

Rule, from measurements on this project's machine (Xeon with AVX-512 VNNI and AMX, torch 2.13
CPU; see docs/benchmarks.md, minilm-int8 section):
- W8A8 dynamic Linear: oneDNN's int8 GEMM when the input has at least MIN_ROWS rows; below that
  the GEMM is too small for the integer kernel's fixed costs (input quantization, a second
  dequantizing pass) and the float GEMM with the cached weight wins;
- everything else (weight-only, grouped/asymmetric codes, static inputs that `integer_sim`
  does not take, convolutions, embeddings): the cached dequantized weight.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.quant.kernels import INTEGER_KERNELS, integer_applies, skip_fast_paths

MIN_ROWS = 16  # W8A8: rows (tokens x batch) from which the int8 GEMM beats float
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
        rows = x.numel() // x.shape[-1]
        chosen = kernel if kernel in INTEGER_KERNELS else "onednn" if ONEDNN and rows >= MIN_ROWS else "cache"
    else:
        chosen = "cache"
    if not torch.compiler.is_compiling():
        module.__dict__["last_kernel"] = chosen  # plain attribute: no nn.Module bookkeeping per call
    return chosen
