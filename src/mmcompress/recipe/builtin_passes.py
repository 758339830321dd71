"""The built-in passes: evaluate, finetune, quantize (+ analysis, mixed precision, QAT), export_onnx.
Pruning passes live in `prune_passes.py`."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from pydantic import Field

from mmcompress.core.config import FrozenConfig
from mmcompress.core.io import file_sha256
from mmcompress.core.record import Record
from mmcompress.evaluate.measure import latency_ms, measure
from mmcompress.graph.export import export_onnx
from mmcompress.quant.api import QuantConfig, quantize, replay_quantize
from mmcompress.recipe.context import RunContext, StageOutcome
from mmcompress.recipe.passes import PASSES, Pass
from mmcompress.recipe.speech_export import export_speech_encoder, is_speech_encoder_decoder
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.reference_tasks import EvaluationTask


class EvaluateConfig(FrozenConfig):
    """Evaluation settings: metric batch size, latency batch size and repeats."""

    batch_size: int = Field(512, ge=1)
    latency_batch: int = Field(8, ge=1)
    latency_repeats: int = Field(20, ge=1)


def size_metrics(ctx: RunContext, latency_batch: int, repeats: int) -> tuple[dict[str, float], str]:
    """Size (total and per modality) and latency of the current model, flattened to floats, and what
    the latency timed: a forward pass on `latency_batch` test items, or what the task times
    instead (a speech recognizer: greedy transcription of one clip)."""
    timed = ctx.task.latency_call(ctx.test_data) if ctx.test_data is not None else None
    m = measure(ctx.model, timed or ctx.example_batch(latency_batch), repeats=repeats)
    out = {
        "params": float(m.total.params),
        "nonzeros": float(m.total.nonzeros),
        "stored_bytes": float(m.total.stored_bytes),
        "float32_bytes": float(m.total.float32_bytes),
        "compression": m.compression,
        "latency_ms": m.latency_ms.get("median", float("nan")),
        "latency_p10_ms": m.latency_ms.get("p10", float("nan")),
        "latency_p90_ms": m.latency_ms.get("p90", float("nan")),
        "latency_threads": m.latency_ms.get("threads", float("nan")),
    }
    for tower, size in m.per_modality.items():
        out[f"stored_bytes.{tower}"] = float(size.stored_bytes)
    return out, timed.what if timed else f"batch of {min(latency_batch, len(ctx.test_data))}"


@PASSES.register("evaluate")
class EvaluatePass(Pass):
    """Task metrics on the test data plus size and latency."""

    Config = EvaluateConfig
    changes_model = False

    def run(self, ctx: RunContext) -> StageOutcome:
        metrics = dict(ctx.task.evaluate(ctx.model, ctx.test_data, self.config.batch_size))
        sizes, timed = size_metrics(ctx, self.config.latency_batch, self.config.latency_repeats)
        return StageOutcome({**metrics, **sizes}, extra={"latency_of": timed})


class _TargetedPass(Pass):
    accepts_targets = True

    def mapping(self) -> object:
        return self.targets if self.targets is not None else self.config

    def configs(self) -> list:
        """The stage config and every (non-skipped) target config."""
        return [self.config] + [c for c in (self.targets or {}).values() if c is not None]


class QuantPassConfig(QuantConfig):
    """QuantConfig plus how much training data calibrates (GPTQ, static activations, SmoothQuant)."""

    calib_samples: int = Field(512, ge=1)
    calib_batch_size: int = Field(64, ge=1)


@PASSES.register("quantize")
class QuantizePass(_TargetedPass):
    """Weight quantization (2-8 bits, per channel/group/tensor, rtn or GPTQ) with packed storage."""

    Config = QuantPassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config
        calib = ctx.calibration_batches(cfg.calib_samples, cfg.calib_batch_size)
        record = quantize(ctx.model, self.mapping(), calib=calib)
        sqnr = [m["sqnr_db"] for m in record.modules.values()]
        metrics = {**record.metrics, "min_weight_sqnr_db": min(sqnr) if sqnr else float("nan")}
        bits = [m["bits"] for m in record.modules.values() if isinstance(m.get("bits"), (int, float))]
        if bits:  # what `weight_bits: auto` resolved to, on the console's stage table
            metrics.update(weight_bits_min=float(min(bits)), weight_bits_max=float(max(bits)))
        return StageOutcome(metrics, record)

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_quantize(ctx.model, record)


class FinetuneConfig(TrainConfig):
    """Fine-tuning defaults: one short epoch at a lower learning rate.

    keep_best: the task's metric is measured on the first `check_samples` training samples before
        and after every epoch, and the best weights are kept, the starting ones included: a
        fine-tune that only hurts (a learning rate too high for a pretrained transformer: MiniLM
        50% Wanda, cosine 0.924 -> 0.899 after one epoch at 5e-4) gives back what it started from,
        with a warning. Not for tasks whose metric is a user's evaluation function (it would
        select on the test data).
    """

    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    keep_best: bool = True
    check_samples: int = Field(256, ge=1)


@PASSES.register("finetune")
class FinetunePass(Pass):
    """Train with the task loss; pruning masks are kept; resumes from its per-epoch checkpoint."""

    Config = FinetuneConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        cfg = self.config.model_copy(update={"seed": ctx.seed + self.config.seed})
        check = None
        if cfg.keep_best and not isinstance(ctx.task, EvaluationTask):
            check = first_samples(ctx.train_data, cfg.check_samples)
            cfg = cfg.model_copy(update={"early_stopping": cfg.early_stopping or cfg.epochs})
        result = fit(ctx.model, ctx.task, ctx.train_data, cfg, val_data=check, checkpoint_dir=ctx.stage_dir,
                     progress=ctx.progress)  # fmt: skip
        metrics = {"final_loss": result.history[-1].get("loss", float("nan")) if result.history else float("nan")}
        if check is not None:
            metrics["kept_epoch"] = float(result.best_epoch or 0)
            _warn_if_start_kept(result, ctx.task.primary_metric, len(check))
        return StageOutcome(metrics, extra={"history": result.history})


def first_samples(data: Any, n: int) -> Any:
    """The first `n` samples of a dataset (a `subset` of its own where it has one).

    Example:
        >>> len(first_samples(list(range(10)), 3))
        3
    """
    if n >= len(data):
        return data
    return data.subset(n) if hasattr(data, "subset") else torch.utils.data.Subset(data, range(n))


def _warn_if_start_kept(result: Any, metric: str, samples: int) -> None:
    if result.best_epoch != 0 or not result.history:
        return
    before, last = result.metrics.get(metric, float("nan")), result.history[-1]  # metrics: the kept epoch's
    warnings.warn(
        f"finetune: the fine-tuned weights did not score better than the starting ones ({metric} {before:.4f} -> "
        f"{last.get(metric, float('nan')):.4f} on {samples} training samples): the starting weights are "
        "kept (try a lower lr)",
        UserWarning,
        stacklevel=2,
    )


class ExportConfig(FrozenConfig):
    """ONNX export: opset, file name, and how many test samples to evaluate through ONNX Runtime."""

    opset: int = Field(17, ge=13, le=21)
    filename: str = Field("model.onnx", pattern=r"^[\w.-]+\.onnx$")
    check_batch: int = Field(16, ge=1)
    eval_limit: int | None = Field(2000, ge=1)


@PASSES.register("export_onnx")
class ExportPass(Pass):
    """Export to ONNX (int8 weights stay int8), check it, and evaluate the ONNX Runtime artifact. A
    Whisper-style speech model exports its encoder, evaluated with the decoder in PyTorch."""

    Config = ExportConfig
    changes_model = False

    def run(self, ctx: RunContext) -> StageOutcome:
        from mmcompress.graph.ort_module import OrtModule

        path = ctx.output_dir / self.config.filename
        subset = ctx.test_data.subset(self.config.eval_limit) if hasattr(ctx.test_data, "subset") else ctx.test_data
        if is_speech_encoder_decoder(ctx.model):  # the decoder's growing cache does not export: the encoder does
            return export_speech_encoder(ctx, path, subset, self.config.check_batch)
        res = export_onnx(ctx.model, ctx.example_batch(self.config.check_batch), path, opset=self.config.opset)
        metrics = {"file_bytes": float(res.file_bytes), "int8_weights": float(res.int8_weights)}
        metrics["nbit_weights"] = float(res.nbit_weights)  # 4-bit codes (MatMulNBits)
        metrics.update(max_abs_error=res.max_abs_error, output_cosine=res.cosine)
        deployed = OrtModule.load(path, ctx.model)
        batch = ctx.example_batch(8)
        metrics["ort_latency_ms"] = latency_ms(deployed, batch, repeats=9, warmup=2)["median"]  # same batch
        metrics["torch_latency_ms"] = latency_ms(ctx.model, batch, repeats=9, warmup=2)["median"]  # eval mode
        primary = ctx.task.primary_metric
        metrics[f"ort_{primary}"] = ctx.task.evaluate(deployed, subset)[primary]
        metrics[f"torch_{primary}"] = ctx.task.evaluate(ctx.model, subset)[primary]
        return StageOutcome(metrics, artifacts={"onnx": str(path), "onnx_sha256": file_sha256(path)})


class AnalyzeQuantConfig(QuantPassConfig):
    """The grid to analyse (as for quantize) and how much training data calibrates."""


@PASSES.register("analyze_quant")
class AnalyzeQuantPass(_TargetedPass):
    """Per-layer quantization error (weight, SQNR, output) with a step search; writes a table and a plot."""

    Config = AnalyzeQuantConfig
    changes_model = False

    def run(self, ctx: RunContext) -> StageOutcome:
        from mmcompress.core.io import atomic_write_bytes, atomic_write_text
        from mmcompress.quant.analysis import analyze_quantization_error, error_table
        from mmcompress.report.plots import layer_errors

        cfg = self.config
        calib = ctx.calibration_batches(cfg.calib_samples, cfg.calib_batch_size)
        rows = analyze_quantization_error(ctx.model, self.mapping(), calib)
        table = error_table(rows)
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "---|" * len(table[0]))
        md = atomic_write_text(ctx.stage_dir / "quant_error.md", "\n".join(lines) + "\n")
        png = layer_errors(
            [r.name for r in rows],
            [r.output_rel_error for r in rows],
            [r.best_output_rel_error for r in rows],
            [r.modality or "-" for r in rows],
        )
        plot = atomic_write_bytes(ctx.stage_dir / "quant_error.png", png)
        worst = max(rows, key=lambda r: r.output_rel_error)
        metrics = {
            "layers": float(len(rows)),
            "min_sqnr_db": min(r.sqnr_db for r in rows),
            "max_output_rel_error": worst.output_rel_error,
            "max_output_rel_error_searched": max(r.best_output_rel_error for r in rows),
        }
        return StageOutcome(
            metrics, artifacts={"table": str(md), "plot": str(plot)}, extra={"layers": [r.to_dict() for r in rows]}
        )


class MixedPassConfig(FrozenConfig):
    """Mixed-precision settings plus how much training data calibrates."""

    mixed: dict = Field(default_factory=dict)
    calib_samples: int = Field(256, ge=1)
    calib_batch_size: int = Field(64, ge=1)


@PASSES.register("quantize_mixed")
class QuantizeMixedPass(Pass):
    """Per-layer bits from measured sensitivity under an average-bits budget (per tower if given)."""

    Config = MixedPassConfig

    def __init__(self, config: FrozenConfig, targets=None) -> None:
        from mmcompress.quant.mixed import MixedPrecisionConfig

        super().__init__(config, targets)
        self.mixed = MixedPrecisionConfig.from_dict(config.mixed, "quantize_mixed.config.mixed")

    def run(self, ctx: RunContext) -> StageOutcome:
        from mmcompress.core.io import atomic_write_bytes
        from mmcompress.quant.mixed import quantize_mixed
        from mmcompress.report.plots import sensitivity_heatmap

        calib = ctx.calibration_batches(self.config.calib_samples, self.config.calib_batch_size)
        labelled = None
        if self.mixed.sensitivity == "fisher":
            labelled = ctx.labelled_batches(self.config.calib_samples, self.config.calib_batch_size)
        record, plan = quantize_mixed(ctx.model, self.mixed, calib, labelled, ctx.batch_loss)
        names = list(plan.bits)
        options = sorted(set(self.mixed.bits_options))
        png = sensitivity_heatmap(
            names, options, [[plan.sensitivity[n][b] for b in options] for n in names], [plan.bits[n] for n in names]
        )
        plot = atomic_write_bytes(ctx.stage_dir / "sensitivity.png", png)
        return StageOutcome(
            dict(record.metrics),
            record,
            artifacts={"plot": str(plot)},
            extra={"bits": plan.bits, "sensitivity": plan.sensitivity},
        )

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_quantize(ctx.model, record)


class QATPassConfig(FinetuneConfig):
    """Training settings plus the weight bits learned with LSQ and layers kept in float."""

    bits: int = Field(4, ge=2, le=8)
    skip: tuple[str, ...] = ()


@PASSES.register("qat")
class QATPass(Pass):
    """Quantization-aware training (STE + learned steps), then conversion to integer codes."""

    Config = QATPassConfig

    def run(self, ctx: RunContext) -> StageOutcome:
        from mmcompress.quant.qat import quantization_aware_training

        fields = {k: v for k, v in self.config.to_dict().items() if k in TrainConfig.model_fields}
        train = TrainConfig.from_dict({**fields, "seed": ctx.seed + self.config.seed})
        record, history = quantization_aware_training(
            ctx.model, ctx.task, ctx.train_data, train, self.config.bits, ctx.test_data, self.config.skip
        )
        last = history[-1] if history else {}
        metrics = {
            "float_loss": last.get("float_loss", float("nan")),
            "quant_loss": last.get("quant_loss", float("nan")),
        }
        return StageOutcome({**metrics, **record.metrics}, record, extra={"history": history})

    def replay(self, ctx: RunContext, record: Record) -> None:
        replay_quantize(ctx.model, record)
