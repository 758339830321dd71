"""Attention's query, key and value projections as one int8 GEMM.

The three W8A8 dynamic Linear layers of an attention read the same input. Run separately, each
quantizes that input again and pays a kernel call; at batch 1 (128 rows) those costs are larger
than the GEMMs. `link_siblings` groups the three (named query/key/value or q_proj/k_proj/v_proj
under one module, same input width, activation settings and SmoothQuant factors: `quantize` gives
the three one factor, as SmoothQuant folds it into the LayerNorm before them). A group:
- observes one round of calls first: it joins only when the three calls received the same tensor
  one after the other (Whisper's cross-attention, whose query reads another input, or a model that
  calls them differently, keeps running them one by one, for good);
- then, on the first sibling's call, quantizes the input once, runs one GEMM on the concatenated
  weights and returns that sibling's columns; the other siblings, called with the very same tensor
  (same object, unchanged version counter), get their columns without computing. A call with any
  other input runs alone.
The outputs equal separate calls bit for bit: the input codes are the same, the int32 sums exact,
and each output column is scaled by its own step. Only oneDNN's kernel joins (the "auto" choice
from 16 rows up); the outputs are column slices of the joint result (views, not contiguous). Tensors made under
`torch.inference_mode` carry no version counter; for them the group joins only while none of the
three layers (and no global hook) has a hook, since only a hook could edit the input between calls.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcompress.quant.kernels import (
    SIBLINGS,
    bias_key,
    has_hooks,
    onednn_gemm,
    onednn_operands,
    version_key,
)
from mmcompress.quant.modules import QuantLinear

SIBLING_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


class SiblingGroup:
    """Query/key/value QuantLinear layers that share their input (see the module docstring)."""

    def __init__(self, members: list[QuantLinear]) -> None:
        self.members = members
        self._reset()

    def _reset(self) -> None:
        self.state = "observe"  # then "joint" or "alone"
        self.leader = 0
        self._seen: tuple | None = None  # observation: (input, version, member indices called)
        self._pending: tuple | None = None  # (input, version, outputs, members still to serve)
        self._operands: tuple | None = None  # (key, oneDNN operands of the concatenated weights)

    def __getstate__(self) -> dict:
        """Pickle/deepcopy the members only: observation and caches start again."""
        return {"members": self.members}

    def __setstate__(self, state: dict) -> None:
        self.members = state["members"]
        self._reset()

    def run(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor | None:
        """`member`'s output on `x` from the joint GEMM, or None: the member runs alone."""
        if self.state == "alone" or (x.is_inference() and any(has_hooks(m) for m in self.members)):
            return None  # inference tensors have no version counter: a hook could edit one unseen
        i = next(j for j, m in enumerate(self.members) if m is member)
        if self.state == "observe":
            self._observe(i, x)
            return None
        pending = self._pending
        if pending is not None and pending[0] is x and pending[1] == _version(x) and i in pending[3]:
            pending[3].discard(i)
            if not pending[3]:
                self._pending = None
            return pending[2][i]
        if i != self.leader:
            return None
        outputs = self._joint(x)
        self._pending = (x, _version(x), outputs, set(range(len(self.members))) - {i})
        return outputs[i]

    def _observe(self, i: int, x: torch.Tensor) -> None:
        seen = self._seen
        if seen is None:
            self._seen = (x, _version(x), [i])
            return
        if seen[0] is not x or seen[1] != _version(x) or i in seen[2]:
            self.state, self._seen = "alone", None  # the siblings do not read one input in one round
            return
        seen[2].append(i)
        if len(seen[2]) == len(self.members):
            self.state, self.leader, self._seen = "joint", seen[2][0], None

    def _joint(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        per_token = self.members[0].act.granularity == "per_token"
        smooth = self.members[0]._buffers.get("act_smooth")  # equal for the three (checked when linked)
        y = onednn_gemm(x2, self._joint_operands(), per_token, smooth, None)
        sizes = [m.qweight.shape[0] for m in self.members]
        return tuple(part.view(*x.shape[:-1], n) for part, n in zip(y.split(sizes, dim=1), sizes, strict=True))

    def _joint_operands(self) -> tuple:
        key = tuple(version_key(m._buffers) + bias_key(m) for m in self.members)
        if self._operands is None or self._operands[0] != key:
            codes = torch.cat([m.qweight for m in self.members])
            scale = torch.cat([m.scale for m in self.members])
            zeros = [m._buffers.get("zero_point") for m in self.members]
            zero = None if zeros[0] is None else torch.cat(zeros)
            bias = None
            if any(m.bias is not None for m in self.members):
                bias = torch.cat([_bias_or_zeros(m) for m in self.members])
            self._operands = (key, onednn_operands(codes, scale, bias, zero))
        return self._operands[1]


def _version(x: torch.Tensor) -> int:
    """The version counter (-1 for inference tensors, which have none: `run` then needs unhooked members)."""
    return -1 if x.is_inference() else x._version


def _bias_or_zeros(module: QuantLinear) -> torch.Tensor:
    return torch.zeros(module.qweight.shape[0]) if module.bias is None else module.bias.detach().float()


def sibling_sets(names: Iterable[str]) -> list[list[str]]:
    """The query/key/value triples among layer names (all three under one parent).

    Example:
        >>> sibling_sets(["a.query", "a.key", "a.value", "a.dense"])
        [['a.query', 'a.key', 'a.value']]
    """
    present = set(names)
    sets = []
    for name in sorted(present):
        parent, _, child = name.rpartition(".")
        for triple in SIBLING_NAMES:
            full = [f"{parent}.{c}" if parent else c for c in triple]
            if child == triple[0] and all(n in present for n in full):
                sets.append(full)
    return sets


def link_siblings(model: nn.Module) -> list[list[str]]:
    """Group every attention's W8A8 dynamic query/key/value QuantLinear layers (see the module
    docstring); returns the groups' layer names. Earlier groups are dropped and formed again.

    Example:
        >>> quantize(minilm, QuantConfig(activations="dynamic")); link_siblings(minilm)[0]
        ['st.0.auto_model.encoder.layer.0.attention.self.query', ..., '...value']
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for module in layers.values():
        module.__dict__.pop(SIBLINGS, None)
    groups = []
    for names in sibling_sets(layers):
        members = [layers[n] for n in names]
        if _joinable(members):
            group = SiblingGroup(members)
            for m in members:
                m.__dict__[SIBLINGS] = group
            groups.append(names)
    return groups


def _joinable(members: list[QuantLinear]) -> bool:
    first = members[0]
    return all(
        m.act is not None
        and m.act.mode == "dynamic"
        and m.act == first.act
        and _same_smoothing(m, first)
        and m.qweight.shape[1] == first.qweight.shape[1]
        and m.scale.shape[1] == first.scale.shape[1]  # the same groups of inputs (W4A8: one GEMM per group)
        and (m._buffers.get("zero_point") is None) == (first._buffers.get("zero_point") is None)
        and m.grid.bits == first.grid.bits
        for m in members
    )


def _same_smoothing(module: QuantLinear, first: QuantLinear) -> bool:
    a, b = module._buffers.get("act_smooth"), first._buffers.get("act_smooth")
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
