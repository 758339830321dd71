"""`quantize(model, config)`: integer weights (2-8 bits, packed storage), optionally with dynamic or
static integer activations (W8A8), GPTQ or round-to-nearest, per target."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from mmcompress.core.cpu import integer_kernel_info
from mmcompress.core.record import Record
from mmcompress.core.shared_params import modules_sharing_weight, weight_groups
from mmcompress.core.targets import as_mapping, resolve_targets
from mmcompress.errors import ConfigError, DataError, shortened
from mmcompress.models.adapter import adapter_for, require_matches
from mmcompress.models.split_attention import projection_targets, split_attention, split_targeted
from mmcompress.quant.act_calibration import smoothed, smoothquant_factors, static_ranges
from mmcompress.quant.activations import ActSpec
from mmcompress.quant.codes import kept_range_ratios
from mmcompress.quant.config import GPTQConfig, QuantConfig  # noqa: F401  (public here too)
from mmcompress.quant.fuse_act import fuse_activations
from mmcompress.quant.gptq_apply import gptq_params
from mmcompress.quant.group_fit import fit_group_sizes
from mmcompress.quant.kernel_select import warn_auto_bits, warn_float_speed
from mmcompress.quant.modules import FLOAT_TO_QUANT, QUANT_LAYERS, WeightGrid
from mmcompress.quant.primitives import sqnr_db
from mmcompress.quant.recurrent import rnn_flat_weight
from mmcompress.quant.siblings import link_siblings
from mmcompress.quant.skipped import warn_float_left
from mmcompress.quant.tied import tie_quantized, tie_replayed, with_tied_partners

QUANT_LAYER_TYPES = {  # `layer_types` name -> the layer types `quantize` selects with it
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "embedding": (nn.Embedding,),
    "recurrent": (nn.LSTM, nn.GRU),
}
ACT_TYPES = (nn.Linear, nn.Conv2d)  # layers whose inputs W8A8 quantizes (embeddings look rows up)
GPTQ_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)  # layers GPTQ solves; others round to nearest (with a warning)


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
    mapping = projection_targets(model, as_mapping(config if config is not None else QuantConfig(), QuantConfig))
    adapter = adapter_for(model)
    split = split_targeted(model, mapping, adapter.modality_of, own_name=False)  # q/k/v/out as Linear layers

    def supported(module: nn.Module) -> bool:
        return type(module) in FLOAT_TO_QUANT

    chosen = [
        (name, module, cfg)
        for name, module, cfg in resolve_targets(model, mapping, supported, adapter.modality_of)
        if any(type(module) in QUANT_LAYER_TYPES[t] for t in cfg.layer_types)
    ]
    if not chosen and any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise ConfigError(
            f"{type(model).__name__} is already quantized (its layers hold integer codes); quantize the float model"
        )
    if not chosen and supported(model):  # resolve_targets walks submodules: the root cannot be swapped
        raise ConfigError(
            f"quantize replaces layers inside a model, and this {type(model).__name__} is itself the layer: "
            "wrap it (model = nn.Sequential(layer)) and quantize that"
        )
    require_matches(chosen, mapping, model)
    chosen = with_tied_partners(model, fit_group_sizes(chosen), mapping, supported)  # one matrix, one grid
    float_left = warn_float_left(model, mapping, supported, adapter.modality_of)
    weight_only = [  # embeddings look rows up: they have no input activation to quantize
        n for n, m, c in chosen if c.activations != "none" and not isinstance(m, (*ACT_TYPES, nn.Embedding))
    ]
    if weight_only:
        warnings.warn(
            f"quantize: activations stay float for {len(weight_only)} layer(s) whose type has weight-only "
            f"kernels (Conv1d, LSTM/GRU): {shortened(weight_only)}",
            UserWarning,
            stacklevel=2,
        )
    float_input_convs = [
        n for n, m, c in chosen if c.activations != "none" and isinstance(m, nn.Conv2d) and not c.integer_channels
    ]
    if float_input_convs:
        warnings.warn(
            f"quantize: activations stay float for {len(float_input_convs)} convolution(s): integer convolutions "
            f"need symmetric per-channel 7/8-bit weights: {shortened(float_input_convs)}",
            UserWarning,
            stacklevel=2,
        )
    chosen = weight_only_auto_bits(chosen, {*weight_only, *float_input_convs})
    warn_auto_bits([n for n, _, c in chosen if c.weight_bits_auto and c.activations != "none" and c.weight_bits < 8])
    dynamic = [(n, c) for n, m, c in chosen if c.activations == "dynamic" and type(m) is nn.Linear]
    warn_float_speed([(n, c.weight_bits, c.symmetric, c.granularity == "per_channel") for n, c in dynamic])
    built = _build_quantized(model, chosen, calib, adapter.modality_of, max_calib_batches)
    tie_quantized(model, built)  # tied float weights: one set of codes, stored once
    record = Record("quantize", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    if split:
        record.info["split_attention"] = split
    for name, (qmodule, info) in built.items():  # swap only once every layer succeeded
        _replace(model, name, qmodule)
        record.modules[name] = info
    record.metrics["modules"] = float(len(chosen))
    record.metrics["float_left"] = float(len(float_left))
    record.metrics["float_inputs"] = float(len(weight_only) + len(float_input_convs))  # asked-for activations
    if any(getattr(q, "act", None) is not None for q, _ in built.values()):  # W8A8: the CPU it was made for
        record.info["integer_kernels"] = integer_kernel_info()
        fused = fuse_activations(model)
        if fused:
            record.info["fused_activations"] = fused
        joined = link_siblings(model)
        if joined:
            record.info["joint_qkv"] = joined
    return record


def weight_only_auto_bits(chosen: list[tuple], float_inputs: set[str]) -> list[tuple]:
    """(name, module, config) with "auto" bits made 8 where the layer runs weight-only although its
    config quantizes activations (embedding tables, `float_inputs`): the integer-kernel limit that
    picked fewer bits (7 on AVX2 without VNNI) does not apply to them. A table whose matrix is tied to
    a layer on the integer kernels (Whisper's token table and `proj_out`) keeps that layer's bits.

    Example:
        >>> table = ("emb", nn.Embedding(9, 4), QuantConfig(activations="dynamic"))
        >>> weight_only_auto_bits([table], set())[0][2].weight_bits
        8
    """
    weight_only = {name for name, module, _ in chosen if name in float_inputs or isinstance(module, nn.Embedding)}
    kernels = [m for n, m, c in chosen if n not in weight_only and c.activations != "none"]
    on_kernels = {id(m.weight) for m in kernels if isinstance(getattr(m, "weight", None), torch.Tensor)}
    out = []
    for name, module, cfg in chosen:
        weight = getattr(module, "weight", None)
        tied = weight is not None and id(weight) in on_kernels  # one grid for a shared matrix: stored once
        if cfg.weight_bits_auto and cfg.activations != "none" and name in weight_only and not tied:
            cfg = cfg.model_copy(update={"weight_bits": max(cfg.weight_bits, 8)})
        out.append((name, module, cfg))
    return out


def _build_quantized(model, chosen, calib, modality_of, max_batches) -> dict[str, tuple[nn.Module, dict]]:
    """Quantized replacements with their record entries; the model itself is left unchanged."""
    act_layers = {n: (m, c) for n, m, c in chosen if c.activations != "none" and _takes_activations(m, c)}
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


def _takes_activations(module: nn.Module, cfg: QuantConfig) -> bool:
    """Linear layers quantize inputs on any weight codes; Conv2d only on symmetric per-channel 7/8 bits."""
    return isinstance(module, nn.Linear) or (isinstance(module, ACT_TYPES) and cfg.integer_channels)


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
        **_searched_ranges(module, qmodule),
    }


def _searched_ranges(module: nn.Module, qmodule: nn.Module) -> dict:
    """{"kept_range": {min, median, max}} of the step-per-group ratios an `mse` observer chose."""
    grid, scale = qmodule.grid, getattr(qmodule, "scale", None)
    if grid.observer != "mse" or scale is None:
        return {}
    ratios = kept_range_ratios(_float_weight(module).float(), grid, scale)
    if ratios is None:
        return {}
    quartiles = ratios.flatten().float().quantile(torch.tensor([0.0, 0.5, 1.0]))
    return {"kept_range": dict(zip(("min", "median", "max"), (round(float(q), 3) for q in quartiles), strict=True))}


def _gptq_params(model, chosen, calib, modality_of, max_batches) -> dict:
    """GPTQ solutions for the chosen layers whose config asks for it (embeddings: rtn, with a warning)."""
    wanted = {n: (m, c.grid(), c.gptq) for n, m, c in chosen if c.method == "gptq" and type(m) in GPTQ_TYPES}
    skipped = [n for n, m, c in chosen if c.method == "gptq" and type(m) not in GPTQ_TYPES]
    if skipped:
        warnings.warn(
            f"GPTQ solves Linear, Conv1d and Conv2d only; rounding to nearest for {len(skipped)} layer(s) "
            f"(embeddings, LSTM/GRU): {shortened(skipped)}",
            UserWarning,
            stacklevel=3,
        )
    for name in _tied_to_unsolved(model, wanted, {n for n, _, _ in chosen}):
        del wanted[name]
    if not wanted:
        return {}
    if calib is None:
        raise ConfigError("method 'gptq' needs calibration data: pass calib=<iterable of batches>")
    for name, (module, _, _) in wanted.items():
        _check_finite_weight(name, module)
    return gptq_params(model, wanted, calib, modality_of, max_batches)


def _tied_to_unsolved(model: nn.Module, wanted: dict, quantized: set[str]) -> list[str]:
    """GPTQ layers whose weight is tied to a quantized layer GPTQ does not solve (Whisper's `proj_out`
    and the `decoder.embed_tokens` lookup): one set of codes serves both, and a solution fitted to
    one layer's inputs can wreck the other, so these round to nearest (with a warning)."""
    sharing = modules_sharing_weight(model)
    tied = [n for n in wanted if any(o in quantized and o not in wanted for o in sharing.get(n, ()))]
    if tied:
        warnings.warn(
            f"GPTQ: rounding to nearest for {len(tied)} layer(s) whose weight is tied to a layer GPTQ does "
            f"not solve (one set of codes serves both): {shortened(tied)}",
            UserWarning,
            stacklevel=4,
        )
    return tied


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
    split_attention(model, record.info.get("split_attention", []))
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
    fuse_activations(model)
    link_siblings(model)


def activation_spec(entry: str | dict) -> ActSpec | None:
    """The ActSpec a record entry describes ("none", "dynamic" or the ActSpec fields)."""
    if entry == "none":
        return None
    if entry == "dynamic":
        return ActSpec("dynamic")
    return ActSpec(**entry)
