"""Attention heads for structured pruning: find a module's q/k/v/o through the adapter's attention
specs (`models/attention_specs.py`, or an adapter's own), score heads, choose the heads kept.

With `scope: "layer"` each attention module is scored and cut on its own (an encoder's
self-attention and a decoder's cross-attention cannot take each other's budget). With
`scope: "global"` the heads of every module sharing one config are ranked together, so that
`ratio` of all of them go and the per-module counts follow the measured importance (Michel et al.
2019, "Are sixteen heads really better than one?": heads differ widely in importance, within and
across layers). Global ranking needs scores that mean the same in every module: "ablation" (the
change of the model's output when that head alone is masked, measured on `calib=` batches) or
"taylor"/"fisher" (one loss); magnitude scores are normalised per module (mean 1) first.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmcompress.core.batches import call_model, check_finite, prediction
from mmcompress.core.layer_stats import gradient_stats
from mmcompress.errors import ConfigError, DataError
from mmcompress.models.adapter import Adapter
from mmcompress.models.attention import head_parts
from mmcompress.prune.channel_importance import cap_ratio, global_keep, keep_count, normalised, top_units
from mmcompress.prune.compensate import fold_bias_change
from mmcompress.prune.dependency import eval_mode
from mmcompress.prune.importance import scores_for
from mmcompress.prune.reconstruct import reconstruct_consumers, reconstructable

MEASURED = ("ablation", "taylor", "fisher")  # scores on one scale across modules
HEAD_METHODS = "auto, magnitude, ablation, taylor or fisher"


def head_params(name: str, module: nn.Module, adapter: Adapter) -> dict[str, torch.Tensor]:
    """The weights whose gradients score `module`'s heads, keyed for `gradient_stats`."""
    q, k, v, o, *_ = head_parts(module, adapter)
    return {f"{name}.{i}": layer.weight for i, layer in enumerate((q, k, v, o))}


def head_scores(name: str, module: nn.Module, method: str, stats: dict, adapter: Adapter) -> torch.Tensor:
    """Importance of each head of one attention module: (heads,), q/k/v rows and o columns summed
    (each projection's share normalised to mean 1 for magnitude; raw loss units for taylor/fisher)."""
    q, k, v, o, heads, head_dim, _ = head_parts(module, adapter)
    score = 0
    for i, layer in enumerate((q, k, v, o)):
        s = scores_for(method, layer.weight, stats.get(f"{name}.{i}"))
        per_unit = s.sum(0) if layer is o else s.sum(1)  # o: its inputs are the heads' outputs
        per_head = per_unit.view(heads, head_dim).sum(1)
        score = score + (normalised(per_head) if method == "magnitude" else per_head)
    return score


