"""`prune_structured(model, config)`: remove whole channels, neurons, recurrent units or attention
heads, so tensors physically shrink (smaller and faster), keeping the model's input/output contract.

Channels/neurons/units go by dependency groups (`dependency.py`): a tower's last layer takes the
projection or fusion layer that consumes it along (fusion-aware). Heads go by attention module,
found through the adapter's attention specs (ours, BERT, CLIP, SigLIP, ViT, Whisper, Wav2Vec2, Llama). Late fusion by
concatenation works too: the fused layer loses exactly the pruned tower's columns.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmcompress.core.batches import check_finite_weights
from mmcompress.core.config import FrozenConfig
from mmcompress.core.layer_stats import LossFn
from mmcompress.core.record import Record, note_edit
from mmcompress.core.targets import as_mapping, first_match, resolve_targets
from mmcompress.errors import ConfigError, UnsupportedError
from mmcompress.models.adapter import adapter_for, require_matches
from mmcompress.models.attention import head_parts, is_attention
from mmcompress.models.split_attention import split_attention, split_targeted
from mmcompress.models.traceable_transformer import open_transformers, transformers_holding
from mmcompress.prune.channel_plan import plan_channels, plan_entry, select_groups
from mmcompress.prune.compensate import add_biases, compensate_plans, consumers_of, input_stats_of, norms_after
from mmcompress.prune.dependency import RECURRENT, ChannelGroup, channel_groups, library_model, trace
from mmcompress.prune.fx_ops import CONVS
from mmcompress.prune.heads import plan_heads, refit_output_projections
from mmcompress.prune.reconstruct import input_grams, reconstructable
from mmcompress.prune.slicing import keep_heads, keep_hidden_units, keep_inputs, keep_outputs
from mmcompress.prune.summary import count_macs, summarise, warn_kept, warn_ratios

CHANNEL_METHODS = "auto, magnitude, variance, reconstruction, taylor or fisher"
__all__ = ["StructuredConfig", "apply_plans", "head_parts", "prune_structured", "replay_structured"]


class StructuredConfig(FrozenConfig):
    """Structured pruning settings.

    Attributes:
        ratio: fraction of units removed in each group (channels of a layer, heads of a layer), [0, 1).
            Units are whole, so the removed fraction is rounded; the record holds `removed_ratio`.
        unit: "channels" (Conv1d / Conv2d channels, Linear neurons, LSTM/GRU hidden units) or "heads".
        method: unit importance: "auto" ("variance" for channels, "magnitude" for heads; chosen by
            measurement on MobileNetV2 and digits-cnn), "magnitude" (L1 of the unit's weights),
            "variance" (the share of its consumers' output variance the unit carries: consumer
            weights times the input variance, measured on `calib=` or estimated from BatchNorm
            statistics), "reconstruction" (channels removed one at a time, each time the one whose
            loss the consumers' least-squares refit makes up for best: Optimal Brain Surgeon on the
            consumers' input Gram matrices from `calib=`; pair it with `reconstruct`; a group with a
            consumer that is not a Linear / ungrouped Conv1d / Conv2d is scored by "variance"),
            "taylor" or "fisher" (summed over the unit; need `data=` and `loss_fn=`),
            "ablation" (heads: the model's output change when the head alone is masked, on `calib=`).
        round_to: keep a multiple of this many units (at least one).
        bn_aware: with "magnitude", scale a layer's unit scores by |gamma| / sqrt(var + eps) of the
            BatchNorm that follows it (the magnitude of the BN-folded kernel; BN makes the raw
            kernel's scale meaningless).
        compensate: fold the expected value of each removed channel, times its consumer's weights,
            into the consumer's bias (or the BatchNorm after it): measured on `calib=` batches, else
            estimated from the BatchNorm statistics (`compensate.py`). Channels only.
        reconstruct: refit the kept input weights (and bias) of each Linear / ungrouped Conv1d / Conv2d
            consumer by least squares, so its output on `calib=` batches stays closest to the
            unpruned output: removed channels' work moves onto the kept channels correlated with
            them (`reconstruct.py`; needs `calib=`; other consumers keep mean compensation).
            Consumers are refit in graph order in one lockstep pass over the batches
            (`sequential_refit.py`; memory: every batch's live activations, twice; batches beyond
            60% of the available memory, or MMCOMPRESS_REFIT_MEMORY_GB, are left out of it, with a
            warning, and serve only the last refit layers, such as a classifier after pooling,
            which are then refit on every batch one at a time); a consumer whose
            output (through a BatchNorm) is added to a residual stream is aimed at the unpruned sum,
            making up for the error the stream already carries (`stream_target.py`).
            Heads: the attention module's output projection is refit the same way (in one call
            that removes channels and heads, the channel consumers are refit first, against a
            reference that still has every head).
        scope: "layer" removes `ratio` of every group; "global" removes `ratio` of all units of the
            groups that share this config, ranked by their scores normalised per group (mean 1;
            heads scored by ablation/taylor/fisher are ranked on their raw, comparable scores).
            "sensitivity" (channels) also removes `ratio` of all those units, each group's share
            chosen by measured sensitivity: every group's lowest-scored units are masked at `ratio`
            and at `max_ratio` and the model's output change on `calib=` batches is measured;
            removals then go where they change the output least per unit (`sensitivity.py`).
            With `budget: "units"` units are counted: sensitive layers keep more units and cheap
            wide late layers give up more, so the model can keep more parameters than with
            "layer"; `budget: "params"` removes `ratio` of the parameters of the layers the
            groups touch (their own and the weights that read them; neighbouring groups counted
            once, as slicing removes them), each step where it changes the output least per
            parameter removed.
        max_ratio: with "global"/"sensitivity", the most any one group loses (default: 2 x ratio,
            at most 0.9).
        ablation_batches: "ablation" masks each head, "sensitivity" each group, on only the first
            this many `calib=` batches (each costs forward passes per head or group and batch;
            importance and `reconstruct` still use them all).
        budget: with scope "sensitivity", what `ratio` counts: "units" or "params" (see scope).

    Example:
        >>> StructuredConfig(ratio=0.5, unit="heads").ratio
        0.5
    """

    ratio: float = Field(0.5, ge=0.0, lt=1.0)
    unit: Literal["channels", "heads"] = "channels"
    method: Literal["auto", "magnitude", "variance", "reconstruction", "taylor", "fisher", "ablation"] = "auto"
    round_to: int = Field(1, ge=1)
    bn_aware: bool = True
    compensate: bool = True
    reconstruct: bool = False
    scope: Literal["layer", "global", "sensitivity"] = "layer"
    max_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    ablation_batches: int | None = Field(None, ge=1)
    budget: Literal["units", "params"] = "units"

    @model_validator(mode="after")
    def _options_fit_together(self) -> StructuredConfig:
        if self.ablation_batches is not None and self.method != "ablation" and self.scope != "sensitivity":
            raise ValueError(
                f"ablation_batches applies to method 'ablation' (heads) or scope 'sensitivity', not {self.method!r}"
            )
        if self.max_ratio is not None and self.scope == "layer":
            raise ValueError("max_ratio caps a group under scope 'global' or 'sensitivity', not 'layer'")
        if self.max_ratio is not None and self.max_ratio < self.ratio:
            raise ValueError(f"max_ratio {self.max_ratio} is below ratio {self.ratio}: the ratio could not be met")
        if self.budget != "units" and self.scope != "sensitivity":
            raise ValueError(f"budget {self.budget!r} applies to scope 'sensitivity', not {self.scope!r}")
        if self.scope == "sensitivity" and self.unit != "channels":
            raise ValueError("scope 'sensitivity' allocates channels; heads use scope 'layer' or 'global'")
        return self


def prune_structured(
    model: nn.Module,
    config: StructuredConfig | Mapping[str, object] | None = None,
    *,
    example_inputs: Any = None,
    data: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    calib: Iterable[Any] | None = None,
) -> Record:
    """Remove the least important units of the targeted layers in place; returns a replayable Record.

    Args:
        model: edited in place (parameters are replaced by smaller ones).
        config: a StructuredConfig or a target mapping (exact name, `re:`, `modality:`, `_default`)
            of key -> config / dict / None. Channel targets name producer layers (Conv1d, Conv2d, Linear,
            LSTM/GRU); head targets name attention modules.
        example_inputs: inputs for tracing, following the batch convention (tensor, tuple or dict;
            default: the model adapter's example inputs).
        data, loss_fn, max_batches: for taylor/fisher importance.
        calib: model inputs (batch convention) whose mean activations compensate removed channels
            (without it the means come from BatchNorm statistics: data-free); for heads scored by
            "ablation", the batches on which each head is masked.

    Example:
        >>> rec = prune_structured(model, {"modality:image": {"ratio": 0.5}})
        >>> rec.modules["image_tower.features.0"]["kept"]
        8
    """
    mapping = as_mapping(config if config is not None else StructuredConfig(), StructuredConfig)
    calib = None if calib is None else list(calib)  # read more than once (importance, compensation)
    adapter = adapter_for(model)
    split = split_targeted(model, mapping, adapter.modality_of, lambda c: c.unit == "heads")  # packed q/k/v
    modules = dict(model.named_modules())
    chosen = list(
        resolve_targets(model, mapping, lambda m: is_attention(m, adapter) or _producer(m), adapter.modality_of)
    )
    chosen = [(n, m, c) for n, m, c in chosen if (c.unit == "heads") == is_attention(m, adapter)]
    _require_attention(model, mapping, chosen, adapter)
    require_matches(chosen, mapping, model)
    check_finite_weights(model, "be pruned")
    channel_targets = {n: c for n, m, c in chosen if c.unit == "channels"}
    for name, cfg in channel_targets.items():
        if cfg.method == "ablation":
            raise ConfigError(f"method 'ablation' scores attention heads; channels of {name!r}: {CHANNEL_METHODS}")
    inputs = example_inputs
    if inputs is None and adapter.example_inputs is not None:
        inputs = adapter.example_inputs(2)
    if inputs is None and calib:
        inputs = calib[0]  # a calibration batch is a batch of model inputs
    if channel_targets and inputs is None:
        raise ConfigError("structured channel pruning traces the model: pass example_inputs= (a batch of inputs)")
    estimated = [n for n, c in channel_targets.items() if c.compensate or c.method in ("auto", "variance")]
    if estimated and calib is None:
        warnings.warn(
            f"prune_structured: no calib= batches, so the channel scores and the compensation of removed channels "
            f"of {len(estimated)} layer(s) are estimated from BatchNorm statistics (or skipped without them); "
            "a few batches of real inputs usually keep much more accuracy",
            UserWarning,
            stacklevel=2,
        )
    kept: dict[str, str] = {}  # targeted layers that keep their width, and why
    channel_plans = []  # every plan is computed before anything changes
    holding = transformers_holding(model, list(channel_targets))
    originals = {name: model.get_submodule(name) for name in holding}
    root = (type(model), dict(model.__dict__))  # a model that is itself an encoder is opened in place
    opened = open_transformers(model, list(originals))  # traceable twins
    if opened:
        modules = dict(model.named_modules())
    if channel_targets:
        try:
            graph = None if library_model(model) else trace(model, inputs)
        except UnsupportedError:
            for name, original in originals.items():  # the model as the caller gave it
                if name:
                    model.set_submodule(name, original)
                else:
                    model.__class__, model.__dict__ = root
            raise
        groups = channel_groups(model, inputs, graph)
        selected, kept = select_groups(modules, groups, channel_targets, set(mapping))
        names = sorted({c[0] for group, _ in selected for c in group.consumers})
        needs = any(cfg.compensate or cfg.method in ("variance", "auto", "reconstruction") for _, cfg in selected)
        stats = input_stats_of(model, modules, graph, names, calib, max_batches) if needs else {}
        grams, norm_after = {}, {}
        if any(cfg.method == "reconstruction" for _, cfg in selected):
            if calib is None:
                raise ConfigError("method 'reconstruction' measures consumers' inputs: pass calib=[...]")
            layers = {name: modules[name] for name in names if reconstructable(modules[name])}
            grams = input_grams(model, layers, calib, max_batches)
            norm_after = norms_after(groups)
        if any(cfg.scope == "sensitivity" for _, cfg in selected) and calib is None:
            raise ConfigError("scope 'sensitivity' measures the output change of each group: pass calib=[...]")
        channel_plans = plan_channels(
            model, modules, selected, data, loss_fn, max_batches, stats, grams, norm_after, calib
        )
    kept.update(_unsupported_convolutions(model, mapping, adapter))
    head_targets = [(n, m, c) for n, m, c in chosen if c.unit == "heads"]
    head_plans = plan_heads(model, head_targets, adapter, data, loss_fn, max_batches, calib)
    record = Record("prune_structured", {k: (None if v is None else v.to_dict()) for k, v in mapping.items()})
    if split:
        record.info["split_attention"] = split
    if opened:
        record.info["opened_transformers"] = opened
    before = sum(p.numel() for p in model.parameters())
    macs_before = count_macs(model, inputs) if inputs is not None else None
    folded, refit = {}, set()
    if any(p.config.compensate or p.config.reconstruct for p in channel_plans):
        folded, refit = compensate_plans(modules, groups, channel_plans, stats, model, calib, max_batches, graph)
    refit_output_projections(model, head_targets, head_plans, adapter, calib, max_batches)
    apply_plans(model, [(p.group, p.keep) for p in channel_plans], [(n, keep) for n, keep, _ in head_plans])
    record.modules.update({p.group.producers[0]: plan_entry(p, folded, refit) for p in channel_plans})
    record.modules.update({name: entry for name, _, entry in head_plans})
    record.modules.update({name: {"structure": "kept", "reason": reason} for name, reason in kept.items()})
    after = sum(p.numel() for p in model.parameters())
    metrics = {"params_before": float(before), "params_after": float(after), "removed": 1 - after / max(before, 1)}
    if macs_before is not None:
        macs_after = _macs_after(model, inputs)
        metrics.update(
            macs_before=macs_before, macs_after=macs_after, macs_removed=1 - macs_after / max(macs_before, 1)
        )
    metrics.update(_unit_totals(record.modules))
    record.metrics.update(metrics)
    warn_kept(kept)
    warn_ratios(record.modules)
    summarise(record.metrics)
    note_edit(model, record)
    return record


def apply_plans(model: nn.Module, channels: list[tuple[ChannelGroup, torch.Tensor]], heads=()) -> None:
    """Shrink the model for every plan of one call at once.

    Channel groups of one call share consumers (towers concatenated into one fusion layer), and
    their column offsets count the model as traced, so each consumer's dropped columns are
    gathered over all groups first and sliced once.

    Example:
        >>> apply_plans(model, [(group, torch.tensor([0, 2]))], [("encoder.0.attn", torch.tensor([1]))])
    """
    modules = dict(model.named_modules())
    drops = consumers_of(channels)
    for group, keep in channels:
        keep = torch.as_tensor(keep, dtype=torch.long)
        for name in group.members():
            layer = modules[name]
            keep_hidden_units(layer, keep) if isinstance(layer, RECURRENT) else keep_outputs(layer, keep)
    for name, drop in drops.items():
        layer = modules[name]
        width = layer.input_size if isinstance(layer, RECURRENT) else layer.weight.shape[1]
        drop = set(drop)
        keep_inputs(layer, torch.tensor([c for c in range(width) if c not in drop], dtype=torch.long))
    for name, keep in heads:
        q, k, v, o, _, head_dim, set_heads = head_parts(modules[name], adapter_for(model))
        keep = torch.as_tensor(keep, dtype=torch.long)
        keep_heads(q, k, v, o, keep, head_dim)
        set_heads(len(keep))


def replay_structured(model: nn.Module, record: Record) -> None:
    """Shrink a fresh model the way `record` says (its values come from a state dict after).

    Example:
        >>> replay_structured(build_model("fashion-clip"), Record.from_dict(saved))
    """
    split_attention(model, record.info.get("split_attention", []))
    open_transformers(model, record.info.get("opened_transformers", []))
    channels, heads, new_biases = [], [], []
    for name, entry in record.modules.items():
        if entry["structure"] == "channels":
            group = entry["group"]
            fields = {k: group[k] for k in ("producers", "size", "norms", "depthwise") if k in group}
            consumers = [tuple(c) for c in group["consumers"]]
            channels.append((ChannelGroup(**fields, consumers=consumers), torch.tensor(entry["keep"])))
            new_biases += [c for c, where in entry.get("compensation", {}).items() if where == "new bias"]
        elif entry["structure"] == "heads":
            heads.append((name, torch.tensor(entry["keep"])))
            new_biases += [c for c, where in entry.get("compensation", {}).items() if where == "new bias"]
    add_biases(dict(model.named_modules()), new_biases)
    apply_plans(model, channels, heads)


def _producer(module: nn.Module) -> bool:
    return isinstance(module, (*CONVS, nn.Linear, *RECURRENT))


def _unsupported_convolutions(model: nn.Module, mapping: dict, adapter) -> dict[str, str]:
    """Convolutions a pattern targets whose channels this cannot remove (Conv3d, transposed):
    kept at full width, said in the warning and the record, never skipped silently."""
    kept = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, CONVS):
            config = first_match(mapping, name, adapter.modality_of(name))
            if config is not None and config.unit == "channels":
                kept[name] = f"is a {type(module).__name__}: channel pruning handles Conv1d/Conv2d, Linear and LSTM/GRU"
    return kept


def _macs_after(model: nn.Module, inputs: Any) -> float:
    try:
        return count_macs(model, inputs)
    except Exception as err:  # a plan that leaves a model that does not run is a bug: say so plainly
        raise UnsupportedError(
            f"structured pruning left {type(model).__name__} unable to run ({type(err).__name__}: {str(err)[:200]}); "
            "please report this model"
        ) from err


def _unit_totals(entries: dict[str, dict]) -> dict[str, float]:
    """Requested vs removed units over every shrunk group (channels and heads)."""
    shrunk = [e for e in entries.values() if e["structure"] in ("channels", "heads")]
    if not shrunk:
        return {}
    units = sum(e["before"] for e in shrunk)
    return {
        "groups": float(len(shrunk)),
        "requested_ratio": sum(e["ratio"] * e["before"] for e in shrunk) / units,
        "units_removed": sum(e["before"] - e["kept"] for e in shrunk) / units,
        "layers_kept": float(sum(e["structure"] == "kept" for e in entries.values())),
    }


def narrow_cnn(teacher: nn.Module, ratio: float, example_inputs: Any = None, targets: str = "_default") -> nn.Module:
    """A copy of `teacher` with `ratio` of the channels of its convolutions removed (magnitude).

    Example:
        >>> student = narrow_cnn(ImageClassifier((16, 32, 64)), 0.5)   # -> (8, 16, 32)
    """
    student = copy.deepcopy(teacher)
    convs = {n for n, m in student.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ConfigError(f"{type(teacher).__name__} has no convolution to narrow")
    mapping = (
        {name: {"ratio": ratio} for name in sorted(convs)} if targets == "_default" else {targets: {"ratio": ratio}}
    )
    prune_structured(student, mapping, example_inputs=example_inputs)
    return student


def _require_attention(model: nn.Module, mapping: dict, chosen: list, adapter) -> None:
    """Head targets that found no attention module the adapter knows: say what head pruning needs."""
    if chosen or not any(c is not None and c.unit == "heads" for c in mapping.values()):
        return
    raise ConfigError(no_attention_message(model, adapter) or "unit 'heads' matched no attention module")


def no_attention_message(model: nn.Module, adapter=None) -> str | None:
    """Why head pruning finds nothing to prune in `model` (None when an attention module is known).

    Example:
        >>> no_attention_message(nn.Sequential(nn.Linear(4, 4)))
        "unit 'heads' found no attention module in Sequential that the adapter describes ..."
    """
    adapter = adapter if adapter is not None else adapter_for(model)
    if any(is_attention(m, adapter) or isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return None  # nn.MultiheadAttention is split into q/k/v/out Linear layers first
    known = sorted(s.class_name for s in adapter.attention) or "none"
    return (
        f"unit 'heads' found no attention module in {type(model).__name__} that the adapter describes (attention "
        f"specs name each class's query/key/value/output Linear layers; known classes: {known}, "
        "and nn.MultiheadAttention)"
    )
