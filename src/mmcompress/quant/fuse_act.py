"""GELU folded into the int8 GEMM before it (oneDNN's epilogue), without changing what the model computes.

A transformer FFN runs `gelu(fc1(x))`: on all-MiniLM-L6-v2 at batch 32 the separate GELU pass
cost more than fc1's int8 GEMM. `fuse_activations` pairs a W8A8 dynamic QuantLinear with the GELU
that alone reads its output (transformers' `intermediate_act_fn` beside `dense` in BERT/ViT,
`activation_fn` beside `fc1` in Whisper, or the next module of an `nn.Sequential`) and wraps that
GELU in `FusedActivation`:
- when the QuantLinear runs oneDNN's int8 kernel, the kernel applies the GELU in its epilogue
  (the same erf / tanh GELU, exactly) and tags its output as activated; the wrapper passes a
  tagged tensor through;
- on every other path (the simulation, tracing, export, autograd, too few rows) nothing is tagged
  and the wrapper runs the original GELU module.
So a model that loses the pairing (a replayed record, a copied module) still computes the same
function, only without the fusion.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcompress.quant.kernels import ACTIVATED
from mmcompress.quant.modules import QuantLinear


def gelu_kind(module: nn.Module) -> str | None:
    """ "gelu" (erf) or "gelu_tanh" for a GELU module whose function we can reproduce, else None.

    Example:
        >>> gelu_kind(nn.GELU(approximate="tanh"))
        'gelu_tanh'
    """
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is nn.functional.gelu:
        return "gelu"  # transformers' exact GELU
    return None


class FusedActivation(nn.Module):
    """The original activation, skipped for a tensor the QuantLinear before it already activated.

    Example:
        >>> FusedActivation(nn.GELU(), "gelu")(torch.zeros(2))  # not tagged: runs the GELU
        tensor([0., 0.])
    """

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(x, ACTIVATED, None) == self.kind:
            return x
        return self.inner(x)


PAIRS = (  # (linear, activation) attribute names whose forward is act(linear(x)) and nothing else reads linear(x)
    ("dense", "intermediate_act_fn"),  # transformers' BERT / ViT intermediate block
    ("fc1", "activation_fn"),  # transformers' Whisper encoder / decoder layers
)


def _pairs(model: nn.Module):
    """(QuantLinear, owner, attribute of its activation, activation) for every fusable pair."""
    for owner in model.modules():
        known = type(owner).__module__.startswith("transformers.")  # code we read: nothing else uses linear(x)
        for linear_name, act_name in PAIRS if known else ():
            dense, act = getattr(owner, linear_name, None), getattr(owner, act_name, None)
            if isinstance(dense, QuantLinear) and isinstance(act, nn.Module):
                yield dense, owner, act_name, act
        if isinstance(owner, nn.Sequential):
            children = list(owner.named_children())
            for (_, first), (name, second) in zip(children, children[1:], strict=False):
                if isinstance(first, QuantLinear):
                    yield first, owner, name, second


def fuse_activations(model: nn.Module) -> list[str]:
    """Let W8A8 dynamic QuantLinear layers apply the GELU after them in their int8 kernel; returns
    the fused layers' names. Safe to call again (already fused pairs are left alone).

    Example:
        >>> quantize(minilm, QuantConfig(activations="dynamic")); fuse_activations(minilm)[:1]
        ['bert.encoder.layer.0.intermediate.dense']
    """
    names = {id(m): n for n, m in model.named_modules()}
    fused = []
    for linear, owner, attr, act in list(_pairs(model)):
        kind = gelu_kind(act)
        if kind is None or getattr(linear, "act", None) is None or linear.act.mode != "dynamic":
            continue
        setattr(owner, attr, FusedActivation(act, kind))
        linear.post_act = kind
        fused.append(names[id(linear)])
    return fused
