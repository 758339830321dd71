"""Shared machinery for replacing a Linear layer's MatMul/Gemm node in an exported ONNX graph.

The exporter emits `MatMul(x, W^T)` (+ `Add(bias)`) for inputs with more than two dims and
`Gemm(x, W, b, transB=1)` for 2-D inputs; weights are folded float initializers. A rewrite gives
a table from the digest of such an initializer to a replacement builder; this module finds the
nodes, swaps them, re-adds the Gemm bias and drops initializers nothing reads any more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# builder(x_input, output_name, prefix) -> (nodes, initializers)
Builder = Callable[[str, str, str], tuple[list[onnx.NodeProto], list[onnx.TensorProto]]]


def digest(array: np.ndarray) -> str:
    """Content hash of a float array (how rewrites recognise a layer's folded weight)."""
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def linear_keys(weight: np.ndarray) -> dict[str, bool]:
    """Digests under which a Linear weight (out, in) appears: as MatMul's W^T and as Gemm's W."""
    return {digest(weight.T): False, digest(weight): True}


def _gemm_is_plain(node: onnx.NodeProto) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0
    return plain and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def replace_linear_nodes(proto: onnx.ModelProto, table: dict[str, tuple[bool, Any]], build, suffix: str) -> int:
    """Replace every MatMul/Gemm whose weight digest is in `table` (digest -> (is_gemm, entry)).

    `build(entry, x_input, output, prefix)` returns the replacement nodes and initializers.
    Returns how many nodes were replaced.

    Example:
        >>> replace_linear_nodes(proto, {digest(w.T): (False, codes)}, build_chain, "w8a8")
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, used = [], set()
    for node in graph.node:
        init = inits.get(node.input[1]) if len(node.input) > 1 else None
        found = None
        if init is not None and init.data_type == onnx.TensorProto.FLOAT and node.op_type in ("MatMul", "Gemm"):
            found = table.get(digest(numpy_helper.to_array(init)))
        if found is None or found[0] != (node.op_type == "Gemm") or (found[0] and not _gemm_is_plain(node)):
            new_nodes.append(node)
            continue
        prefix = f"{node.name or node.input[1]}_{suffix}"
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        out = f"{prefix}_mm" if has_bias else node.output[0]
        nodes, initializers = build(found[1], node.input[0], out, prefix)
        new_nodes.extend(nodes)
        graph.initializer.extend(initializers)
        if has_bias:
            new_nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]]))
        used.add(node.input[1])
    commit_nodes(graph, new_nodes, used, inits)
    return len(used)


def commit_nodes(graph: onnx.GraphProto, nodes: list, replaced: set[str], inits: dict) -> None:
    """Install the rewritten node list and drop the replaced initializers that nothing reads any more."""
    graph.ClearField("node")
    graph.node.extend(nodes)
    still_used = {i for n in graph.node for i in n.input}
    for name in replaced - still_used:
        graph.initializer.remove(inits[name])
