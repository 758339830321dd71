"""`quantize(model, config)`: weight-only integer quantization with real int8 storage."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.core.shared_params import weight_groups
from mmcompress.core.targets import require_matches, resolve_targets
from mmcompress.errors import ConfigError, DataError
from mmcompress.models.adapter import adapter_for
from mmcompress.quant.act_calibration import smoothed, smoothquant_factors, static_ranges
from mmcompress.quant.activations import ActSpec
from mmcompress.quant.gptq_apply import gptq_params
from mmcompress.quant.group_fit import fit_group_sizes
from mmcompress.quant.modules import FLOAT_TO_QUANT, WeightGrid
from mmcompress.quant.primitives import sqnr_db
from mmcompress.quant.recurrent import rnn_flat_weight
from mmcompress.quant.skipped import warn_float_left
from mmcompress.quant.tied import tie_quantized, tie_replayed

QUANT_LAYER_TYPES = {  # `layer_types` name -> the layer types `quantize` selects with it
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "embedding": (nn.Embedding,),
    "recurrent": (nn.LSTM, nn.GRU),
}
LAYER_TYPES = {"linear": nn.Linear, "conv": nn.Conv2d, "embedding": nn.Embedding}  # the weight-matrix techniques' set
ACT_TYPES = (nn.Linear, nn.Conv2d)  # layers whose inputs W8A8 quantizes (embeddings look rows up)
GPTQ_TYPES = (nn.Linear, nn.Conv2d)  # layers GPTQ solves; others round to nearest (with a warning)


class GPTQConfig(FrozenConfig):
    """GPTQ settings. The defaults are the field's best practice (GPTQ / AutoGPTQ `desc_act` with
    `static_groups`), chosen by measurement: on all-MiniLM-L6-v2 at W4 g128 (calibrated on 256
    prose sentences, scored on 200 unseen ones) act-order raised mean embedding cosine from 0.9787
    to 0.9821 (symmetric) and from 0.9853 to 0.9878 (asymmetric); on MobileNetV2 W4 per-channel
    top-1 agreement with float went from 0.594 to 0.672 (RTN: 0.082).

    Attributes:
        block_size: columns per lazy-batch block (128).
        damp: Hessian damping, a fraction of its mean diagonal (0.01).
        act_order: process columns by decreasing Hessian diagonal (on). Group steps are fixed from
            the original weight up front (static groups), so groups stay on contiguous columns and
            the storage layout and kernels are unchanged.

    Example:
        >>> GPTQConfig().act_order, GPTQConfig().damp
        (True, 0.01)
    """

    block_size: int = Field(128, ge=1)
    damp: float = Field(0.01, gt=0, le=1)
    act_order: bool = True


class QuantConfig(FrozenConfig):
    """Weight (and Linear input) quantization settings.

    Attributes:
        weight_bits: 2..8. Codes of fewer than 8 bits are bit-packed in the compact file format,
            so the measured size is the packed size.
        scheme: "symmetric" (zero point 0) or "asymmetric" (an int8 zero point per step).
        granularity: "per_channel" (a step per output channel / embedding row), "per_group"
            (a step per `group_size` inputs of a channel) or "per_tensor".
        group_size: inputs per step for "per_group"; must divide each layer's inputs per channel.
        observer: "minmax" (full range) or "mse" (per-step clipping ratio with least squared error).
        activations: "none" (weight-only), "dynamic" (Linear inputs quantized per call) or
            "static" (Linear inputs quantized with a step fixed from calibration data). Both need
            symmetric per-channel weights of 7 or 8 bits; Conv2d inputs are quantized per tensor,
            embeddings stay weight-only. Use
            7-bit weights on x86 CPUs without VNNI: their u8s8 kernels add pairs of products in
            int16, which 8-bit weights overflow.
        act_granularity: "per_tensor" (one uint8 step per call, ONNX DynamicQuantizeLinear) or
            "per_token" (a symmetric step per token; robust to outlier tokens). Dynamic, Linear only.
        act_observer: range observer of "static": "minmax", "percentile", "mse" or "kl".
        smoothquant: SmoothQuant migration strength alpha in (0, 1) (None: off). Divides each input
            channel by s_j = max|x_j|^alpha / max|w_j|^(1-alpha) and folds s into the weight, so
            activation outlier channels shrink; needs calibration data and activations. Linear
            layers only.
        clip_ratio: fraction of each step's range kept with observer "minmax" (see
            `analyze_quantization_error`, which searches it per layer).
        method: "rtn" (round to nearest) or "gptq" (needs calibration data; Linear and Conv2d;
            other layers fall back to rtn with a warning, and the record says so).
        gptq: GPTQ settings.
        layer_types: which layer types `_default`/regex/modality keys select: "linear", "conv"
            (Conv1d, Conv2d), "embedding", "recurrent" (LSTM, GRU: weight-only, a step per gate row).

    Example:
        >>> QuantConfig(weight_bits=4, granularity="per_group", group_size=128).to_dict()["scheme"]
        'symmetric'
    """

    weight_bits: int = Field(8, ge=2, le=8)
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    granularity: Literal["per_channel", "per_group", "per_tensor"] = "per_channel"
    group_size: int = Field(128, ge=2)
    observer: Literal["minmax", "mse"] = "minmax"
    clip_ratio: float = Field(1.0, gt=0, le=1)
    activations: Literal["none", "dynamic", "static"] = "none"
    act_granularity: Literal["per_tensor", "per_token"] = "per_tensor"
    act_observer: Literal["minmax", "percentile", "mse", "kl"] = "minmax"
    smoothquant: float | None = Field(None, gt=0, lt=1)
    method: Literal["rtn", "gptq"] = "rtn"
    gptq: GPTQConfig = GPTQConfig()
    layer_types: tuple[Literal["linear", "conv", "embedding", "recurrent"], ...] = (
        "linear",
        "conv",
        "embedding",
        "recurrent",
    )

    @model_validator(mode="after")
    def _activations_need_int8_channels(self) -> QuantConfig:
        if self.activations != "none" and (
            self.weight_bits not in (7, 8) or self.granularity != "per_channel" or self.scheme != "symmetric"
        ):
            raise ValueError(
                f"activations {self.activations!r} needs weight_bits 7 or 8, granularity 'per_channel' "
                "and scheme 'symmetric'"
            )
        if self.act_granularity == "per_token" and self.activations != "dynamic":
            raise ValueError("act_granularity 'per_token' needs activations 'dynamic'")
        if self.smoothquant is not None and self.activations == "none":
            raise ValueError("smoothquant migrates activation outliers: it needs activations 'dynamic' or 'static'")
        return self

    def act_spec(self) -> ActSpec | None:
        """The activation quantization these settings describe (None: weight-only)."""
        if self.activations == "none":
            return None
        return ActSpec(self.activations, self.act_granularity, self.act_observer)

    def grid(self) -> WeightGrid:
        """The WeightGrid these settings describe."""
        return WeightGrid(
            bits=self.weight_bits,
            symmetric=self.scheme == "symmetric",
            group_size=self.group_size if self.granularity == "per_group" else None,
            per_tensor=self.granularity == "per_tensor",
            observer=self.observer,
            clip_ratio=self.clip_ratio,
        )


def as_mapping(config, cls) -> dict[str, object]:
    """Accept a config, a dict of fields, or a target mapping of key -> config/dict/None."""
    if isinstance(config, cls):
        return {"_default": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected a {cls.__name__} or a target mapping, got {type(config).__name__}")
    target_like = any(isinstance(k, str) and (k.startswith(("re:", "modality:")) or k == "_default") for k in config)
    if not target_like and all(k in cls.model_fields for k in config):
        return {"_default": cls.from_dict(dict(config))}
    return {
        k: (v if v is None or isinstance(v, cls) else cls.from_dict(dict(v), f"targets[{k!r}]"))
        for k, v in config.items()
    }


def quantize(
    model: nn.Module,
    config: QuantConfig | Mapping[str, object] | None = None,
    *,
    calib: Iterable[Any] | None = None,
    max_calib_batches: int | None = None,
) -> Record:
    """Quantize Linear/Conv/Embedding/LSTM/GRU weights in place to integer codes (+ inputs for W8A8).

    Targeted layers that stay float (a type no quantized module exists for, or activations asked
    for a layer that is weight-only) are reported with a warning and in `record.metrics["float_left"]`.

    Args:
        model: edited in place (layers are swapped for Quant* modules holding int8 codes).
        config: one QuantConfig, or a target mapping (exact name, `re:`, `modality:`, `_default`)
            of key -> QuantConfig / dict / None (skip). First match wins. Default: QuantConfig().
        calib: calibration batches (needed by method "gptq", activations "static" and
            smoothquant); every tower with such a target must receive data.
        max_calib_batches: use at most this many calibration batches.

    Returns:
        A Record listing each quantized module with its bits and weight SQNR (dB).

    Example:
        >>> rec = quantize(model, {"modality:text": QuantConfig(weight_bits=8), "_default": None})
        >>> rec.metrics["modules"]
        37.0
    """
    mapping = as_mapping(config if config is not None else QuantConfig(), QuantConfig)
    adapter = adapter_for(model)

    def supported(module: nn.Module) -> bool:
        return type(module) in FLOAT_TO_QUANT

    chosen = [
        (name, module, cfg)
        for name, module, cfg in resolve_targets(model, mapping, supported, adapter.modality_of)
        if any(type(module) in QUANT_LAYER_TYPES[t] for t in cfg.layer_types)
    ]
    require_matches(chosen, mapping, model)
    chosen = fit_group_sizes(chosen)
    float_left = warn_float_left(model, mapping, supported, adapter.modality_of)
    weight_only = [  # embeddings look rows up: they have no input activation to quantize
        n for n, m, c in chosen if c.activations != "none" and not isinstance(m, (*ACT_TYPES, nn.Embedding))
    ]
    if weight_only:
        warnings.warn(
            f"quantize: activations stay float for {len(weight_only)} layer(s) whose type has weight-only "
            f"kernels (Conv1d, LSTM/GRU): {_names(weight_only)}",
            UserWarning,
            stacklevel=2,
        )
    built = _build_quantized(model, chosen, calib, adapter.modality_of, max_calib_batches)
    tie_quantized(model, built)  # tied float weights: one set of codes, stored once
    record = Record("quantize", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    for name, (qmodule, info) in built.items():  # swap only once every layer succeeded
        _replace(model, name, qmodule)
        record.modules[name] = info
    record.metrics["modules"] = float(len(chosen))
    record.metrics["float_left"] = float(len(float_left))
    return record


def _names(names: list[str], show: int = 6) -> str:
    return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")


def _build_quantized(model, chosen, calib, modality_of, max_batches) -> dict[str, tuple[nn.Module, dict]]:
    """Quantized replacements with their record entries; the model itself is left unchanged."""
    act_layers = {n: (m, c) for n, m, c in chosen if isinstance(m, ACT_TYPES) and c.activations != "none"}
    smooth = {
        n: (m, c.smoothquant)
        for n, (m, c) in act_layers.items()
        if c.smoothquant is not None and isinstance(m, nn.Linear)
    }
    static = {n: (m, c.act_observer) for n, (m, c) in act_layers.items() if c.activations == "static"}
    if (smooth or static) and calib is None:
        first = next(iter(smooth or static))
        raise ConfigError(f"smoothquant and static activations need calibration data (layer {first!r}): pass calib=")
    factors = smoothquant_factors(model, smooth, calib, modality_of, max_batches) if smooth else {}
    built = {}
    with smoothed({n: m for n, (m, _) in smooth.items()}, factors):
        ranges = static_ranges(model, static, calib, modality_of, max_batches) if static else {}
        params = _gptq_params(model, chosen, calib, modality_of, max_batches)
        for name, module, cfg in chosen:
            qmodule = _quantize_module(name, module, cfg.grid(), params.get(name))
            spec = _act_spec_for(module, cfg) if name in act_layers else None
            if spec is not None:
                qmodule.set_activations(spec, 1.0 / factors[name] if name in factors else None)
            if name in ranges:
                qmodule.act_step.fill_(ranges[name][0])
                qmodule.act_zero.fill_(ranges[name][1])
            built[name] = (qmodule, _record_entry(name, module, qmodule, cfg, params))
    return built


def _act_spec_for(module: nn.Module, cfg: QuantConfig) -> ActSpec:
    """Linear layers take the configured spec; Conv2d inputs are quantized per tensor."""
    spec = cfg.act_spec()
    return spec if isinstance(module, nn.Linear) else ActSpec(spec.mode, "per_tensor", spec.observer)


def _record_entry(name: str, module: nn.Module, qmodule: nn.Module, cfg: QuantConfig, params: dict) -> dict:
    spec = getattr(qmodule, "act", None)
    return {
        "type": type(qmodule).__name__,
        "bits": cfg.weight_bits,
        "method": "gptq" if name in params else "rtn",
        "activations": "none" if spec is None else asdict(spec),
        "smoothquant": cfg.smoothquant if hasattr(qmodule, "act_smooth") else None,
        "grid": asdict(qmodule.grid),
        "sqnr_db": round(sqnr_db(_float_weight(module), qmodule.dequantized_weight()), 2),
    }


def _gptq_params(model, chosen, calib, modality_of, max_batches) -> dict:
    """GPTQ solutions for the chosen layers whose config asks for it (embeddings: rtn, with a warning)."""
    wanted = {n: (m, c.grid(), c.gptq) for n, m, c in chosen if c.method == "gptq" and type(m) in GPTQ_TYPES}
    skipped = [n for n, m, c in chosen if c.method == "gptq" and type(m) not in GPTQ_TYPES]
    if skipped:
        warnings.warn(
            f"GPTQ solves Linear and Conv2d only; rounding to nearest for {len(skipped)} layer(s) "
            f"(embeddings, Conv1d, LSTM/GRU): {_names(skipped)}",
            UserWarning,
            stacklevel=3,
        )
    if not wanted:
        return {}
    if calib is None:
        raise ConfigError("method 'gptq' needs calibration data: pass calib=<iterable of batches>")
    for name, (module, _, _) in wanted.items():
        _check_finite_weight(name, module)
    return gptq_params(model, wanted, calib, modality_of, max_batches)


def _float_weight(module: nn.Module) -> torch.Tensor:
    return rnn_flat_weight(module) if isinstance(module, nn.RNNBase) else module.weight.detach()


def _check_finite_weight(name: str, module: nn.Module) -> None:
    if not torch.isfinite(_float_weight(module)).all():
        raise DataError(f"layer {name!r} has NaN or Inf weights; it cannot be quantized")


def _quantize_module(name: str, module: nn.Module, grid: WeightGrid, params: tuple | None = None) -> nn.Module:
    """Quantize one layer; problems are errors that name the layer."""
    _check_finite_weight(name, module)
    try:
        return FLOAT_TO_QUANT[type(module)].from_float(module, grid, params)
    except ValueError as err:
        raise ConfigError(f"layer {name!r} ({type(module).__name__}): {err}") from None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new.train(getattr(parent, child).training)  # the replacement keeps the layer's mode
    setattr(parent, child, new)


def replay_quantize(model: nn.Module, record: Record) -> None:
    """Re-create the quantized module structure of `record` (values come from a state dict after).

    Example:
        >>> replay_quantize(fresh_model, Record.from_dict(saved))
    """
    tied = weight_groups(model, list(record.modules))  # tied float weights share their codes again
    for name, info in record.modules.items():
        module = model.get_submodule(name)
        grid = WeightGrid(**info["grid"]) if "grid" in info else WeightGrid(bits=int(info["bits"]))
        qmodule = FLOAT_TO_QUANT[type(module)].from_float(module, grid)
        spec = activation_spec(info.get("activations", "none"))
        if spec is not None or info.get("smoothquant") is not None:
            smooth = torch.ones(module.weight.shape[1]) if info.get("smoothquant") is not None else None
            qmodule.set_activations(spec, smooth)
        _replace(model, name, qmodule)
    tie_replayed(model, tied)


def activation_spec(entry: str | dict) -> ActSpec | None:
    """The ActSpec a record entry describes ("none", "dynamic" or the ActSpec fields)."""
    if entry == "none":
        return None
    if entry == "dynamic":
        return ActSpec("dynamic")
    return ActSpec(**entry)
