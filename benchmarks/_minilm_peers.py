"""Peer quantizers of all-MiniLM-L6-v2, built the way each project documents (benchmark plumbing).

PyTorch peers return a callable model; ONNX peers write a model file from the float export.
Calibration batches (dicts of input_ids / attention_mask tensors) are the ones our methods use.
"""

from __future__ import annotations

import copy

import torch

from mmcompress.models.minilm import MiniLMEncoder


def torch_ao_dynamic(model: MiniLMEncoder, calib=None):
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def torchao_w8a8(model: MiniLMEncoder, calib=None):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def quanto_w8a8(model: MiniLMEncoder, calib):
    from optimum.quanto import Calibration, freeze, qint8, quantize

    model = copy.deepcopy(model)
    quantize(model, weights=qint8, activations=qint8)
    with torch.no_grad(), Calibration():
        for batch in calib[:1]:  # its calibration runs at about 1/20 of float speed: one batch of 64
            model(**batch)
    freeze(model)
    return model


TORCH_PEERS = {
    "torch.ao quantize_dynamic": torch_ao_dynamic,
    "torchao int8 dynamic act + int8 weight": torchao_w8a8,
    "optimum-quanto W8A8 (calibrated)": quanto_w8a8,
}


def _numpy_batches(calib, size: int = 16):
    """Calibration as numpy dicts of `size` sentences (ONNX tools keep every batch's tensors)."""
    out = []
    for batch in calib:
        for start in range(0, len(batch["input_ids"]), size):
            out.append({k: v[start : start + size].numpy() for k, v in batch.items()})
    return out


def ort_dynamic(float_path: str, out: str, calib=None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(float_path, out, per_channel=True, weight_type=QuantType.QInt8)


def ort_static(float_path: str, out: str, calib) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(_numpy_batches(calib))

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        float_path,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )  # fmt: skip  (all op types: mean cosine 0.43; MatMul only is its best showing here)


def nncf_ptq(float_path: str, out: str, calib) -> None:
    import nncf
    import onnx

    items = _numpy_batches(calib)
    dataset = nncf.Dataset(items)
    quantized = nncf.quantize(
        onnx.load(float_path), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items)
    )
    onnx.save(quantized, out)


ONNX_PEERS = {
    "ONNX Runtime quantize_dynamic (per-channel)": ort_dynamic,
    "ONNX Runtime quantize_static (QDQ, per-channel, MatMul)": ort_static,
    "NNCF post-training quantization (ONNX)": nncf_ptq,
}
