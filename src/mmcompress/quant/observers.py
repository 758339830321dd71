"""Range observers: choose the clipping range [lo, hi] of a tensor before quantizing (pure math).

- minmax: the full range.
- percentile: the p-th and (100-p)-th percentiles (robust to rare outliers).
- mse: the clipping ratio of the min/max range that minimises the quantization error.
- kl: TensorRT-style entropy calibration: the threshold whose quantized histogram keeps the
  Kullback-Leibler divergence to the original histogram smallest (for activations).

`RangeAccumulator` applies one of them to a stream of calibration batches; its range depends only
on the values and their order, never on how they are split into batches.
"""

from __future__ import annotations

import math

import torch

from mmcompress.quant.primitives import affine_params, code_range, dequantize_affine, quantize_affine

OBSERVERS = ("minmax", "percentile", "mse", "kl")


def minmax_range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of x, widened to include 0.

    Example:
        >>> minmax_range(torch.tensor([1.0, 3.0]))
        (0.0, 3.0)
    """
    return min(float(x.min()), 0.0), max(float(x.max()), 0.0)


def percentile_range(x: torch.Tensor, percentile: float = 99.99) -> tuple[float, float]:
    """(p_low, p_high) percentiles of x (linear interpolation, as torch.quantile), widened to include 0.

    Exact for any size: only the few order statistics in each tail are selected.

    Example:
        >>> percentile_range(torch.arange(101.0), 99.0)
        (0.0, 99.0)
    """
    _check_percentile(percentile)
    flat = x.detach().flatten().float()
    k = min(flat.numel(), _tail_rank(flat.numel(), percentile)[1] + 1)
    top, bottom = flat.topk(k).values, flat.topk(k, largest=False).values
    return _tails_percentile(top, bottom, flat.numel(), percentile)


def _check_percentile(percentile: float) -> None:
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")


def _tail_rank(n: int, percentile: float) -> tuple[float, int]:
    """Position j of the percentile counted from the far end of n sorted values, and ceil(j)."""
    j = (100.0 - percentile) * (n - 1) / 100.0
    if abs(j - round(j)) < 1e-9 * max(1.0, j):  # 99.99 is not exact in binary: snap float noise
        j = float(round(j))
    return j, math.ceil(j)


def _tails_percentile(top: torch.Tensor, bottom: torch.Tensor, n: int, percentile: float) -> tuple[float, float]:
    """Percentile range from the largest values (descending) and smallest values (ascending) of n values."""
    j, c = _tail_rank(n, percentile)
    f = math.floor(j)
    top_f, top_c, bottom_f, bottom_c = float(top[f]), float(top[c]), float(bottom[f]), float(bottom[c])
    hi = top_c + (c - j) * (top_f - top_c)
    lo = bottom_f + (j - f) * (bottom_c - bottom_f)
    return min(lo, 0.0), max(hi, 0.0)


def _fake_quant_range(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    qlo, qhi = code_range(bits, symmetric=False)
    scale = max(hi - lo, 1e-12) / (qhi - qlo)
    zero = qlo - round(lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, qlo, qhi) - zero) * scale


def mse_range(x: torch.Tensor, bits: int = 8, steps: int = 40) -> tuple[float, float]:
    """Shrink the min/max range by the ratio (searched geometrically in [0.01, 1]) with the smallest error.

    Example:
        >>> lo, hi = mse_range(torch.randn(10000), bits=4)
    """
    lo, hi = minmax_range(x)
    best, best_err = (lo, hi), float("inf")
    for ratio in torch.logspace(-2, 0, steps).tolist():
        err = float((_fake_quant_range(x, lo * ratio, hi * ratio, bits) - x).pow(2).mean())
        if err < best_err:
            best, best_err = (lo * ratio, hi * ratio), err
    return best


def kl_range(x: torch.Tensor, bits: int = 8, bins: int = 2048) -> tuple[float, float]:
    """Threshold minimising KL(P || Q) between the |x| histogram and its quantized version:
    symmetric (2^(bits-1) levels per side) for signed data, [0, threshold] with all 2^bits levels
    for non-negative data (ReLU outputs).

    Exact zeros are left out of the histogram: every range represents them exactly, and after a
    ReLU they are often most of the values, which made the first bin dominate the divergence and
    picked thresholds that clipped almost everything (MobileNetV2 W8A8: top-1 agreement 0.13).

    Example:
        >>> lo, hi = kl_range(torch.randn(100000))
    """
    flat = x.detach().flatten().float()
    amax = float(flat.abs().max())
    if amax == 0:
        return 0.0, 0.0
    signed = float(flat.min()) < 0
    magnitudes = flat.abs()
    hist = torch.histc(magnitudes[magnitudes > 0], bins=bins, min=0, max=amax).double()
    levels = 2 ** (bits - 1) if signed else 2**bits
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1, max(1, bins // 256)):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()  # clip the tail into the last bin
        q = _requantize_histogram(hist[:i], levels)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = (best_i + 0.5) * amax / bins
    return (-threshold if signed else 0.0), threshold


def _requantize_histogram(p: torch.Tensor, levels: int) -> torch.Tensor:
    """Merge `p` into `levels` buckets and spread each bucket evenly over its non-empty bins."""
    idx = torch.div(torch.arange(len(p)) * levels, len(p), rounding_mode="floor")
    sums = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, p)
    counts = torch.zeros(levels, dtype=p.dtype).index_add_(0, idx, (p > 0).to(p.dtype))
    return torch.where(p > 0, sums[idx] / counts[idx].clamp_min(1), torch.zeros_like(p))


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-30)
    mask = p > 0
    return float((p[mask] * (p[mask] / q[mask].clamp_min(1e-12)).log()).sum())


def observe_range(x: torch.Tensor, method: str, bits: int = 8) -> tuple[float, float]:
    """Dispatch to one observer by name (an allow-list).

    Example:
        >>> observe_range(torch.randn(1000), "percentile")
    """
    if method == "minmax":
        return minmax_range(x)
    if method == "percentile":
        return percentile_range(x)
    if method == "mse":
        return mse_range(x, bits)
    if method == "kl":
        return kl_range(x, bits)
    raise ValueError(f"unknown observer {method!r}; valid: {', '.join(OBSERVERS)}")


_HASH_BITS = 31  # position hashes are int32 values in [0, 2^31)
_PERIOD = 1_000_003  # a prime: the hash table repeats with a period that no tensor layout shares
_TABLE: dict[str, torch.Tensor] = {}


def _mix32(x):
    """A bijective 32-bit integer hash of values in [0, 2^32) (int64 tensors or Python ints; no overflow)."""
    mask = (1 << 32) - 1
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    return x ^ (x >> 16)


def _hash_table() -> dict[str, torch.Tensor]:
    """Hashes of the offsets 0 .. _PERIOD - 1, and the offsets sorted by hash (built once)."""
    if not _TABLE:
        table = (_mix32(torch.arange(_PERIOD, dtype=torch.int64)) >> (32 - _HASH_BITS)).int()
        sorted_hash, order = table.sort()
        _TABLE.update(table=table, sorted=sorted_hash, order=order)
    return _TABLE


def _cut(level: int) -> int:
    """Largest hash kept at a sampling level (rate 2^-level); fits int32."""
    return ((1 << _HASH_BITS) >> level) - 1


class RangeAccumulator:
    """A range observer fed batch by batch, with bounded memory; the range does not depend on batching.

    Feeding one tensor whole, or split into batches along its first dimension, gives the same
    range, because everything kept is a function of the stream of values (in row-major order):
    - the exact min and max;
    - percentile: the exact `tail` largest and smallest values, enough for the exact percentile of
      up to `tail / (1 - p/100)` values (99.99: 164M); beyond that, of the sample below;
    - mse/kl (and the percentile fallback): a pseudo-random sample of `sample / 2` to `sample`
      values. Stream position i has a hash: a fixed table of hashes over a prime period, XOR-ed
      with a hash of (seed, i // period). The sample holds the positions whose hash is below
      2^(31 - level); the level rises (the rate halves) only while the stream so far would not fit,
      so it ends as the smallest level that fits the whole stream, whatever the batching.

    Example:
        >>> acc = RangeAccumulator("percentile")
        >>> for batch in torch.randn(8, 1000).split(2):
        ...     acc.update(batch)
        >>> lo, hi = acc.range()
    """

    def __init__(self, method: str, bits: int = 8, percentile: float = 99.99, tail: int = 1 << 14,
                 sample: int = 1 << 18, seed: int = 0) -> None:  # fmt: skip
        if method not in OBSERVERS:
            raise ValueError(f"unknown observer {method!r}; valid: {', '.join(OBSERVERS)}")
        _check_percentile(percentile)
        self.method, self.bits, self.percentile = method, bits, percentile
        self.tail, self.sample, self.seed = tail, sample, seed
        self.count = 0
        self.lo, self.hi = float("inf"), float("-inf")
        self.top = self.bottom = torch.empty(0)
        self.level = 0
        self.hashes, self.values = torch.empty(0, dtype=torch.int32), torch.empty(0)

    def update(self, x: torch.Tensor) -> None:
        """Add the values of x (flattened in row-major order) to the stream; NaN or Inf is a ValueError."""
        flat = x.detach().reshape(-1).float()
        if flat.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(flat))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("observed values hold NaN or Inf")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if self.method == "percentile":
            self.top = _keep_extreme(self.top, flat, self.tail, largest=True)
            self.bottom = _keep_extreme(self.bottom, flat, self.tail, largest=False)
        if self.method != "minmax":
            self._sample(flat)
        self.count += flat.numel()

    def _sample(self, flat: torch.Tensor) -> None:
        parts = self._parts(flat.numel())
        while self.values.numel() + sum(self._members(p, count_only=True) for p in parts) > self.sample:
            self.level += 1  # the stream so far does not fit: halve the rate, also for what is kept
            keep = self.hashes <= _cut(self.level)
            self.hashes, self.values = self.hashes[keep], self.values[keep]
        members = [self._members(p) for p in parts]
        index = torch.cat([m[0] for m in members])
        self.values = torch.cat([self.values, flat[index]])
        self.hashes = torch.cat([self.hashes] + [m[1] for m in members])

    def _parts(self, n: int) -> list[tuple[int, int, int, int]]:
        """(salt, offset in the period, length, index in the batch) of each period the batch touches."""
        parts, pos, end = [], self.count, self.count + n
        while pos < end:
            block, offset = divmod(pos, _PERIOD)
            take = min(_PERIOD - offset, end - pos)
            salt = _mix32(_mix32(block & 0xFFFFFFFF) ^ _mix32(((block >> 32) + self.seed) & 0xFFFFFFFF))
            parts.append((salt >> (32 - _HASH_BITS), offset, take, pos - self.count))
            pos += take
        return parts

    def _members(self, part: tuple[int, int, int, int], count_only: bool = False):
        """Batch indices and hashes of the part's positions in the sample at this level, or only how many
        there are. A whole period takes its indices in the table's hash order: `range` sorts the sample."""
        salt, offset, take, start = part
        table = _hash_table()
        if self.level == 0:  # everything
            if count_only:
                return take
            return torch.arange(start, start + take), table["table"][offset : offset + take] ^ salt
        if take < _PERIOD:  # part of a period: test each position, O(take)
            hashes = table["table"][offset : offset + take] ^ salt
            keep = hashes <= _cut(self.level)
            if count_only:
                return int(keep.sum())
            index = keep.nonzero().flatten()
            return index + start, hashes[index]
        # a whole period, O(period / 2^level): hash ^ salt <= cut when the top `level` bits of hash are
        # those of salt, which is one run of the table sorted by hash
        low_bits = _HASH_BITS - self.level
        first = (salt >> low_bits) << low_bits
        run = torch.tensor([first, first + (1 << low_bits) - 1], dtype=torch.int32)
        begin = int(torch.searchsorted(table["sorted"], run[:1]))
        end = int(torch.searchsorted(table["sorted"], run[1:], right=True))
        if count_only:
            return end - begin
        candidates = table["order"][begin:end]
        return candidates + start, table["table"][candidates] ^ salt

    def range(self) -> tuple[float, float]:
        """The observer's (lo, hi) over everything seen so far."""
        if self.count == 0:
            raise ValueError("no values observed")
        if self.method == "minmax":
            return min(self.lo, 0.0), max(self.hi, 0.0)
        if self.method == "percentile" and _tail_rank(self.count, self.percentile)[1] < self.top.numel():
            return _tails_percentile(self.top, self.bottom, self.count, self.percentile)
        values = self.values.sort().values  # one order whatever the batching: sums round the same way
        if self.method == "percentile":
            return percentile_range(values, self.percentile)
        if self.level > 0:  # a strict sample: mse and kl still start from the true min/max
            values = torch.cat([values, torch.tensor([self.lo, self.hi])])
        return observe_range(values, self.method, self.bits)


def _keep_extreme(kept: torch.Tensor, flat: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """The k largest (descending) or smallest (ascending) of kept and flat together.

    flat goes in chunks of growing size, so that the k-th value found so far screens most of it
    with one comparison and only the values beyond it are sorted.
    """
    start, size = 0, 4 * k
    while start < flat.numel():
        chunk = flat[start : start + size]
        if kept.numel() >= k:  # only values beyond the current k-th can enter
            chunk = chunk[chunk > kept[-1]] if largest else chunk[chunk < kept[-1]]
        if chunk.numel():
            both = torch.cat([kept, chunk]) if kept.numel() else chunk
            kept = both.topk(min(k, both.numel()), largest=largest).values
        start, size = start + size, 2 * size
    return kept


def mse_clip_ratios(
    groups: torch.Tensor, bits: int, symmetric: bool, steps: int = 20, importance: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-group clipping ratio of the weight range (searched in [0.5, 1]) minimising squared error.

    (out, G, g) -> (out, G). Used by the `mse` weight observer. `importance` (G, g), optional:
    a weight per input column (GPTQ passes the Hessian diagonal, the mean squared input of each
    column), so the error that counts is the one the layer's output sees.

    Example:
        >>> mse_clip_ratios(torch.randn(4, 2, 64), 4, True).shape
        torch.Size([4, 2])
    """

    best_err = torch.full(groups.shape[:2], float("inf"))
    best_ratio = torch.ones(groups.shape[:2])
    for ratio in torch.linspace(0.5, 1.0, steps).tolist():
        scale, zero = affine_params(groups, bits, symmetric, ratio)
        deq = dequantize_affine(quantize_affine(groups, scale, zero, bits, symmetric), scale, zero)
        err = (deq - groups.float()).pow(2)
        err = (err if importance is None else err * importance).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio
