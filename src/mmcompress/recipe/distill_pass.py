"""The `distill` pass: train the compressed model against a teacher (by default the model the
recipe started from), typically after pruning or together with QAT."""

from __future__ import annotations

from pydantic import Field, model_validator

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.distill.api import distill
from mmcompress.distill.config import DistillConfig
from mmcompress.distill.students import drop_layers, every_kth, layer_stack
from mmcompress.errors import ConfigError
from mmcompress.models.zoo import list_models, load_model
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import PASSES, Pass


class DistillPassConfig(DistillConfig):
    """DistillConfig plus the teacher: "original" (the recipe's starting model) or a zoo model name.

    Example:
        >>> DistillPassConfig.from_dict({"temperature": 2, "teacher": "original"}).teacher
        'original'
    """

    teacher: str = "original"


@PASSES.register("distill")
class DistillPass(Pass):
    """Knowledge distillation into the current model; masks of earlier pruning stay in place."""

    Config = DistillPassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        teacher = self._teacher(ctx, cfg.teacher)
        config = DistillConfig.from_dict(
            {k: v for k, v in cfg.to_dict().items() if k in DistillConfig.model_fields}, "distill"
        )
        config = config.model_copy(update={"train": cfg.train.model_copy(update={"seed": ctx.seed + cfg.train.seed})})
        result = distill(
            teacher, ctx.model, ctx.train_data, config, task=ctx.task, checkpoint_dir=str(ctx.stage_dir),
            progress=ctx.progress,
        )  # fmt: skip
        return StageOutcome({"final_loss": result.metrics.get("loss", float("nan"))}, extra={"history": result.history})

    @staticmethod
    def _teacher(ctx: RunContext, name: str):
        if name == "original":
            if ctx.original_model is None:
                raise ConfigError("distill: this run kept no copy of its starting model to teach with")
            return ctx.original_model
        if name not in list_models():
            raise ConfigError(f"distill.teacher: {name!r} is neither 'original' nor a model ({sorted(list_models())})")
        return load_model(name, progress=ctx.progress)


class DropLayersConfig(FrozenConfig):
    """Which transformer layers a student keeps: `every` k-th layer (ending with the last, as
    DistilBERT did; default every 2nd) or the explicit `keep` indices, of the layer stack at `path` (default: the
    model's longest ModuleList).

    Example:
        >>> DropLayersConfig(every=2, path="text_tower.bert.encoder.layer").every
        2
    """

    every: int | None = Field(None, ge=1)
    keep: list[int] | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> DropLayersConfig:
        if self.every is not None and self.keep is not None:
            raise ValueError("give one of 'every' and 'keep', not both")
        return self


@PASSES.register("drop_layers")
class DropLayersPass(Pass):
    """Build a shallower student in place: keep some transformer layers (their weights copied)."""

    Config = DropLayersConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        path, stack = layer_stack(ctx.model, cfg.path)
        keep = cfg.keep if cfg.keep is not None else every_kth(len(stack), cfg.every or 2)
        before = len(stack)
        drop_layers(ctx.model, keep, path)
        record = Record("drop_layers", {"_default": cfg.to_dict()}, {path: {"keep": sorted(keep), "of": before}})
        return StageOutcome({"layers": float(len(keep)), "layers_before": float(before)}, record)

    def replay(self, ctx: RunContext, record: Record) -> None:
        for path, info in record.modules.items():
            drop_layers(ctx.model, info["keep"], path)
