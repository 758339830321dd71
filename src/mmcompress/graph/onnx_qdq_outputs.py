"""Graph passes that let ONNX Runtime keep a QDQ network on uint8 tensors between layers.

ONNX Runtime fuses `DQ -> Conv -> [Relu/Clip] -> Q` into QLinearConv and `DQ, DQ -> Add -> Q` into
QLinearAdd; anything else between two quantized layers leaves a float Conv that reads
dequantized inputs. Two passes remove the obstacles:

- `min_after_quantize` (exact): a per-channel clamp `Min(x, c)` before a QuantizeLinear (what
  ReLU6 becomes after cross-layer equalization rescales channels) moves after it as a uint8
  `Min(q(x), q(c))`: quantization is monotone, so q(min(x, c)) == min(q(x), q(c)) element for
  element.
- `quantize_residual_adds` (adds roundings PyTorch does not have): a float `Add` whose output is
  quantized for the next layer gets its inputs quantized with that layer's step (the branch) or
  with the step they are already quantized with (the skip connection), so the Conv before it and
  the Add run as integer kernels. The PyTorch model adds in float; the file then agrees with it
  less than bit for bit (measured in docs/benchmarks.md, mobilenet-v2 section).
- `quantize_clipped_pool_inputs` (adds a rounding PyTorch does not have, data-free): a Conv whose
  output is clamped by a constant Clip (ReLU6) and averaged by a pooling (MobileNetV2's last
  1x1 conv, 20M MACs per image) gets a uint8 Q/DQ pair between the Clip and the pooling whose
  range is exactly the Clip's (step (hi - lo) / 255), so the Conv runs as QLinearConv; the
  pooling then averages out most of that rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _quant_params(node: onnx.NodeProto, inits: dict) -> tuple[float, int] | None:
    """(step, zero point) of a per-tensor uint8 QuantizeLinear with constant parameters."""
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    step, zero = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    if step.size != 1 or zero.dtype != np.uint8:
        return None
    return float(step), int(zero)


def _scalar(name: str, graph: onnx.GraphProto) -> float | None:
    for init in graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value) if value.size == 1 else None
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            return float(value) if value.size == 1 else None
    return None


def relu_min_to_clip(graph: onnx.GraphProto) -> int:
    """Relu -> Min(c) (how the exporter writes ReLU6) -> one Clip(0, c), the activation ONNX Runtime's
    QDQ fusions fold into the Conv before it; returns how many. Same values.

    Example:
        >>> relu_min_to_clip(proto.graph)
        35
    """
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    drop, count = set(), 0
    for node in graph.node:
        after = readers.get(node.output[0], []) if node.op_type == "Relu" else []
        if len(after) != 1 or after[0].op_type != "Min" or len(after[0].input) != 2 or node.output[0] in outputs:
            continue
        other = [n for n in after[0].input if n != node.output[0]]
        bound = _scalar(other[0], graph) if len(other) == 1 else None
        if bound is None or bound < 0:
            continue
        p = f"{node.name or node.output[0]}_clip"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(0.0, np.float32), f"{p}_lo"),
                numpy_helper.from_array(np.array(bound, np.float32), f"{p}_hi"),
            ]
        )
        clip = helper.make_node("Clip", [node.input[0], f"{p}_lo", f"{p}_hi"], list(after[0].output), name=p)
        node.CopyFrom(clip)
        drop.add(id(after[0]))
        count += 1
    if count:
        _sort(graph, drop)
    return count


def min_after_quantize(graph: onnx.GraphProto) -> int:
    """Move every constant per-channel `Min` that only feeds a uint8 QuantizeLinear after it; returns how many.

    Example:
        >>> min_after_quantize(proto.graph)
        34
    """
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers, outputs = _readers(graph), {o.name for o in graph.output}
    moved, dropped = 0, set()
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        m = producer.get(q.input[0])
        params = _quant_params(q, inits)
        if m is None or m.op_type != "Min" or len(m.input) != 2 or params is None or m.output[0] in outputs:
            continue
        if len(readers.get(m.output[0], [])) != 1 or m.input[1] not in inits:
            continue
        step, zero = params
        bound = numpy_helper.to_array(inits[m.input[1]]).astype(np.float64)
        codes = np.clip(np.round(bound / step) + zero, 0, 255).astype(np.uint8)  # round half to even, as ONNX
        p, out = f"{q.output[0]}_min", q.output[0]
        if (codes == 255).all():  # no channel's bound is below the quantized range: nothing to clamp
            q.input[0] = m.input[0]
            dropped.add(id(m))
        else:
            graph.initializer.append(numpy_helper.from_array(codes, f"{p}_bound"))
            q.input[0], q.output[0] = m.input[0], f"{p}_pre"
            m.CopyFrom(helper.make_node("Min", [f"{p}_pre", f"{p}_bound"], [out], name=p))
        moved += 1
    if moved:
        _sort(graph, dropped)
    return moved


def _sort(graph: onnx.GraphProto, dropped: set[int] = frozenset()) -> None:
    """Topological order (moved nodes read outputs of nodes listed after them), without `dropped`
    nodes (by id) and initializers nothing reads any more."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = [n for n in graph.node if id(n) not in dropped], []
    while pending:
        left = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):  # a cycle or a missing input: keep the rest as it was
            ordered.extend(left)
            break
        pending = left
    graph.ClearField("node")
    graph.node.extend(ordered)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in read]
    for init in unused:
        graph.initializer.remove(init)


