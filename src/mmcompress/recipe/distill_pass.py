"""The `distill` pass: train the compressed model against a teacher (by default the model the
recipe started from), typically after pruning or together with QAT."""

from __future__ import annotations

from mmcompress.distill.api import distill
from mmcompress.distill.config import DistillConfig
from mmcompress.errors import ConfigError
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
        from mmcompress.models.zoo import list_models, load_model

        if name not in list_models():
            raise ConfigError(f"distill.teacher: {name!r} is neither 'original' nor a model ({sorted(list_models())})")
        return load_model(name, progress=ctx.progress)
