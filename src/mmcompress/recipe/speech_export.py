"""The export stage for a Whisper-style speech model: its encoder goes to ONNX and runs in ONNX
Runtime, the decoder stays in PyTorch (its growing key/value cache does not export as a plain
graph: `models.hf.speech_ort`), and the task is measured on that pair, as it would be deployed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from mmcompress.core.io import file_sha256
from mmcompress.evaluate.measure import latency_ms
from mmcompress.models.hf.speech_ort import encoder_on_onnxruntime
from mmcompress.recipe.context import RunContext, StageOutcome


def is_speech_encoder_decoder(model: nn.Module) -> bool:
    """A Whisper-style model: `model.model.encoder` with a convolutional front end, and `generate`.

    Example:
        >>> is_speech_encoder_decoder(load_model("hf:whisper-tiny.en"))
        True
    """
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    return encoder is not None and hasattr(encoder, "conv1") and hasattr(model, "generate")


def export_speech_encoder(ctx: RunContext, path: Path, subset: Any, check_batch: int) -> StageOutcome:
    """Export the encoder of `ctx.model` to `path`, then measure the task and latency with the encoder
    in ONNX Runtime beside the PyTorch model (`ort_<metric>`, `torch_<metric>`, `ort_latency_ms`, ...)."""
    deployed = copy.deepcopy(ctx.model).eval()
    features = ctx.example_batch(check_batch)["input_features"]
    res = encoder_on_onnxruntime(deployed, path, example=features)
    metrics = {"file_bytes": float(res.file_bytes), "int8_weights": float(res.int8_weights),
               "nbit_weights": float(res.nbit_weights), "max_abs_error": res.max_abs_error,
               "output_cosine": res.cosine, "encoder_only": 1.0}  # fmt: skip
    timed = ctx.task.latency_call(ctx.test_data) or ctx.example_batch(8)
    metrics["ort_latency_ms"] = latency_ms(deployed, timed, repeats=9, warmup=2)["median"]
    metrics["torch_latency_ms"] = latency_ms(ctx.model, timed, repeats=9, warmup=2)["median"]
    primary = ctx.task.primary_metric
    metrics[f"ort_{primary}"] = ctx.task.evaluate(deployed, subset)[primary]
    metrics[f"torch_{primary}"] = ctx.task.evaluate(ctx.model, subset)[primary]
    what = getattr(timed, "what", "batch of 8")
    return StageOutcome(metrics, artifacts={"onnx": str(path), "onnx_sha256": file_sha256(path)},
                        extra={"latency_of": what})  # fmt: skip
