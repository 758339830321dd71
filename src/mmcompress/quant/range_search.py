"""Static activation ranges chosen per layer by the error they cause in the layer's *output*.

An input observer (minmax, percentile, mse, kl) judges a range by the input alone, but what a
clipped or coarse input costs depends on the weights that read it: a channel with large
weights suffers from a clipped outlier, one with tiny weights does not care. `act_observer:
"search"` scores candidate ranges by the squared error of the layer's output, W (fq(x) - x)
(bias-free: the layer is linear in its input error), on calibration inputs, and keeps the best
per layer (the per-layer choice of AIMET's and TensorRT's calibrators, by the error that
matters downstream).

Candidates: the min/max range shrunk by ratios on a geometric grid, and the percentile range.
Pure math: `candidate_ranges`, `output_error`. Plumbing (`act_calibration.static_ranges`) feeds
`RangeSearch` the first `samples` rows of the stream, so the choice does not depend on batching.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.quant.activations import fake_quantize_static, static_params

SEARCH_RATIOS = 16  # shrink ratios of the min/max range tried, geometric in [MIN_RATIO, 1]
MIN_RATIO = 0.2
SEARCH_SAMPLES = 16  # calibration rows (images, sequences) the errors are measured on


def candidate_ranges(lo: float, hi: float, extra: tuple[tuple[float, float], ...] = ()) -> list[tuple[float, float]]:
    """Ranges to try: (lo, hi) (widened to include 0) times ratios in [MIN_RATIO, 1], then `extra`.

    Example:
        >>> candidate_ranges(-1.0, 2.0)[-1]
        (-1.0, 2.0)
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    ratios = torch.logspace(math.log10(MIN_RATIO), 0.0, SEARCH_RATIOS, dtype=torch.float64).tolist()
    return [(lo * r, hi * r) for r in ratios[:-1]] + [(lo, hi), *extra]


def output_error(module: nn.Module, x: torch.Tensor, lo: float, hi: float) -> float:
    """Sum of squared output error of `module` when its input x is quantized to uint8 on [lo, hi].

    Linear: x (..., in); Conv1d/Conv2d: x (B, C, ...). The bias cancels (the layer is affine).

    Example:
        >>> output_error(nn.Linear(4, 2), torch.randn(8, 4), -3.0, 3.0) >= 0
        True
    """
    step, zero = static_params(lo, hi)
    err = fake_quantize_static(x.float(), torch.tensor(step), torch.tensor(float(zero))) - x.float()
    weight = module.weight.detach().float()
    if isinstance(module, nn.Linear):
        out = F.linear(err, weight)
    elif isinstance(module, nn.Conv2d):
        out = F.conv2d(err, weight, None, module.stride, module.padding, module.dilation, module.groups)
    elif isinstance(module, nn.Conv1d):
        out = F.conv1d(err, weight, None, module.stride, module.padding, module.dilation, module.groups)
    else:
        raise TypeError(f"output_error handles Linear and Conv1d/Conv2d, not {type(module).__name__}")
    return float(out.double().pow(2).sum())


class RangeSearch:
    """Summed output error of each candidate range over the first `samples` rows fed to `update`.

    Example:
        >>> search = RangeSearch(layer, candidate_ranges(0.0, 6.0))
        >>> search.update(x)
        >>> lo, hi = search.best()
    """

    def __init__(self, module: nn.Module, candidates: list[tuple[float, float]], samples: int = SEARCH_SAMPLES) -> None:
        if not candidates:
            raise ValueError("RangeSearch needs at least one candidate range")
        self.module, self.candidates, self.samples = module, candidates, samples
        self.errors = [0.0] * len(candidates)
        self.seen = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the errors of x's rows (dim 0) while fewer than `samples` rows were seen."""
        take = min(self.samples - self.seen, x.shape[0])
        if take <= 0:
            return
        rows = x[:take]
        for i, (lo, hi) in enumerate(self.candidates):
            self.errors[i] += output_error(self.module, rows, lo, hi)
        self.seen += take

    def best(self) -> tuple[float, float]:
        """The candidate with the smallest summed error (the first of equals)."""
        if self.seen == 0:
            raise ValueError("no values observed")
        return self.candidates[min(range(len(self.errors)), key=self.errors.__getitem__)]
