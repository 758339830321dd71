"""A compression plan: per-modality quantization and pruning settings (+ fine-tuning), and the
recipe that carries it out (`plan_to_recipe`; `mmcompress run` reproduces a chosen plan)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mmcompress.core.config import FrozenConfig
from mmcompress.core.cpu import integer_weight_bits
from mmcompress.core.io import stable_hash
from mmcompress.recipe.schema import Recipe, load_recipe


class TowerPlan(FrozenConfig):
    """What one tower gets.

    Attributes:
        bits: weight bits (0 keeps the tower float). 8: per channel; fewer: groups of `group_size`
            inputs (0: per channel).
        activations: "dynamic" runs Linear layers on integer kernels (needs bits 8: W8A8, or 4:
            W4A8, 4-bit codes on one int8 GEMM per group of inputs).
        sparsity: unstructured sparsity (wanda), 0 for none.
        channels: fraction of channels/neurons removed by structured pruning (taylor), 0 for none.
        embedding_bits: bits of the tower's embedding tables (None: `bits`); tables have no
            matrix product, so fewer bits there cost size, not speed.

    Example:
        >>> TowerPlan(bits=4, sparsity=0.5).describe()
        'W4 g64, 50% sparse'
    """

    bits: Literal[0, 3, 4, 8] = 8
    activations: Literal["none", "dynamic"] = "none"
    sparsity: float = Field(0.0, ge=0, lt=1)
    channels: float = Field(0.0, ge=0, lt=1)
    group_size: int = Field(64, ge=0)
    embedding_bits: Literal[0, 3, 4, 8] | None = None

    @model_validator(mode="after")
    def _dynamic_needs_8_or_4_bits(self) -> TowerPlan:
        if self.activations == "dynamic" and self.bits not in (8, 4):
            raise ValueError("activations 'dynamic' (integer kernels) needs bits 8 or 4")
        return self

    def describe(self) -> str:
        dynamic = self.activations == "dynamic"
        parts = ["float" if self.bits == 0 else f"W{7 if dynamic and self.bits == 8 else self.bits}"]
        parts[0] += ("A8" if dynamic else "") + (
            f" g{self.group_size}" if 0 < self.bits < 8 and self.group_size else ""
        )
        if self.embedding_bits is not None and self.embedding_bits != self.bits:
            parts.append(f"embeddings {'float' if self.embedding_bits == 0 else f'W{self.embedding_bits}'}")
        if self.channels:
            parts.append(f"{self.channels:.0%} channels removed")
        if self.sparsity:
            parts.append(f"{self.sparsity:.0%} sparse")
        return ", ".join(parts)


class Plan(FrozenConfig):
    """Per-modality settings plus fine-tuning after pruning.

    Example:
        >>> plan = Plan(towers={"image": TowerPlan(channels=0.5), "text": TowerPlan(bits=4)}, finetune_epochs=1)
        >>> plan.key()[:8]
    """

    towers: dict[str, TowerPlan]
    finetune_epochs: int = Field(0, ge=0)
    finetune_steps: int = Field(150, ge=1)
    finetune_freeze: tuple[str, ...] = ()
    finetune_lr: float = Field(5e-4, gt=0)
    finetune_batch_size: int = Field(128, ge=1)
    tune_steps: int = Field(0, ge=0)  # distillation tuning of the quantized model (`tune_quantized`)

    def key(self) -> str:
        """Stable hash of the plan (the trial cache's key; plans without tuning keep their old keys)."""
        data = self.to_dict()
        if not data.get("tune_steps"):
            data.pop("tune_steps", None)
        return stable_hash(data)

    def is_uniform(self) -> bool:
        """Same bits, activations, sparsity and channel ratio for every tower."""
        settings = {(t.bits, t.activations, t.sparsity, t.channels) for t in self.towers.values()}
        tables = {t.embedding_bits for t in self.towers.values()} - {None}
        return len(settings) == 1 and tables <= {next(iter(settings))[0]}

    def describe(self) -> str:
        text = "; ".join(f"{m}: {t.describe()}" for m, t in sorted(self.towers.items()))
        text += f"; fine-tune {self.finetune_epochs} epoch(s)" if self.finetune_epochs else ""
        return text + (f"; distillation-tuned {self.tune_steps} steps" if self.tune_steps else "")


def plan_to_recipe(
    plan: Plan,
    model: str | None,
    *,
    test_limit: int | None = None,
    seed: int = 0,
    onnx_eval_limit: int | None = None,
    specs: dict[str, Any] | None = None,
    baseline: bool = False,
) -> Recipe:
    """The recipe that applies `plan` to a model (spec; `specs` adds dataset/task/adapter specs):
    (with `baseline`, an evaluation of the model as given first, so the run's report shows before
    and after), structured pruning, unstructured pruning, fine-tuning, quantization, evaluation and
    ONNX export (the artifact is evaluated in ONNX Runtime on `onnx_eval_limit` test samples, all
    when None).

    Example:
        >>> recipe = plan_to_recipe(plan, "fashion-clip")
        >>> Path("plan.yaml").write_text(yaml.safe_dump(recipe.to_dict()))   # mmcompress run plan.yaml
    """
    towers = sorted(plan.towers.items())
    stages: list[dict[str, Any]] = [{"name": "baseline", "pass": "evaluate"}] if baseline else []
    channels = {f"modality:{m}": {"ratio": t.channels} for m, t in towers if t.channels > 0}
    if channels:
        stages.append({"pass": "prune_structured", "config": {"method": "taylor"}, "targets": channels})
    sparse = {f"modality:{m}": {"sparsity": t.sparsity} for m, t in towers if t.sparsity > 0}
    if sparse:
        stages.append({"pass": "prune", "config": {"method": "wanda"}, "targets": {**sparse, "_default": None}})
    if plan.finetune_epochs and (channels or sparse):
        train = {"epochs": plan.finetune_epochs, "max_steps_per_epoch": plan.finetune_steps,
                 "lr": plan.finetune_lr, "batch_size": plan.finetune_batch_size}  # fmt: skip
        stages.append({"pass": "finetune", "config": {**train, "freeze": list(plan.finetune_freeze)}})
    tables = {f"modality:{m}": _table_target(t) for m, t in towers if t.embedding_bits is not None}
    if any(v is not None for v in tables.values()):  # embedding tables first: the next pass skips them
        stages.append({"pass": "quantize", "name": "quantize_embeddings", "targets": {**tables, "_default": None}})
    quant = {f"modality:{m}": _quant_target(t) for m, t in towers}
    if any(v is not None for v in quant.values()):
        stages.append({"pass": "quantize", "config": {"calib_samples": 256}, "targets": {**quant, "_default": None}})
        if plan.tune_steps:
            stages.append({"pass": "tune_quantized", "config": {"steps": plan.tune_steps}})
    stages.append({"name": "compressed", "pass": "evaluate", "config": {"latency_repeats": 3}})
    stages.append({"pass": "export_onnx", "config": {"eval_limit": onnx_eval_limit}})
    data = {"test_limit": test_limit} if test_limit else {}
    extra = {k: v for k, v in (specs or {}).items() if v is not None}
    return load_recipe({"model": model, **extra, "seed": seed, "data": data, "stages": stages})


def _table_target(tower: TowerPlan) -> dict[str, Any] | None:
    if not tower.embedding_bits:
        return None
    target = _quant_target(tower.model_copy(update={"bits": tower.embedding_bits, "activations": "none"}))
    return {**target, "layer_types": ["embedding"]}


def _quant_target(tower: TowerPlan) -> dict[str, Any] | None:
    if tower.bits == 0:
        return None
    if tower.embedding_bits is not None:  # tables were handled by their own pass (or stay float)
        rest = _quant_target(tower.model_copy(update={"embedding_bits": None}))
        kinds = [k for k in rest.get("layer_types", ["linear", "conv", "embedding"]) if k != "embedding"]
        return {**rest, "layer_types": kinds}
    if tower.bits == 8:
        if tower.activations == "dynamic":
            # Linear layers on integer kernels, embedding tables int8 (ConvInteger is slow on x86: convs stay out)
            bits = integer_weight_bits()  # 7 only where u8s8 kernels saturate (AVX2 without VNNI)
            return {"weight_bits": bits, "activations": "dynamic", "layer_types": ["linear", "embedding"]}
        return {"weight_bits": 8}
    grid = {"weight_bits": tower.bits}  # one step per channel
    if tower.group_size:
        grid = {**grid, "granularity": "per_group", "group_size": tower.group_size}
    if tower.activations == "dynamic":  # W4A8: Linear layers on int8 GEMMs per group (convs stay out, as above)
        return {**grid, "activations": "dynamic", "layer_types": ["linear", "embedding"]}
    return grid
