"""Graph passes: fold_batchnorm (+ identity removal), factorize (low-rank SVD), share_weights
(Deep Compression k-means weight sharing with centroid fine-tuning)."""

from __future__ import annotations

from pydantic import Field

from mmcompress.core.config import FrozenConfig
from mmcompress.core.record import Record
from mmcompress.graph.folding import drop_identities, fold_batchnorm, replay_fold
from mmcompress.graph.lowrank import LowRankConfig, factorize, replay_factorize
from mmcompress.graph.sharing import ShareConfig, fuse_shared_weights, share_weights
from mmcompress.recipe.builtin_passes import _TargetedPass
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import PASSES, Pass
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit


class FoldConfig(FrozenConfig):
    """BatchNorm folding; `drop_identities` also removes Identity/Dropout from Sequentials."""

    drop_identities: bool = True


@PASSES.register("fold_batchnorm")
class FoldPass(Pass):
    """Fold BatchNorm into the Conv/Linear before it (exact); the model gets faster in eager mode."""

    Config = FoldConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        record = fold_batchnorm(ctx.model.eval())
        removed = drop_identities(ctx.model) if self.config.drop_identities else 0
        record.metrics["identities_removed"] = float(removed)
        return StageOutcome(dict(record.metrics), record)

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_fold(ctx.model, record)
        if record.metrics.get("identities_removed"):
            drop_identities(ctx.model)


@PASSES.register("factorize")
class FactorizePass(_TargetedPass):
    """Low-rank factorization of Linear / 1x1 Conv2d layers (truncated SVD, rank per layer)."""

    Config = LowRankConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        record = factorize(ctx.model, self.mapping())
        return StageOutcome(dict(record.metrics), record)

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_factorize(ctx.model, record)


class SharePassConfig(ShareConfig):
    """ShareConfig plus the centroid fine-tuning (`train.epochs: 0` skips it)."""

    train: TrainConfig = TrainConfig(epochs=1, lr=1e-4)
    finetune: bool = Field(True)


@PASSES.register("share_weights")
class SharePass(_TargetedPass):
    """Deep Compression weight sharing: k-means per layer, centroids fine-tuned, then fused."""

    Config = SharePassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        record = share_weights(ctx.model, self.mapping())
        if cfg.finetune:
            train = cfg.train.model_copy(update={"seed": ctx.seed + cfg.train.seed})
            fit(ctx.model, ctx.task, ctx.train_data, train, progress=ctx.progress)
        fuse_shared_weights(ctx.model)
        record.metrics["layers"] = float(len(record.modules))
        return StageOutcome(dict(record.metrics), record)
