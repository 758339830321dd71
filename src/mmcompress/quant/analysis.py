"""Quantization-error analysis: per layer, weight error, SQNR and output error on calibration data,
and a layer-wise search for the clipping ratio (step) that minimises the output error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mmcompress.core.targets import LAYER_TYPES, as_mapping, resolve_targets
from mmcompress.core.walker import grouped_weight, layer_columns, run_calibration
from mmcompress.errors import ConfigError
from mmcompress.models.adapter import adapter_for, require_matches
from mmcompress.quant.api import QuantConfig
from mmcompress.quant.gptq import accumulate_hessian
from mmcompress.quant.modules import FLOAT_TO_QUANT, quantize_weight
from mmcompress.quant.primitives import dequantize_affine, sqnr_db

RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


@dataclass
class LayerError:
    """Error numbers of one layer at its config's grid, and the best clipping ratio found."""

    name: str
    modality: str | None
    bits: int
    mean_abs_error: float
    sqnr_db: float
    output_rel_error: float
    best_clip_ratio: float
    best_output_rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dequantized(weight: torch.Tensor, cfg: QuantConfig, ratio: float) -> torch.Tensor:
    grid = cfg.model_copy(update={"clip_ratio": ratio, "observer": "minmax"}).grid()
    codes, scale, zero = quantize_weight(weight, grid)
    return dequantize_affine(codes.reshape(weight.shape[0], scale.shape[1], -1), scale, zero).view_as(weight)


def _output_error(gram: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    """Relative output error ||X (W' - W)^T||^2 / ||X W^T||^2 over every calibration row, from the
    input Gram matrix per group: gram (g, k, k) = mean X^T X, w and wq (g, out / g, k)."""
    d = (wq - w).double()
    ref = ((w.double() @ gram) * w.double()).sum()  # tr(W G W^T) summed over groups
    return float(((d @ gram) * d).sum() / ref.clamp_min(1e-30))


def analyze_quantization_error(
    model: nn.Module,
    config: QuantConfig | Mapping[str, object],
    calib: Iterable[Any],
    ratios: tuple[float, ...] = RATIOS,
    max_batches: int | None = None,
) -> list[LayerError]:
    """Per targeted layer: mean |w - w'|, weight SQNR, relative output error on calibration inputs,
    and the clipping ratio with the lowest output error. The model is not changed.

    Embedding tables have no matrix product: their output error is the weight error of the rows.

    Args:
        model: the float model.
        config: QuantConfig or target mapping, as for `quantize`.
        calib: calibration batches (every targeted tower must receive data).
        ratios: clipping ratios searched.
        max_batches: use at most this many batches.

    Example:
        >>> rows = analyze_quantization_error(model, QuantConfig(weight_bits=4), batches)
        >>> quantize(model, best_step_mapping(rows, QuantConfig(weight_bits=4)))
    """
    mapping = as_mapping(config, QuantConfig)
    adapter = adapter_for(model)
    chosen = [
        (n, m, c)
        for n, m, c in resolve_targets(model, mapping, lambda m: type(m) in FLOAT_TO_QUANT, adapter.modality_of)
        if any(type(m) is LAYER_TYPES.get(t) for t in c.layer_types)
    ]
    require_matches(chosen, mapping, model)
    grams: dict[str, tuple[torch.Tensor, int]] = {}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        cols = layer_columns(module, x.float())  # (g, rows, k)
        g, _, k = cols.shape
        gram, n = grams.get(name, (torch.zeros(g, k, k, dtype=torch.float64), 0))
        grams[name] = accumulate_hessian(gram, n, cols)

    matmuls = {n: m for n, m, _ in chosen if not isinstance(m, nn.Embedding)}
    if matmuls:
        run_calibration(model, matmuls, calib, collect, adapter.modality_of, max_batches)
    return [_layer_error(n, m, c, grams.get(n, (None,))[0], adapter.modality_of(n), ratios) for n, m, c in chosen]


def _layer_error(name, module, cfg, gram, modality, ratios) -> LayerError:
    w = module.weight.detach().float().reshape(module.weight.shape[0], -1)
    try:
        wq = _dequantized(w, cfg, 1.0)
    except ValueError as err:
        raise ConfigError(f"layer {name!r} ({type(module).__name__}): {err}") from None
    err = (
        (lambda q: _output_error(gram, grouped_weight(module, w), grouped_weight(module, q)))
        if gram is not None
        else (lambda q: float((q - w).pow(2).sum() / w.pow(2).sum()))
    )
    search = {r: err(_dequantized(w, cfg, r)) for r in ratios}
    best = min(search, key=search.get)
    return LayerError(
        name, modality, cfg.weight_bits, float((w - wq).abs().mean()), round(sqnr_db(w, wq), 3),
        err(wq), best, search[best],
    )  # fmt: skip


def best_step_mapping(rows: list[LayerError], base: QuantConfig) -> dict[str, QuantConfig]:
    """A target mapping that quantizes each analysed layer with its best clipping ratio.

    Example:
        >>> quantize(model, best_step_mapping(rows, QuantConfig(weight_bits=4)))
    """
    return {r.name: base.model_copy(update={"clip_ratio": r.best_clip_ratio, "observer": "minmax"}) for r in rows}


def error_table(rows: list[LayerError]) -> list[list[str]]:
    """Rows for a Markdown/HTML table, worst output error first."""
    out = [["layer", "tower", "bits", "mean abs error", "SQNR dB", "output rel. error", "best clip", "after search"]]
    for r in sorted(rows, key=lambda r: -r.output_rel_error):
        out.append(
            [
                r.name,
                r.modality or "-",
                str(r.bits),
                f"{r.mean_abs_error:.2e}",
                f"{r.sqnr_db:.1f}",
                f"{r.output_rel_error:.2e}",
                f"{r.best_clip_ratio:.2f}",
                f"{r.best_output_rel_error:.2e}",
            ]
        )
    return out
