"""The `tune_quantized` pass: distillation tuning of a quantized model through its integer
simulation (`mmcompress.quant.tune`), taught by the model the recipe started from."""

from __future__ import annotations

from pydantic import Field

from mmcompress.errors import ConfigError
from mmcompress.quant.tune import TuneConfig, tune_quantized
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import PASSES, Pass


class TunePassConfig(TuneConfig):
    """TuneConfig plus how many unlabeled training inputs it reads, in batches of `batch_size`.

    Example:
        >>> TunePassConfig.from_dict({"steps": 200, "samples": 2048}).batch_size
        16
    """

    samples: int = Field(4096, ge=1)  # MobileNetV2: 1024 photo crops over-fit, 4096 did not
    batch_size: int = Field(16, ge=1)


@PASSES.register("tune_quantized")
class TunePass(Pass):
    """Train a quantized model's biases and weights (on their grids) to match the original model."""

    Config = TunePassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        if ctx.original_model is None:
            raise ConfigError("tune_quantized: this run kept no copy of its starting model to teach with")
        batches = ctx.calibration_batches(cfg.samples, cfg.batch_size)
        tune = TuneConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k in TuneConfig.model_fields})
        result = tune_quantized(ctx.model, ctx.original_model, batches, tune)
        return StageOutcome({k: float(v) for k, v in result.items()})
