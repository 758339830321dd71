"""GELU folded into the int8 GEMM before it (oneDNN's epilogue), without changing what the model computes.

A transformer FFN runs `gelu(fc1(x))`: on all-MiniLM-L6-v2 at batch 32 the separate GELU pass
cost more than fc1's int8 GEMM. `fuse_activations` pairs a W8A8 dynamic QuantLinear with its GELU
only inside transformers' own modules whose code applies the GELU to that output and nothing
else reads it (`intermediate_act_fn(dense(x))` in BERT/ViT, `activation_fn(fc1(x))` in Whisper):
- the owner module gets a forward pre-hook that arms its linear for one call, when neither the
  linear nor the GELU has hooks of its own (a hook must see the plain output) and no global
  module hooks exist; a forward hook disarms it again;
- an armed linear that runs oneDNN's int8 kernel applies the GELU in the kernel (the same erf /
  tanh GELU) and tags its output; the GELU, wrapped in `FusedActivation`, passes tagged tensors
  through and runs as before on anything else.
So calling the linear directly, hooking it, the simulation, export and autograd all see the plain
linear output and the original GELU, and a model that loses the pairing computes the same function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mmcompress.quant.kernels import ACTIVATED, ARMED, has_hooks
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
OWNER_KEY = "_mmcompress_fused"  # owner attribute: (linear attribute, activation attribute)


def _arm(owner: nn.Module, args) -> None:
    """Owner pre-hook: let its linear fuse the GELU on the next call when nothing else watches."""
    linear_name, act_name = owner.__dict__[OWNER_KEY]
    linear, act = owner._modules[linear_name], owner._modules[act_name]
    watched = has_hooks(linear) or has_hooks(act) or has_hooks(getattr(act, "inner", act))
    linear.__dict__[ARMED] = not watched


def _disarm(owner: nn.Module, args, output) -> None:
    linear_name, _ = owner.__dict__[OWNER_KEY]
    owner._modules[linear_name].__dict__[ARMED] = False


@contextlib.contextmanager
def armed(owner: nn.Module) -> Iterator[None]:
    """Code that runs a fused owner's linear and activation itself (not through `owner(...)`, so
    without its hooks) arms the pair inside this block as the owner's call would.

    Example:
        >>> with armed(layer):
        ...     y = layer.fc2(layer.activation_fn(layer.fc1(x)))
    """
    if OWNER_KEY not in owner.__dict__:
        yield
        return
    _arm(owner, ())
    try:
        yield
    finally:
        _disarm(owner, (), None)


def fuse_activations(model: nn.Module) -> list[str]:
    """Let W8A8 dynamic QuantLinear layers apply the GELU after them in their int8 kernel, inside
    transformers' FFN modules; returns the fused layers' names. Calling it again changes nothing.

    Example:
        >>> quantize(minilm, QuantConfig(activations="dynamic")); fuse_activations(minilm)[:1]
        ['bert.encoder.layer.0.intermediate.dense']
    """
    fused = []
    for owner_name, owner in model.named_modules():
        if not type(owner).__module__.startswith("transformers.") or OWNER_KEY in owner.__dict__:
            continue  # only code we read: nothing but the activation uses linear(x)
        for linear_name, act_name in PAIRS:
            linear, act = owner._modules.get(linear_name), owner._modules.get(act_name)
            if not isinstance(linear, QuantLinear) or act is None:
                continue
            kind = gelu_kind(act)
            if kind is None or getattr(linear, "act", None) is None or linear.act.mode != "dynamic":
                continue
            owner._modules[act_name] = FusedActivation(act, kind)
            linear.post_act = kind
            owner.__dict__[OWNER_KEY] = (linear_name, act_name)
            owner.register_forward_pre_hook(_arm)
            owner.register_forward_hook(_disarm, always_call=True)
            fused.append(f"{owner_name}.{linear_name}" if owner_name else linear_name)
            break
    return fused
