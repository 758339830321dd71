"""The built-in pruning passes: prune (unstructured / N:M), prune_structured, gradual_prune."""

from __future__ import annotations

import copy

from pydantic import Field

from mmcompress.core.record import Record
from mmcompress.errors import ConfigError
from mmcompress.prune.api import PruneConfig, prune, replay_prune
from mmcompress.prune.repair import recalibrate_batchnorm
from mmcompress.prune.schedule import gradual_prune
from mmcompress.prune.structured import StructuredConfig, prune_structured, replay_structured
from mmcompress.recipe.builtin_passes import _TargetedPass
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import PASSES
from mmcompress.train.config import TrainConfig


class PrunePassConfig(PruneConfig):
    """PruneConfig plus how much training data scores data-driven criteria (taylor, fisher, wanda, sparsegpt)."""

    data_samples: int = Field(256, ge=1)
    data_batch_size: int = Field(32, ge=1)


@PASSES.register("prune")
class PrunePass(_TargetedPass):
    """Unstructured / N:M pruning by magnitude, taylor, fisher, wanda or sparsegpt importance."""

    Config = PrunePassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        configs = self.configs()
        methods = {c.method for c in configs}
        kwargs = {}
        if methods & {"taylor", "fisher"}:
            kwargs = {"data": ctx.labelled_batches(cfg.data_samples, cfg.data_batch_size), "loss_fn": ctx.batch_loss}
        elif methods & {"wanda", "sparsegpt"}:
            kwargs = {"data": ctx.calibration_batches(cfg.data_samples, cfg.data_batch_size)}
        if methods & {"taylor", "fisher"} and methods & {"wanda", "sparsegpt"}:
            raise ConfigError("one prune stage mixes gradient (taylor/fisher) and input (wanda/sparsegpt) criteria")
        record = prune(ctx.model, self.mapping(), **kwargs)
        return StageOutcome(dict(record.metrics), record)

    def restore(self, ctx: RunContext, record: Record) -> None:
        replay_prune(ctx.model, record)


class StructuredPassConfig(StructuredConfig):
    """StructuredConfig plus how much training data scores taylor/fisher importance (and calibrates
    `reconstruct`), and `recalibrate_batchnorm`: after pruning, move each BatchNorm's running
    statistics by the change of its input that pruning caused (`prune.repair.recalibrate_batchnorm`
    with the unpruned model as reference), measured on the same calibration inputs."""

    data_samples: int = Field(256, ge=1)
    data_batch_size: int = Field(32, ge=1)
    recalibrate_batchnorm: bool = False


@PASSES.register("prune_structured")
class StructuredPrunePass(_TargetedPass):
    """Remove channels / neurons / LSTM units / attention heads: tensors shrink, the model gets faster."""

    Config = StructuredPassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        configs = self.configs()
        kwargs = {"example_inputs": ctx.example_batch(2)}
        if any(c.method != "magnitude" for c in configs):
            kwargs.update(data=ctx.labelled_batches(cfg.data_samples, cfg.data_batch_size), loss_fn=ctx.batch_loss)
        if any(c.method == "ablation" for c in configs):  # heads masked one at a time on calibration inputs
            kwargs.update(calib=ctx.calibration_batches(cfg.data_samples, cfg.data_batch_size))
        calib = None
        measures = any(c.reconstruct or c.method == "reconstruction" or c.scope == "sensitivity" for c in configs)
        # channel scores ("variance") and the compensation of removed channels: measured, not estimated
        measures = measures or any(c.unit == "channels" and (c.compensate or c.method == "auto") for c in configs)
        if cfg.recalibrate_batchnorm or measures:
            calib = kwargs.get("calib") or ctx.calibration_batches(cfg.data_samples, cfg.data_batch_size)
            kwargs.update(calib=calib)
        reference = copy.deepcopy(ctx.model).eval() if cfg.recalibrate_batchnorm else None
        record = prune_structured(ctx.model, self.mapping(), **kwargs)
        if reference is not None:
            recalibrate_batchnorm(ctx.model, calib, reference=reference, record=record)
        return StageOutcome(dict(record.metrics), record)

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_structured(ctx.model, record)


class GradualPruneConfig(PruneConfig):
    """Gradual magnitude pruning while training: final sparsity, training and when sparsity stops rising."""

    train: TrainConfig = TrainConfig(epochs=6, lr=1e-3)
    prune_epochs: int | None = Field(None, ge=1)


@PASSES.register("gradual_prune")
class GradualPrunePass(_TargetedPass):
    """Zhu & Gupta cubic schedule: sparsity rises over the first epochs, then fine-tunes with masks kept."""

    Config = GradualPruneConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        train = cfg.train.model_copy(update={"seed": ctx.seed + cfg.train.seed})
        record, result = gradual_prune(
            ctx.model, ctx.task, ctx.train_data, train, self.mapping(), prune_epochs=cfg.prune_epochs,
            progress=ctx.progress,
        )  # fmt: skip
        metrics = {**record.metrics, "final_loss": result.metrics.get("loss", float("nan"))}
        return StageOutcome(metrics, record, extra={"history": result.history})

    def restore(self, ctx: RunContext, record: Record) -> None:
        replay_prune(ctx.model, record)
