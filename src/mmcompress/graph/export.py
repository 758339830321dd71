"""`export_onnx`: float or integer ONNX export, checked, and compared with PyTorch on real inputs.

Export leaves the model as it found it (the train/eval mode of every submodule, parameters,
buffers). What ships is what was measured: every quantized layer goes into the file in its
integer form (a warning names any that cannot), the result reports the file's bytes beside
`measure`'s stored bytes, and a warning says when ONNX Runtime's outputs drift from PyTorch's.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from mmcompress.core.batches import check_finite_weights
from mmcompress.core.cpu import integer_weight_bits
from mmcompress.core.io import atomic_write_bytes
from mmcompress.errors import MMCompressError
from mmcompress.graph.export_axes import Probe, compare, dynamic_axes, failing_axes, probe_axes
from mmcompress.graph.folding import sequential_pairs
from mmcompress.graph.onnx_int8 import rewrite_int8, unconverted_layers
from mmcompress.graph.onnx_nbits import rewrite_matmul_nbits
from mmcompress.graph.onnx_qdq import qdq_ready, rewrite_qdq
from mmcompress.graph.onnx_w8a8 import rewrite_w8a8
from mmcompress.graph.runtime import OrtModel
from mmcompress.graph.storage import stored_bytes
from mmcompress.models.split_attention import packed_attention, split_attention, splittable
from mmcompress.quant.modules import QUANT_MODULES, ActivationQuant


@dataclass
class ExportResult:
    """Where the model went and how well ONNX Runtime agrees with PyTorch on the given inputs."""

    path: str
    file_bytes: int  # the deployed .onnx file
    int8_weights: int
    max_abs_error: float
    cosine: float
    measured_bytes: int = 0  # what `measure` / the compact safetensors file store for the same model
    top1_agreement: float | None = None  # (N, C) outputs: share of rows whose argmax both runtimes agree on
    float_layers: tuple[str, ...] = ()  # quantized layers whose weights stayed float in the file
    nbit_weights: int = 0  # weights stored as 2-7 bit codes (MatMulNBits, packed nibbles), not in int8_weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _saturation_hint(model: nn.Module) -> str:
    """Why a file with 8-bit integer-kernel weights can disagree on this CPU (AVX2 without VNNI)."""
    if integer_weight_bits() >= 8:
        return ""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_MODULES)]
    wide = [n for n, m in layers if getattr(m, "act", None) is not None and m.grid.bits >= 8]
    if not wide:
        return ""
    return (
        f"; this CPU has no VNNI: ONNX Runtime's u8s8 integer kernels saturate 8-bit weight codes here "
        f"({len(wide)} layer(s), first {wide[0]!r}): quantize with weight_bits 7 ('auto' picks it) for such CPUs"
    )


class _Positional(nn.Module):
    """Call a model that takes named inputs with positional tensors (for the exporter)."""

    def __init__(self, model: nn.Module, names: list[str], keyword: bool) -> None:
        super().__init__()
        self.model, self.names, self.keyword = model, names, keyword
        # Hugging Face decoders: no key/value cache objects in the graph
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, *tensors: torch.Tensor):
        if self.keyword:
            out = self.model(**dict(zip(self.names, tensors, strict=True)), **self.extra)
        else:
            out = self.model(*tensors, **self.extra)
        flat = flat_tensors(out)
        return flat[0] if len(flat) == 1 and isinstance(out, torch.Tensor) else tuple(flat)


def flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output in order: tensors, tuples, dicts and Hugging Face ModelOutputs
    (whose None fields and cache objects are skipped).

    Example:
        >>> len(flat_tensors((torch.zeros(1), {"a": torch.ones(2)})))
        2
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flat_tensors(item)]
    return []


def named_inputs(example_inputs: Any) -> dict[str, torch.Tensor]:
    """The ONNX input names the exporter gives a batch: dict keys, "input", or "input_0", "input_1"..."""
    if isinstance(example_inputs, dict):
        return dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return {"input": example_inputs}
    return {f"input_{i}": t for i, t in enumerate(example_inputs)}


MIN_COSINE = 0.999  # default parity thresholds of the exported file against PyTorch
MIN_TOP1 = 0.99
STATIC_FORMATS = ("qdq", "integer")


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int = 17,
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1,
    static_format: str = "qdq",
) -> ExportResult:
    """Export to ONNX with named inputs and dynamic batch/sequence axes; quantized weights stay integer.

    The batch axis is dynamic; so is each sequence axis of token inputs (N, L) and float sequences
    (N, L, E) / (N, C, T) that the model accepts at another length (found by running it on the
    example batch shortened by one along that axis; `export_axes`), each input with its own length.

    The file is validated by the ONNX checker, then run by ONNX Runtime on `example_inputs`
    and compared with the PyTorch model (max abs error, cosine similarity of outputs and, for
    (N, C) outputs, top-1 agreement). The model's modes, parameters and buffers are unchanged.

    Args:
        model: float or quantized model.
        example_inputs: a real batch (tensor, tuple or dict keyed by input name).
        path: the .onnx file to write (atomically).
        opset: ONNX opset.
        min_cosine: warn when the outputs' cosine similarity falls below this.
        min_top1: warn when top-1 agreement (first output, when it is (N, C) logits) falls below
            this. Unit-norm rows (embeddings) are not checked; pass 0 for other non-class outputs.
        static_format: static W8A8 Conv/Linear layers as "qdq" (QuantizeLinear/DequantizeLinear
            pairs ONNX Runtime fuses into QLinearConv / QLinearMatMul) or "integer" (ConvInteger /
            MatMulInteger chains that reproduce PyTorch's integers bit for bit, slower). Float
            operations between quantized layers (softmax, LayerNorm, GELU) can differ from
            PyTorch's in the last bit, which may flip a rare rounding of the next layer's input.

    Example:
        >>> res = export_onnx(model, model.example_inputs(4), "out/model.onnx")
        >>> res.cosine > 0.999
        True
    """
    if static_format not in STATIC_FORMATS:
        raise ValueError(f"static_format must be one of {STATIC_FORMATS}, got {static_format!r}")
    named = named_inputs(example_inputs)
    check_finite_weights(model, "be exported")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        exported = _attention_split(model)
        keyword = isinstance(example_inputs, dict)
        try:
            proto, reference, probes = _export_proto(exported, named, keyword, opset, static_format)
        except MMCompressError as err:
            raise MMCompressError(f"{err}{_encoder_hint(model)}") from None
        session = _checked_session(proto)  # also runs the parity check below
        fixed = failing_axes(session.run, probes, min_cosine) if probes else {}
        if fixed:  # the exporter fixed a length the model accepts: export again with that length fixed
            _warn_fixed(fixed, named)
            proto, reference, _ = _export_proto(exported, named, keyword, opset, static_format, frozenset(fixed))
            session = _checked_session(proto)
    finally:
        for module, training in modes.items():  # the exporter restores its wrapper's mode onto the model
            module.training = training
    unfolded = _norms_after_static_convs(model) if static_format == "qdq" else []
    if unfolded:
        warnings.warn(
            f"export: {len(unfolded)} BatchNorm layer(s) follow static W8A8 convolutions (first: {unfolded[0]!r}); "
            "ONNX Runtime cannot fuse those convolutions into integer kernels: call mmcompress.fold_batchnorm(model) "
            "before quantize",
            stacklevel=2,
        )
    float_layers = tuple(unconverted_layers(proto, model))
    if float_layers:
        warnings.warn(
            f"export: quantized layers stored as float weights in the ONNX file: {list(float_layers)}", stacklevel=2
        )
    int8_weights = sum(  # weight codes are matrices or kernels; zero points are scalars or vectors
        1 for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2
    )
    # 2-7 bit codes: MatMulNBits (Linear) or nibble-packed bytes unpacked by one BitShift (grouped convs)
    nbit_weights = sum(1 for n in proto.graph.node if n.op_type in ("MatMulNBits", "BitShift"))
    data = proto.SerializeToString()
    got = session.run(named)
    max_err, cosine = compare(reference, got)
    top1 = _top1(reference[0], got[0])
    if cosine < min_cosine or (top1 is not None and top1 < min_top1):
        qdq = any(n.op_type == "QuantizeLinear" for n in proto.graph.node) and static_format == "qdq"
        hint = _saturation_hint(model) or (  # saturated sums: the integer file is off too
            "; static W8A8 layers are QDQ, whose integer requantization rounds some codes differently "
            "from PyTorch (static_format='integer' reproduces PyTorch bit for bit, slower)"
            if qdq
            else ""
        )
        warnings.warn(
            f"export: ONNX Runtime output differs from PyTorch on the example batch (cosine {cosine:.4f}, "
            f"{_top1_text(top1, len(reference[0]))}max abs error {max_err:.3g}); "
            f"{'thresholds' if top1 is not None else 'threshold'} {min_cosine}"
            f"{f' / {min_top1}' if top1 is not None else ''}{hint}",
            stacklevel=2,
        )
    atomic_write_bytes(path, data)
    measured = sum(stored_bytes(model).values())
    return ExportResult(str(path), len(data), int8_weights, max_err, cosine, measured, top1, float_layers, nbit_weights)


def _attention_split(model: nn.Module) -> nn.Module:
    """`model`, or a copy with its nn.MultiheadAttention modules split into q/k/v/out Linear layers
    (the same outputs): torch's exporter bakes the sequence length of the export batch into packed
    attention's reshapes, so the file would fail at any other length."""
    packed = [n for n in packed_attention(model) if splittable(model.get_submodule(n))]
    if not packed:
        return model
    copied = copy.deepcopy(model)
    split_attention(copied, packed)
    return copied


def _norms_after_static_convs(model: nn.Module) -> list[str]:
    """BatchNorm layers right after a QDQ-ready conv in a Sequential (the conv's output is not quantized)."""
    return [norm for _, norm in sequential_pairs(model, qdq_ready)]


def _export_proto(
    model: nn.Module, named: dict, keyword: bool, opset: int, static_format: str = "qdq", fixed=frozenset()
) -> tuple[onnx.ModelProto, list, list[Probe]]:
    """Trace the eval-mode model (W8A8 input simulation off) with the sequence axes it accepts
    dynamic (`export_axes`; `fixed` ones excepted) and rewrite quantized layers."""
    wrapper = _Positional(model, list(named), keyword=keyword).eval()

    def run(*tensors: torch.Tensor) -> list[torch.Tensor]:
        return flat_tensors(wrapper(*tensors))

    with torch.no_grad():
        reference = run(*named.values())
    probes = probe_axes(run, named, reference, fixed)
    outputs = [f"output_{i}" for i in range(len(reference))]
    dynamic = dynamic_axes(named, outputs, reference, probes)
    simulated = {m: m.simulate_activations for m in model.modules() if isinstance(m, ActivationQuant) and m.act}
    for module in simulated:  # the rewrite inserts the real activation quantization: trace without the simulation
        module.simulate_activations = False
    try:
        traced = _trace(wrapper, named, outputs, dynamic, opset)
    finally:
        for module, value in simulated.items():
            module.simulate_activations = value
    proto = onnx.load_from_string(traced)
    if any(isinstance(m, QUANT_MODULES) for m in model.modules()):
        if static_format == "qdq":
            rewrite_qdq(proto, model)  # static W8A8 Conv/Linear: QDQ, fused by ONNX Runtime into QLinear* ops
        rewrite_w8a8(proto, model)  # W8A8 Linear/Conv layers (dynamic / per-token / static): integer kernels
        rewrite_matmul_nbits(proto, model)  # 4-bit grouped Linear layers: MatMulNBits
        rewrite_int8(proto, model)  # remaining quantized weights: int8 + DequantizeLinear, or packed codes
    return proto, reference, probes


def _checked_session(proto: onnx.ModelProto) -> OrtModel:
    """The file validated by the ONNX checker, loaded in ONNX Runtime."""
    onnx.checker.check_model(proto)
    return OrtModel.from_bytes(proto.SerializeToString())


def _warn_fixed(fixed: dict, named: dict) -> None:
    where = "; ".join(
        f"{name!r} axis {axis} (length {named[name].shape[axis]}): at length {named[name].shape[axis] - 1} {why}"
        for (name, axis), why in fixed.items()
    )
    warnings.warn(
        f"export: the model accepts other lengths, but the exported graph fixes them; the file takes only "
        f"the example batch's length along {where}",
        stacklevel=3,
    )


def _top1(reference: torch.Tensor, got: np.ndarray) -> float | None:
    """Top-1 agreement of (N, C) logits (None for other shapes and for unit-norm rows: embeddings,
    whose largest coordinate means nothing)."""
    if reference.dim() != 2 or reference.shape[1] < 2 or not reference.is_floating_point():
        return None
    if torch.allclose(reference.float().norm(dim=1), torch.ones(len(reference)), atol=1e-3):
        return None
    return float((reference.argmax(-1).numpy() == got.argmax(-1)).mean())


def _top1_text(top1: float | None, rows: int) -> str:
    """'top-1 agreement 0.5 (1 of 2 rows), ': the count shows how much a small example batch says;
    nothing for outputs that are not logits (embeddings, a speech encoder's frames)."""
    if top1 is None:
        return ""
    return f"top-1 agreement {top1:.3g} ({round(top1 * rows)} of {rows} rows), "


def _trace(wrapper: nn.Module, named: dict, outputs: list[str], axes: dict, opset: int) -> bytes:
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:  # nn.MultiheadAttention's inference fast path is one fused op the exporter cannot write
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad(), _native_stdout_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, tuple(named.values()), buffer, dynamo=False, input_names=list(named),
                output_names=outputs, dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            )  # fmt: skip
    except Exception as err:  # the exporter raises many types
        raise MMCompressError(f"ONNX export failed: {err.__class__.__name__}: {str(err)[:300]}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


def _encoder_hint(model: nn.Module) -> str:
    """What to export instead when a whole encoder-decoder model does not export (Whisper's decoder)."""
    if not callable(getattr(model, "get_encoder", None)):
        return ""
    return (
        ". This is an encoder-decoder model: export its encoder alone (export_onnx(model.get_encoder(), ...)), "
        "or run it on ONNX Runtime with mmcompress.models.hf.speech_ort.encoder_on_onnxruntime(model, path) "
        "(the decoder stays in PyTorch); in a recipe, leave out the export_onnx stage (on the command line: --no-onnx)"
    )


@contextlib.contextmanager
def _native_stdout_silenced():
    """Drop what native code prints on stdout: on a failed export, torch's TorchScript exporter prints
    the whole IR graph there (thousands of lines for a transformer; its ONNX log switch is always on)
    before raising; the error names the problem in one line."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
