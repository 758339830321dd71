"""`prune_structured(model, config)`: remove whole channels, neurons, recurrent units or attention
heads, so tensors physically shrink (smaller and faster), keeping the model's input/output contract.

Channels/neurons/units go by dependency groups (`dependency.py`): a tower's last layer takes the
projection or fusion layer that consumes it along (fusion-aware). Heads go by attention module,
found through the adapter's attention specs (ours, BERT, CLIP, SigLIP, ViT, Whisper, Wav2Vec2, Llama). Late fusion by
concatenation works too: the fused layer loses exactly the pruned tower's columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.core.targets import require_matches, resolve_targets
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.models.adapter import Adapter, adapter_for
from mmcompress.prune.collect import LossFn, gradient_stats
from mmcompress.prune.dependency import RECURRENT, ChannelGroup, channel_groups
from mmcompress.prune.importance import scores_for
from mmcompress.prune.slicing import GATES, consumer_columns, keep_heads, keep_hidden_units, keep_inputs, keep_outputs
from mmcompress.quant.api import as_mapping


class StructuredConfig(FrozenConfig):
    """Structured pruning settings.

    Attributes:
        ratio: fraction of units removed in each group (channels of a layer, heads of a layer), [0, 1).
        unit: "channels" (Conv2d channels, Linear neurons, LSTM/GRU hidden units) or "heads".
        method: unit importance: "magnitude" (L1 of the unit's weights), "taylor" or "fisher"
            (summed over the unit; need `data=` and `loss_fn=`).
        round_to: keep a multiple of this many units (at least one).

    Example:
        >>> StructuredConfig(ratio=0.5, unit="heads").ratio
        0.5
    """

    ratio: float = Field(0.5, ge=0.0, lt=1.0)
    unit: Literal["channels", "heads"] = "channels"
    method: Literal["magnitude", "taylor", "fisher"] = "magnitude"
    round_to: int = Field(1, ge=1)


def prune_structured(
    model: nn.Module,
    config: StructuredConfig | Mapping[str, object] | None = None,
    *,
    example_inputs: Any = None,
    data: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
) -> Record:
    """Remove the least important units of the targeted layers in place; returns a replayable Record.

    Args:
        model: edited in place (parameters are replaced by smaller ones).
        config: a StructuredConfig or a target mapping (exact name, `re:`, `modality:`, `_default`)
            of key -> config / dict / None. Channel targets name producer layers (Conv2d, Linear,
            LSTM/GRU); head targets name attention modules.
        example_inputs: inputs for tracing, following the batch convention (tensor, tuple or dict;
            default: the model adapter's example inputs).
        data, loss_fn, max_batches: for taylor/fisher importance.

    Example:
        >>> rec = prune_structured(model, {"modality:image": {"ratio": 0.5}})
        >>> rec.modules["image_tower.features.0"]["kept"]
        8
    """
    mapping = as_mapping(config if config is not None else StructuredConfig(), StructuredConfig)
    adapter = adapter_for(model)
    modules = dict(model.named_modules())
    chosen = list(
        resolve_targets(model, mapping, lambda m: _is_attention(m, adapter) or _producer(m), adapter.modality_of)
    )
    chosen = [(n, m, c) for n, m, c in chosen if (c.unit == "heads") == _is_attention(m, adapter)]
    require_matches(chosen, mapping, model)
    plans = []  # (kind, name or group, keep indices); computed fully before anything changes
    skipped: dict[str, str] = {}  # targeted producers that keep their width, and why
    channel_targets = {n: c for n, m, c in chosen if c.unit == "channels"}
    if channel_targets:
        inputs = example_inputs if example_inputs is not None else None
        if inputs is None and adapter.example_inputs is not None:
            inputs = adapter.example_inputs(2)
        if inputs is None:
            raise ConfigError("structured channel pruning traces the model: pass example_inputs={...}")
        groups = channel_groups(model, inputs)
        plans += _plan_channels(model, modules, groups, channel_targets, mapping, data, loss_fn, max_batches, skipped)
    for name, module, cfg in chosen:
        if cfg.unit == "heads":
            plans.append(("heads", name, _keep_heads(name, module, cfg, data, loss_fn, max_batches, model, adapter)))
    record = Record("prune_structured", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    before = sum(p.numel() for p in model.parameters())
    for kind, target, keep in plans:
        entry = apply_plan(model, kind, target, keep)
        record.modules[entry.pop("name")] = entry
    for name, reason in skipped.items():
        record.modules[name] = {"structure": "kept", "reason": reason}
    after = sum(p.numel() for p in model.parameters())
    record.metrics.update(params_before=float(before), params_after=float(after), removed=1 - after / max(before, 1))
    return record


def apply_plan(model: nn.Module, kind: str, target: Any, keep: torch.Tensor) -> dict[str, Any]:
    """Shrink the model for one plan; returns its record entry (what `replay_structured` reapplies)."""
    modules = dict(model.named_modules())
    keep = torch.as_tensor(keep, dtype=torch.long)
    if kind == "heads":
        q, k, v, o, heads, head_dim, set_heads = head_parts(modules[target], adapter_for(model))
        keep_heads(q, k, v, o, keep, head_dim)
        set_heads(len(keep))
        return {"name": target, "structure": "heads", "keep": keep.tolist(), "before": heads, "kept": len(keep)}
    group = ChannelGroup(**target) if isinstance(target, dict) else target
    for name in group.producers:
        layer = modules[name]
        keep_hidden_units(layer, keep) if isinstance(layer, RECURRENT) else keep_outputs(layer, keep)
    for name in group.norms:
        keep_outputs(modules[name], keep)
    for name, repeat, offset in group.consumers:
        layer = modules[name]
        inputs = layer.input_size if isinstance(layer, RECURRENT) else layer.weight.shape[1]
        keep_inputs(layer, consumer_columns(inputs, group.size, keep, repeat, offset))
    entry = {"structure": "channels", "group": group.to_dict(), "keep": keep.tolist()}
    return {"name": group.producers[0], **entry, "before": group.size, "kept": len(keep)}


def replay_structured(model: nn.Module, record: Record) -> None:
    """Shrink a fresh model the way `record` says (its values come from a state dict after).

    Example:
        >>> replay_structured(build_model("fashion-clip"), Record.from_dict(saved))
    """
    for name, entry in record.modules.items():
        if entry["structure"] == "kept":
            continue
        target = name if entry["structure"] == "heads" else entry["group"]
        apply_plan(model, entry["structure"], target, torch.tensor(entry["keep"]))


def _producer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear, *RECURRENT))


def _plan_channels(model, modules, groups, targets, mapping, data, loss_fn, max_batches, skipped) -> list:
    by_producer = {p: g for g in groups.values() for p in g.producers}
    selected: dict[int, tuple[ChannelGroup, StructuredConfig]] = {}
    for name, cfg in targets.items():
        group = by_producer.get(name)
        if group is None:
            raise UnsupportedError(f"structured pruning cannot shrink {name!r} ({type(modules[name]).__name__})")
        if group.pinned:
            if name in mapping:  # named explicitly: the user expects it to shrink
                raise UnsupportedError(f"cannot prune channels of {name!r}: it {group.pinned}")
            skipped[name] = group.pinned  # matched by a pattern: keeps its width (e.g. the model's outputs)
            continue
        selected.setdefault(id(group), (group, cfg))
    params = {}
    for group, cfg in selected.values():
        if cfg.method != "magnitude":
            params.update({f"{p}.{n}": t for p in group.producers for n, t in _unit_params(modules[p]).items()})
    stats = {}
    if params:
        if data is None or loss_fn is None:
            raise ConfigError("taylor/fisher structured importance needs data= and loss_fn=")
        stats = gradient_stats(model, params, data, loss_fn, max_batches)
    plans = []
    for group, cfg in selected.values():
        score = sum(_normalised(_channel_scores(p, modules[p], cfg.method, stats)) for p in group.producers)
        plans.append(("channels", group, _keep_top(score, cfg, group.producers[0])))
    return plans


def _unit_params(module: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(module, RECURRENT):
        return {"weight_ih_l0": module.weight_ih_l0, "weight_hh_l0": module.weight_hh_l0}
    return {"weight": module.weight}


def _channel_scores(name: str, module: nn.Module, method: str, stats: dict) -> torch.Tensor:
    """Importance of each output unit of one producer (recurrent: summed over its gates)."""
    total = 0
    for pname, weight in _unit_params(module).items():
        per_row = scores_for(method, weight, stats.get(f"{name}.{pname}")).reshape(weight.shape[0], -1).sum(1)
        if isinstance(module, RECURRENT):
            per_row = per_row.view(GATES[type(module)], -1).sum(0)
        total = total + per_row
    return total


def _normalised(score: torch.Tensor) -> torch.Tensor:
    return score / score.mean().clamp_min(1e-12)


def _keep_top(score: torch.Tensor, cfg: StructuredConfig, name: str) -> torch.Tensor:
    size = score.numel()
    keep = int(round(size * (1 - cfg.ratio) / cfg.round_to)) * cfg.round_to
    if keep < 1:
        raise ConfigError(f"pruning {cfg.ratio:.0%} of the {size} units of {name!r} would remove them all")
    return score.argsort(descending=True)[:keep].sort().values


def _is_attention(module: nn.Module, adapter: Adapter) -> bool:
    return adapter.attention_spec(module) is not None


def _keep_heads(name, module, cfg, data, loss_fn, max_batches, model, adapter) -> torch.Tensor:
    q, k, v, o, heads, head_dim, _ = head_parts(module, adapter)
    stats = {}
    if cfg.method != "magnitude":
        if data is None or loss_fn is None:
            raise ConfigError("taylor/fisher head importance needs data= and loss_fn=")
        params = {f"{name}.{i}": t.weight for i, t in enumerate((q, k, v, o))}
        stats = gradient_stats(model, params, data, loss_fn, max_batches)
    score = 0
    for i, layer in enumerate((q, k, v, o)):
        s = scores_for(cfg.method, layer.weight, stats.get(f"{name}.{i}"))
        per_unit = s.sum(0) if layer is o else s.sum(1)  # o: its inputs are the heads' outputs
        score = score + _normalised(per_unit.view(heads, head_dim).sum(1))
    return _keep_top(score, cfg, name)


def head_parts(module: nn.Module, adapter: Adapter | None = None):
    """(q, k, v, o, heads, head_dim, set_heads) for an attention module the adapter knows, else None.

    Example:
        >>> q, k, v, o, heads, head_dim, set_heads = head_parts(Attention(64, 4))
        >>> heads, head_dim
        (4, 16)
    """
    spec = (adapter or Adapter()).attention_spec(module)
    if spec is None:
        return None
    q, k, v, o = (module.get_submodule(p) for p in (spec.q, spec.k, spec.v, spec.o))
    if spec.kv_groups is not None and _attr(module, spec.kv_groups) != 1:
        raise UnsupportedError(
            f"{type(module).__name__} uses grouped-query attention ({_attr(module, spec.kv_groups)} query heads "
            "per key/value head); pruning its heads is not supported"
        )
    if spec.head_dim:
        head_dim = int(_attr(module, spec.head_dim))
    else:
        head_dim = q.out_features // int(_attr(module, spec.head_counts[0]))
    heads = q.out_features // head_dim

    def set_heads(n: int) -> None:
        for path in spec.head_counts:
            _set_attr(module, path, n)
        for path in spec.widths:
            _set_attr(module, path, n * head_dim)

    return q, k, v, o, heads, head_dim, set_heads


def _attr(module: nn.Module, path: str) -> Any:
    owner, _, attr = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def _set_attr(module: nn.Module, path: str, value: Any) -> None:
    owner, _, attr = path.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, value)
