"""torch.nn's transformer encoder in code that torch.fx traces, so structured pruning reaches the
feed-forward channels inside it.

`nn.TransformerEncoder` and `nn.TransformerEncoderLayer` are torch.nn modules, which the tracer
keeps whole (and whose forward branches on fast-path checks fx cannot follow). `open_transformers`
replaces them by `TraceableEncoder` / `TraceableEncoderLayer`: the same submodules under the same
names (self_attn split into q/k/v/out Linear layers, linear1, linear2, norm1, norm2, dropouts) and
the same math as torch's own path without nested tensors (post-norm or pre-norm, any activation,
attention and key padding masks, is_causal). An encoder whose nested-tensor path zeroed padded
positions keeps doing so (`split_attention.zero_padded_positions`). The replacement is recorded, so
a replay repeats it before loading weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from mmcompress.models.split_attention import SplitMultiheadAttention, zero_padded_positions

ENCODERS = (nn.TransformerEncoder, nn.TransformerEncoderLayer)


class TraceableEncoderLayer(nn.Module):
    """`nn.TransformerEncoderLayer` without its fused fast path (its modules shared with the layer it
    is built from; packed attention split into a new module).

    Example:
        >>> layer = TraceableEncoderLayer(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True))
        >>> y = layer(torch.randn(2, 5, 32))
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        attention = layer.self_attn  # split into a new module: the original layer stays as it was
        self.self_attn = (
            SplitMultiheadAttention.from_packed(attention) if type(attention) is nn.MultiheadAttention else attention
        )
        self.linear1, self.dropout, self.linear2 = layer.linear1, layer.dropout, layer.linear2
        self.norm1, self.norm2, self.dropout1, self.dropout2 = layer.norm1, layer.norm2, layer.dropout1, layer.dropout2
        self.norm_first, self.activation = layer.norm_first, layer.activation  # a function or a module
        self.train(layer.training)

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._attend(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def _attend(self, x, attn_mask, key_padding_mask, is_causal: bool) -> torch.Tensor:
        out = self.self_attn(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(out)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TraceableEncoder(nn.Module):
    """`nn.TransformerEncoder` over `TraceableEncoderLayer`s (its modules shared with the encoder it is built from).

    Example:
        >>> encoder = TraceableEncoder(nn.TransformerEncoder(layer, 2))
    """

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        last = encoder.layers[-1]
        self.zero_padding = getattr(encoder, "use_nested_tensor", False) or any(
            hook is zero_padded_positions for hook in getattr(last, "_forward_hooks", {}).values()
        )  # the nested-tensor path zeroed padded positions
        self.layers = nn.ModuleList(
            layer if isinstance(layer, TraceableEncoderLayer) else TraceableEncoderLayer(layer)
            for layer in encoder.layers
        )
        self.norm = encoder.norm
        self.train(encoder.training)

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        output, causal = src, is_causal is True  # None (detect from the mask): the mask is used as given
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=causal)
        if self.zero_padding and src_key_padding_mask is not None and not is_fx_symbolic_tracing():  # data-dependent
            kwargs = {"src_key_padding_mask": src_key_padding_mask, "src_mask": mask}
            zeroed = zero_padded_positions(self.layers[-1], (), kwargs, output)
            output = output if zeroed is None else zeroed
        return output if self.norm is None else self.norm(output)


def transformers_holding(model: nn.Module, names: list[str]) -> list[str]:
    """The outermost nn.TransformerEncoder / nn.TransformerEncoderLayer modules that hold any of
    `names` (module names), in model order.

    Example:
        >>> transformers_holding(model, ["enc.layers.0.linear1"])
        ['enc']
    """
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, ENCODERS) or any(_inside(name, outer) for outer in found):
            continue
        if any(_inside(target, name) for target in names):
            found.append(name)
    return found


def _inside(name: str, outer: str) -> bool:
    """Whether module `name` lies inside module `outer` ("" is the model itself)."""
    return name != outer and (outer == "" or name.startswith(f"{outer}."))


def open_transformers(model: nn.Module, names: list[str]) -> list[str]:
    """Replace the named nn.TransformerEncoder / nn.TransformerEncoderLayer modules by their traceable
    twins in place (the same outputs; names already replaced are skipped). Returns the names replaced.
    The name "" is the model itself: a model that *is* an encoder becomes its twin (same object).

    Example:
        >>> open_transformers(model, ["enc"])
        ['enc']
    """
    done = []
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, ENCODERS):
            continue
        twin = TraceableEncoder(module) if isinstance(module, nn.TransformerEncoder) else TraceableEncoderLayer(module)
        if name:
            model.set_submodule(name, twin)
        else:
            become(model, twin)
        done.append(name)
    return done


def become(module: nn.Module, other: nn.Module) -> None:
    """Turn `module` into `other` in place (class, submodules, attributes), keeping `module`'s own
    hooks: how the model object a caller holds is replaced when it is itself the encoder to open.

    Example:
        >>> saved = (type(encoder), dict(encoder.__dict__))
        >>> become(encoder, TraceableEncoder(encoder))
    """
    state = dict(other.__dict__)
    state.update({k: v for k, v in module.__dict__.items() if "hooks" in k})
    module.__class__ = other.__class__
    module.__dict__ = state
