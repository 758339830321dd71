"""A speech encoder-decoder (Whisper) whose encoder runs in ONNX Runtime, the decoder in PyTorch.

The encoder is one call per utterance on a fixed 30 s window: it exports as a plain graph (float
or with the model's integer weights) and ONNX Runtime runs it faster than PyTorch eager. The
decoder runs once per token with a growing key/value cache; exporting it needs a graph that takes
and returns the cache (past_key_values as explicit inputs/outputs, as optimum's
"decoder_with_past" does), which `export_onnx` does not build, so it stays in PyTorch, where the
quantized modules' integer kernels apply.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmcompress.errors import ModelError
from mmcompress.graph.export import ExportResult, export_onnx
from mmcompress.graph.runtime import OrtModel


class OrtSpeechEncoder(nn.Module):
    """Stands in for a Whisper encoder: `forward(input_features)` runs the ONNX file.

    Keeps the source encoder's two front-end convolutions (generation reads their strides) and
    nothing else, so the model's PyTorch parameters are the decoder's.

    Example:
        >>> model.model.encoder = OrtSpeechEncoder(OrtModel.from_path("encoder.onnx"), model.model.encoder)
    """

    main_input_name = "input_features"

    def __init__(self, runtime: OrtModel, source: nn.Module) -> None:
        super().__init__()
        self.runtime = runtime
        self.conv1, self.conv2 = source.conv1, source.conv2
        self.config = getattr(source, "config", None)

    def forward(self, input_features: torch.Tensor, *args, return_dict: bool | None = None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        features = input_features.detach().float().cpu().numpy()
        (hidden,) = self.runtime.run({"input_features": features})[:1]
        hidden = torch.from_numpy(hidden).to(input_features.device)
        return BaseModelOutput(last_hidden_state=hidden) if return_dict is not False else (hidden,)


class _EncoderOnly(nn.Module):
    """The encoder as a one-input, one-output module for export."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=input_features, return_dict=True).last_hidden_state


def encoder_on_onnxruntime(
    model: nn.Module, path: str | Path, *, threads: int | None = None, example: torch.Tensor | None = None
) -> ExportResult:
    """Export `model`'s speech encoder (float or quantized) to `path` and run it in ONNX Runtime from now on.

    The model is edited in place: its encoder becomes an `OrtSpeechEncoder`; `generate`,
    `mmcompress.audio.transcribe` and WER evaluation work unchanged.

    Args:
        model: a Whisper-style encoder-decoder (`model.model.encoder` takes `input_features`).
        path: the encoder's .onnx file (written atomically).
        threads: ONNX Runtime intra-op threads (None: its default).
        example: input features (B, n_mels, frames) to export and check with (default: zeros of
            one 30 s window).

    Returns:
        The export's parity check (PyTorch vs ONNX Runtime on `example`).

    Example:
        >>> whisper = load_model("hf:whisper-tiny.en")
        >>> encoder_on_onnxruntime(whisper, "out/encoder.onnx", threads=2).cosine > 0.999
        True
        >>> transcribe(whisper, load_real_speech()[:1])
    """
    inner = getattr(model, "model", None)
    encoder = getattr(inner, "encoder", None)
    if encoder is None or not hasattr(encoder, "conv1"):
        raise ModelError(f"{type(model).__name__} has no Whisper-style speech encoder (model.encoder.conv1)")
    if isinstance(encoder, OrtSpeechEncoder):
        raise ModelError("the encoder already runs in ONNX Runtime")
    config = getattr(model, "config", None)
    if example is None:
        frames = 2 * getattr(config, "max_source_positions", 1500)
        example = torch.zeros(1, getattr(config, "num_mel_bins", 80), frames)
    result = export_onnx(_EncoderOnly(encoder), {"input_features": example}, path)
    inner.encoder = OrtSpeechEncoder(OrtModel.from_path(path, threads=threads), encoder)
    return result