def output_change(reference: torch.Tensor, output: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How far `output` moved from `reference`, averaged over the positions `mask` keeps (all by default).

    KL(softmax(reference) || softmax(output)) over the last dim (logits): (B, ..., C), (B, ...) -> scalar.

    Example:
        >>> float(output_change(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)))
        0.0
    """
    log_p, log_q = reference.float().log_softmax(-1), output.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, ...)
    if mask is None or mask.shape != kl.shape:
        return kl.mean()
    weight = mask.to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp_min(1)


def ablation_scores(
    model: nn.Module, targets: list[tuple[str, nn.Module]], adapter: Adapter, batches: Iterable[Any], max_batches=None
) -> dict[str, torch.Tensor]:
    """Per attention module, the output change (`output_change`) when each of its heads alone is
    masked (its slice of the output projection's input zeroed): name -> (heads,), higher = keep.

    Model outputs with `.logits` are compared by KL (padding masked by `decoder_attention_mask` or
    `attention_mask` when its shape fits); other outputs by squared error relative to the output's
    mean square. The model runs in eval mode; its mode is restored.

    Example:
        >>> scores = ablation_scores(model, [("encoder.0.attn", attn)], adapter_for(model), calib, 2)
        >>> scores["encoder.0.attn"].shape
        torch.Size([4])
    """
    batches = [b for i, b in enumerate(batches) if max_batches is None or i < max_batches]
    if not batches:
        raise DataError("head ablation importance got no calibration batches; pass calib=")
    for batch in batches:
        check_finite(batch, "head importance")
    with torch.no_grad(), eval_mode(model):
        references = [call_model(model, b) for b in batches]
        scores = {}
        for name, module in targets:
            _, _, _, o, heads, head_dim, _ = head_parts(module, adapter)
            score = torch.zeros(heads)
            for h in range(heads):
                handle = o.register_forward_pre_hook(_mask_head(h, head_dim))
                try:
                    for batch, ref in zip(batches, references, strict=True):
                        score[h] += output_difference(ref, call_model(model, batch), batch) / len(batches)
                finally:
                    handle.remove()
            scores[name] = score
    return scores


def plan_heads(model, targets, adapter, data, loss_fn, max_batches, calib=None) -> list[tuple[str, torch.Tensor, dict]]:
    """(attention module, heads kept, record entry) per target (name, module, StructuredConfig).

    Example:
        >>> plans = plan_heads(model, [("enc.0.attn", attn, StructuredConfig(unit="heads"))], adapter, None, None, None)
    """
    targets = [(n, m, c.model_copy(update={"method": "magnitude"}) if c.method == "auto" else c) for n, m, c in targets]
    params, ablated = {}, False
    for name, module, cfg in targets:
        if cfg.method in ("variance", "reconstruction"):
            raise ConfigError(f"method {cfg.method!r} scores channels; heads of {name!r}: {HEAD_METHODS}")
        if cfg.method in ("taylor", "fisher"):
            params.update(head_params(name, module, adapter))
        elif cfg.method == "ablation":
            ablated = True
    stats = {}
    if params:
        if data is None or loss_fn is None:
            raise ConfigError("taylor/fisher head importance needs data= and loss_fn=")
        stats = gradient_stats(model, params, data, loss_fn, max_batches)  # one pass for every module
    measured = {}
    if ablated:
        if calib is None:
            raise ConfigError("ablation head importance needs calib= (model inputs, e.g. calibration batches)")
        for limit in {c.ablation_batches for _, _, c in targets if c.method == "ablation"}:
            caps = [n for n in (limit, max_batches) if n is not None]
            cap = min(caps) if caps else None
            chosen = [(n, m) for n, m, c in targets if c.method == "ablation" and c.ablation_batches == limit]
            measured.update(ablation_scores(model, chosen, adapter, calib, cap))
    scores = [measured[n] if n in measured else head_scores(n, m, c.method, stats, adapter) for n, m, c in targets]
    sizes = [head_parts(m, adapter)[4] for _, m, _ in targets]
    keeps = [keep_count(size, c.ratio, c.round_to) for size, (_, _, c) in zip(sizes, targets, strict=True)]
    buckets: dict[Any, list[int]] = {}
    for i, (_, _, cfg) in enumerate(targets):
        if cfg.scope == "global":
            buckets.setdefault(cfg, []).append(i)
    for cfg, members in buckets.items():  # one ranking over every module that shares this config
        ranked = [scores[i] if cfg.method in MEASURED else normalised(scores[i]) for i in members]
        found = global_keep(ranked, [sizes[i] for i in members], cfg.ratio, cap_ratio(cfg), cfg.round_to)
        for i, keep in zip(members, found, strict=True):
            keeps[i] = keep
    plans = []
    for (name, _, cfg), score, heads, keep in zip(targets, scores, sizes, keeps, strict=True):
        if keep < 1:
            raise ConfigError(f"pruning {cfg.ratio:.0%} of the {heads} heads of {name!r} would remove them all")
        chosen = top_units(score, keep)
        entry = {"structure": "heads", "keep": chosen.tolist(), "before": heads, "kept": keep, "ratio": cfg.ratio}
        entry.update(removed_ratio=1 - keep / heads, method=cfg.method, scores=[round(float(s), 6) for s in score])
        plans.append((name, chosen, {**entry, **({"scope": "global"} if cfg.scope == "global" else {})}))
    return plans


def refit_output_projections(
    model: nn.Module, targets: list, plans: list, adapter: Adapter, calib, max_batches=None
) -> dict[str, str]:
    """Refit the output projection of every attention module whose heads go with `reconstruct`:
    its kept input columns (and bias) by least squares, so its output on `calib` batches stays
    closest to the unpruned output (`reconstruct.py`; the removed heads' work moves onto kept heads
    whose outputs correlate with theirs). Call before slicing. Each plan's record entry gets
    `compensation`: projection -> where the bias change went ("bias", or "new bias", which a replay
    recreates); a projection that is not a plain Linear keeps its weights and is named in a warning.

    Example:
        >>> refit_output_projections(model, targets, plan_heads(model, targets, adapter, ...), adapter, calib)
        {'encoder.0.attn.out': 'bias'}
    """
    names = {id(m): n for n, m in model.named_modules()}
    dropped, skipped, entries = {}, [], {}
    for (name, module, cfg), (_, keep, entry) in zip(targets, plans, strict=True):
        if not cfg.reconstruct:
            continue
        *_, o, heads, head_dim, _ = head_parts(module, adapter)
        gone = sorted(set(range(heads)) - set(keep.tolist()))
        if not gone:
            continue
        if not reconstructable(o):
            skipped.append(f"{name} ({type(o).__name__})")
            continue
        dropped[names[id(o)]] = [h * head_dim + i for h in gone for i in range(head_dim)]
        entries[names[id(o)]] = entry
    if skipped:
        warnings.warn(
            f"reconstruct refits nn.Linear output projections only; {len(skipped)} attention module(s) keep "
            f"their projection as it was: {', '.join(skipped[:5])}",
            stacklevel=3,
        )
    if not dropped:
        return {}
    if calib is None:
        raise ConfigError("reconstruct refits output projections on calibration data: pass calib=[...]")
    modules = dict(model.named_modules())
    where = {}
    with torch.no_grad():
        for name, delta in reconstruct_consumers(model, modules, dropped, calib, max_batches).items():
            where[name] = fold_bias_change(name, modules[name], delta, modules, {})
            entries[name].update(compensation={name: where[name]}, reconstructed=[name])
    return where


def _mask_head(head: int, head_dim: int):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., head * head_dim : (head + 1) * head_dim] = 0
        return (x, *args[1:])

    return hook


def output_difference(reference: Any, output: Any, batch: Any) -> float:
    """How far a model's `output` moved from its `reference` output on `batch`: KL for outputs with
    `.logits` (padding masked when a mask fits), else squared error relative to the mean square.

    Example:
        >>> output_difference(torch.ones(2, 3), torch.ones(2, 3), None)
        0.0
    """
    ref, out = prediction(reference), prediction(output)
    if not isinstance(ref, torch.Tensor):  # a bare encoder (BertModel): its hidden states
        ref, out = getattr(ref, "last_hidden_state", ref), getattr(out, "last_hidden_state", out)
    if not isinstance(ref, torch.Tensor) or not ref.is_floating_point():
        raise DataError(f"ablation and sensitivity compare tensor outputs; the model returned {type(ref).__name__}")
    if isinstance(getattr(reference, "logits", None), torch.Tensor):
        mask = batch.get("decoder_attention_mask", batch.get("attention_mask")) if isinstance(batch, dict) else None
        return float(output_change(ref, out, mask))
    return float((out.float() - ref.float()).pow(2).mean() / ref.float().pow(2).mean().clamp_min(1e-12))
