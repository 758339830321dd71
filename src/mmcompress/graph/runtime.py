"""ONNX Runtime session wrapper with thread and graph-optimization settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mmcompress.errors import DataError, ModelError

QUIET = 3  # ONNX Runtime's log severity: errors and fatal only
LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OrtModel:
    """Run an ONNX model with ONNX Runtime on named tensor inputs.

    mmcompress files need no setting: weight-only int8 weights ship as Cast -> Mul chains that every
    session folds at load, and static W8A8 layers as QDQ that ONNX Runtime's fusions (on by default)
    turn into QLinearConv / QGemm. For files from other tools, `fold_dequantize` dequantizes
    DequantizeLinear nodes on int8 weights once when the session loads instead of on every call;
    that also turns off the QDQ fusions, so the default (None) folds only when the graph has no
    QuantizeLinear -> DequantizeLinear pairs on activations.

    Example:
        >>> ort_model = OrtModel.from_path("out/model.onnx", threads=2)
        >>> image_embeds, text_embeds = ort_model.run(batch)
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    @staticmethod
    def _options(threads: int | None, level: str, fold_dequantize: bool = True) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = LEVELS[level]
        opts.log_severity_level = QUIET  # its optimizer's notes ("Removing initializer ...") are not the user's
        if fold_dequantize:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return opts

    @classmethod
    def from_path(
        cls, path: str | Path, threads: int | None = None, level: str = "all", fold_dequantize: bool | None = None
    ) -> OrtModel:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read ONNX file {path} ({err.strerror})") from None
        try:
            return cls.from_bytes(data, threads, level, fold_dequantize)
        except Exception as err:  # onnx / onnxruntime raise many types for a broken file
            detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ModelError(f"ONNX file {path} cannot be loaded (truncated or corrupted?): {detail}") from None

    @classmethod
    def from_bytes(
        cls, data: bytes, threads: int | None = None, level: str = "all", fold_dequantize: bool | None = None
    ) -> OrtModel:
        if fold_dequantize is None:
            fold_dequantize = not has_activation_qdq(onnx.load_from_string(data))
        opts = cls._options(threads, level, fold_dequantize)
        return cls(ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]))

    def run(self, inputs: dict[str, Any] | torch.Tensor | np.ndarray) -> list[np.ndarray]:
        """The file's outputs for `inputs`: a dict by input name, or one tensor/array when the file has
        one input (a CNN's image batch).

        Example:
            >>> logits = OrtModel.from_path("model.onnx").run(torch.randn(1, 3, 224, 224))[0]
        """
        if not isinstance(inputs, dict):
            if len(self.input_names) != 1:
                raise DataError(f"this ONNX file takes {len(self.input_names)} inputs {self.input_names}: "
                                "pass a dict of them by name")  # fmt: skip
            inputs = {self.input_names[0]: inputs}
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise DataError(
                f"ONNX inputs {missing} are missing; the file takes {self.input_names}, got {sorted(inputs)}"
            )
        feed = {}
        for name in self.input_names:
            value = inputs[name]
            feed[name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return self.session.run(None, feed)


def has_activation_qdq(proto: onnx.ModelProto) -> bool:
    """True when a QuantizeLinear output feeds a DequantizeLinear (a QDQ graph for integer fusions).

    Example:
        >>> has_activation_qdq(onnx.load("model_qdq.onnx"))
        True
    """
    quantized = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in quantized for n in proto.graph.node)


def optimize_onnx(path: str | Path, out_path: str | Path, level: str = "extended") -> Path:
    """Write the graph ONNX Runtime runs after its optimizations at `level` ("basic": constant
    folding, BatchNorm into Conv, redundant nodes; "extended": also fusions such as Conv+Relu,
    GELU, LayerNorm; "all": plus layout changes), so the deployed file needs no start-up rewrite.

    Example:
        >>> optimize_onnx("model.onnx", "model.opt.onnx", level="extended")
    """
    if level not in LEVELS or level == "disable":
        raise ValueError(f"level must be one of {[k for k in LEVELS if k != 'disable']}, got {level!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.log_severity_level = QUIET
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    os.replace(tmp, out_path)
    return out_path