def _dequantize(graph: onnx.GraphProto, q: onnx.NodeProto, tag: str) -> str:
    """A new DequantizeLinear of QuantizeLinear `q`'s output (one per reader, as ONNX Runtime's fusions want)."""
    out = f"{q.output[0]}_dq_{tag}"
    graph.node.append(helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:3]], [out], name=out))
    return out


def _requantize(graph: onnx.GraphProto, x: str, q: onnx.NodeProto, tag: str) -> str:
    """Q -> DQ of float tensor `x` with the step / zero point of QuantizeLinear `q`."""
    name = f"{x}_rq_{tag}"
    graph.node.append(helper.make_node("QuantizeLinear", [x, *q.input[1:3]], [f"{name}_q"], name=f"{name}_q"))
    graph.node.append(helper.make_node("DequantizeLinear", [f"{name}_q", *q.input[1:3]], [name], name=name))
    return name


def quantize_residual_adds(graph: onnx.GraphProto) -> int:
    """Quantize both inputs of every float Add whose output a uint8 QuantizeLinear reads; returns how many.

    Each input already quantized (it feeds a QuantizeLinear) is read through that quantization;
    any other input is quantized with the step of the Add's output. Other readers of the Add's
    output read its quantized form.

    Example:
        >>> quantize_residual_adds(proto.graph)
        10
    """
    inits = {i.name: i for i in graph.initializer}
    readers, outputs = _readers(graph), {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    count, made = 0, set()
    for add in [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2]:
        after = readers.get(add.output[0], [])
        quantizers = [r for r in after if r.op_type == "QuantizeLinear" and _quant_params(r, inits)]
        known = [i in made or (i in producer and i not in inits) for i in add.input]
        if not quantizers or add.output[0] in outputs or not all(known):
            continue
        out_q = quantizers[0]
        for k, x in enumerate(list(add.input)):
            if x in made or producer[x].op_type == "DequantizeLinear":
                continue
            own = [r for r in readers.get(x, []) if r.op_type == "QuantizeLinear" and _quant_params(r, inits)]
            add.input[k] = _dequantize(graph, own[0], f"add{count}") if own else _requantize(graph, x, out_q, "add")
            made.add(add.input[k])
        for i, reader in enumerate(r for r in after if r.op_type != "QuantizeLinear"):
            for k, name in enumerate(reader.input):
                if name == add.output[0]:
                    reader.input[k] = _dequantize(graph, out_q, f"r{count}_{i}")
                    made.add(reader.input[k])
        count += 1
    if count:
        _sort(graph)
    return count


def _constant(name: str, inits: dict, producer: dict) -> float | None:
    """The value of a scalar initializer or Constant node, else None."""
    if name in inits:
        value = numpy_helper.to_array(inits[name])
    elif name in producer and producer[name].op_type == "Constant" and producer[name].attribute[0].name == "value":
        value = numpy_helper.to_array(producer[name].attribute[0].t)
    else:
        return None
    return float(value) if value.size == 1 else None


def quantize_clipped_pool_inputs(graph: onnx.GraphProto) -> int:
    """Insert a uint8 Q/DQ pair with the Clip's exact range between `Conv -> Clip(lo, hi)` and an
    average pooling that is the Clip's only reader; returns how many.

    Example:
        >>> quantize_clipped_pool_inputs(proto.graph)  # MobileNetV2: features.18 -> pool
        1
    """
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers, outputs = _readers(graph), {o.name for o in graph.output}
    count = 0
    for pool in [n for n in graph.node if n.op_type in ("GlobalAveragePool", "AveragePool")]:
        clip = producer.get(pool.input[0])
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3 or clip.output[0] in outputs:
            continue
        conv = producer.get(clip.input[0])
        lo, hi = (_constant(n, inits, producer) for n in clip.input[1:3])
        if conv is None or conv.op_type != "Conv" or lo is None or hi is None or not lo <= 0.0 < hi:
            continue
        if len(readers.get(clip.output[0], [])) != 1 or len(readers.get(conv.output[0], [])) != 1:
            continue
        if not all(n in producer and producer[n].op_type == "DequantizeLinear" for n in conv.input[:2]):
            continue  # not an integer Conv: leave it as it is
        step = (hi - lo) / 255.0
        p = f"{clip.output[0]}_pool_q"
        graph.initializer.append(numpy_helper.from_array(np.asarray(step, np.float32), f"{p}_step"))
        graph.initializer.append(numpy_helper.from_array(np.asarray(round(-lo / step), np.uint8), f"{p}_zero"))
        args = [f"{p}_step", f"{p}_zero"]
        graph.node.append(helper.make_node("QuantizeLinear", [clip.output[0], *args], [f"{p}_codes"], name=p))
        graph.node.append(helper.make_node("DequantizeLinear", [f"{p}_codes", *args], [f"{p}_dq"], name=f"{p}_dq"))
        pool.input[0] = f"{p}_dq"
        count += 1
    if count:
        _sort(graph)
    return count


def _fused(node: onnx.NodeProto, producer: dict, readers: dict) -> bool:
    """Whether ONNX Runtime's QDQ fusions will turn this Conv / Gemm / MatMul into an integer kernel."""
    if not all(n in producer and producer[n].op_type == "DequantizeLinear" for n in node.input if n):
        return False
    if node.op_type != "Conv":  # QGemm / MatMulIntegerToFloat also give float outputs
        return True
    after = readers.get(node.output[0], [])
    if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
        after = readers.get(after[0].output[0], [])
    while len(after) == 1 and after[0].op_type in PROPAGATED:  # ONNX Runtime moves the QuantizeLinear up
        after = readers.get(after[0].output[0], [])
    return len(after) == 1 and after[0].op_type == "QuantizeLinear"


# ops ONNX Runtime's QDQPropagationTransformer moves a QuantizeLinear across (its list, onnxruntime 1.32):
# a Conv -> Relu -> MaxPool -> QuantizeLinear is fused into QLinearConv too. Folding that Conv's weight
# into a float constant made ONNX Runtime quantize it again by itself, per tensor with 8-bit codes:
# the per-channel codes lost, and on AVX2 without VNNI its u8s8 sums saturated (digits-cnn W7A8 file:
# cosine 0.42 to PyTorch on its example batch; with a KL observer accuracy 0.26 vs 0.51).
PROPAGATED = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze")


def fold_unfused_weights(graph: onnx.GraphProto) -> int:
    """Constant DequantizeLinear inputs of layers ONNX Runtime will not fuse become Cast -> Mul
    chains, which it folds once when the session loads (it keeps DequantizeLinear nodes for its QDQ
    fusions and would otherwise dequantize them on every call); returns how many.

    Example:
        >>> fold_unfused_weights(proto.graph)
        2
    """
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    chains: dict[int, list] = {}
    for node in [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]:
        if _fused(node, producer, readers):
            continue
        for name in node.input[1:]:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and len(readers.get(name, [])) == 1:
                chain = _cast_mul(dq, inits, graph)
                if chain:
                    chains[id(dq)] = chain
    if chains:
        nodes = [m for n in graph.node for m in chains.get(id(n), [n])]
        graph.ClearField("node")
        graph.node.extend(nodes)
        _sort(graph)
    return len(chains)


def _cast_mul(dq: onnx.NodeProto, inits: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """DequantizeLinear(constant codes, step, zero 0) -> [Cast, Mul by the step along its axis] (or [])."""
    if any(n not in inits for n in dq.input if n):
        return []
    if len(dq.input) > 2 and dq.input[2] and numpy_helper.to_array(inits[dq.input[2]]).any():
        return []
    dims = len(inits[dq.input[0]].dims)
    step = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * dims
    if step.size > 1:
        shape[axis % dims] = step.size
    name = dq.output[0]
    graph.initializer.append(numpy_helper.from_array(step.reshape(shape) if dims else step, f"{name}_step"))
    return [
        helper.make_node("Cast", [dq.input[0]], [f"{name}_float"], to=onnx.TensorProto.FLOAT, name=f"{name}_cast"),
        helper.make_node("Mul", [f"{name}_float", f"{name}_step"], [name], name=f"{name}_scale"),
    ]
