"""nn.MultiheadAttention with its packed query/key/value weight split into three nn.Linear layers.

`nn.MultiheadAttention` (and so `nn.TransformerEncoderLayer` / `DecoderLayer`) keeps query, key
and value in one `in_proj_weight` parameter and calls it through `F.multi_head_attention_forward`,
so nothing that works layer by layer (quantization, head pruning) can reach it. `split_attention`
swaps each one for `SplitMultiheadAttention`: the same computation (same arguments, masks, outputs)
with `q_proj`, `k_proj`, `v_proj` and `out_proj` as plain Linear layers. torch.ao's quantizable
MultiheadAttention does the same split.

PyTorch's fused encoder fast path (`torch._transformer_encoder_layer_fwd`, eval mode only) reads the
packed weight, so the split layers run the regular path; `TransformerEncoder`'s nested-tensor
conversion is turned off for the same reason.
"""

from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.targets import first_match
from mmcompress.errors import UnsupportedError


class SplitMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention`'s forward with separate q/k/v/out Linear layers (build it with
    `from_packed`). Head pruning may lower `num_heads`; `embed_dim` stays the output width.

    Example:
        >>> split = SplitMultiheadAttention.from_packed(nn.MultiheadAttention(32, 4, batch_first=True))
        >>> out, weights = split(x, x, x)
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool, dropout: float,
                 batch_first: bool) -> None:  # fmt: skip
        super().__init__()
        if embed_dim % num_heads:
            raise UnsupportedError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # what nn.Transformer*Layer reads to choose its fused fast path, which needs the packed weight
        self._qkv_same_embed_dim, self.in_proj_weight, self.in_proj_bias = False, None, None

    @classmethod
    @torch.no_grad()
    def from_packed(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The same attention as `mha`, its weights copied (packed q/k/v rows split in order)."""
        if not splittable(mha):
            raise UnsupportedError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be split")
        bias = mha.in_proj_bias is not None
        split = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, bias, mha.dropout, mha.batch_first)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
        for layer, weight, b in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases, strict=True):
            layer.weight.copy_(weight)
            if b is not None:
                layer.bias.copy_(b)
        split.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            split.out_proj.bias.copy_(mha.out_proj.bias)
        like = mha.out_proj.weight
        return split.to(device=like.device, dtype=like.dtype).train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (self._heads(proj(x)) for proj, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        mask = self._mask(attn_mask, key_padding_mask, is_causal, n, length, source, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
            attention = (scores if mask is None else scores + mask).softmax(-1)
            out = F.dropout(attention, p) @ v if p else attention @ v
            weights = attention.mean(1) if average_attn_weights else attention
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, -1))
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out, weights = out.squeeze(1), None if weights is None else weights.squeeze(0)
        return out, weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)  # (N, H, L, head_dim)

    def _mask(self, attn_mask, key_padding_mask, is_causal, n, length, source, dtype) -> torch.Tensor | None:
        """One additive float mask (N or 1, H or 1, L, S), or None: boolean True means masked out."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            mask = mask.view(n, -1, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def packed_attention(model: nn.Module) -> list[str]:
    """Names of the nn.MultiheadAttention modules of `model`.

    Example:
        >>> packed_attention(nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4), 2))
        ['layers.0.self_attn', 'layers.1.self_attn']
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def split_attention(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Replace the named nn.MultiheadAttention modules (default: all) with `SplitMultiheadAttention`
    in place; names already split are skipped. Returns the names replaced.

    Example:
        >>> split_attention(encoder)
        ['layers.0.self_attn', 'layers.1.self_attn']
    """
    wanted = packed_attention(model) if names is None else names
    done = []
    for name in wanted:
        module = model.get_submodule(name)
        if isinstance(module, SplitMultiheadAttention):
            continue
        if not isinstance(module, nn.MultiheadAttention):
            raise UnsupportedError(f"{name!r} is a {type(module).__name__}, not an nn.MultiheadAttention to split")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SplitMultiheadAttention.from_packed(module))
        done.append(name)
    if done:
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False):
                module.use_nested_tensor = False  # its nested fast path reads the packed weight
                module.layers[-1].register_forward_hook(zero_padded_positions, with_kwargs=True)
    return done


def zero_padded_positions(layer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
    """A forward hook on the last layer of an nn.TransformerEncoder whose nested-tensor fast path the
    split turned off: where that path would have run (eval, no gradients, a left-aligned key padding
    mask and no attention mask, batched input), it returned zeros at padded positions; so does this.

    Example:
        >>> encoder.layers[-1].register_forward_hook(zero_padded_positions, with_kwargs=True)
    """
    mask = kwargs.get("src_key_padding_mask")
    if mask is None or kwargs.get("src_mask") is not None or layer.training or output.dim() != 3:
        return None
    if torch.is_autocast_enabled():  # (the fast-path switch is left out: the ONNX exporter turns it off)
        return None
    if torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters()):
        return None
    padded = mask if mask.dtype == torch.bool else mask != 0  # the encoder hands its layers an additive mask
    valid = (~padded).int()
    if not bool((valid[:, 1:] <= valid[:, :-1]).all()):  # not left-aligned: the nested path did not run either
        return None
    return output.masked_fill(padded.unsqueeze(-1), 0.0)


def split_targeted(model: nn.Module, mapping, modality_of, wanted=lambda config: True, own_name=True) -> list[str]:
    """Split every nn.MultiheadAttention that a non-None target of `mapping` selects, by its own name
    (unless not `own_name`) or its layers' names after the split (`wanted(config)` filters the
    configs that count).

    Example:
        >>> split_targeted(model, {"_default": QuantConfig()}, adapter.modality_of)
        ['enc.layers.0.self_attn', 'enc.layers.1.self_attn']
    """

    def selected(name: str) -> bool:
        paths = (name, f"{name}.q_proj", f"{name}.out_proj")[0 if own_name else 1 :]
        configs = (first_match(mapping, path, modality_of(path)) for path in paths)
        return any(config is not None and wanted(config) for config in configs)

    chosen = [name for name in packed_attention(model) if selected(name)]
    unsplittable = [name for name in chosen if not splittable(model.get_submodule(name))]
    if unsplittable:
        warnings.warn(
            f"{len(unsplittable)} nn.MultiheadAttention module(s) with add_bias_kv or add_zero_attn stay as they are "
            f"(float, every head kept): {', '.join(unsplittable[:5])}",
            stacklevel=3,
        )
    return split_attention(model, [name for name in chosen if name not in unsplittable])


def splittable(mha: nn.MultiheadAttention) -> bool:
    """Whether `SplitMultiheadAttention.from_packed` can split `mha` (no add_bias_kv, no add_zero_attn)."""
    return mha.bias_k is None and not mha.add_zero_attn


def projection_targets(model: nn.Module, mapping: dict) -> dict:
    """`mapping` with each key that names an attention module (nn.MultiheadAttention, split or not)
    turned into a regex that also takes its q/k/v/out projections, in place in the order: quantizing
    "the attention" quantizes its layers. An exact name becomes a regex over the projections; a
    regex that matches attention modules keeps its own matches and gains their projections.

    Example:
        >>> projection_targets(model, {"enc.layers.0.self_attn": cfg})
        {'re:enc\\.layers\\.0\\.self_attn\\.(q|k|v|out)_proj': cfg}
        >>> projection_targets(model, {"re:.*self_attn": cfg})
        {'re:(?:.*self_attn)|(?:.*self_attn)\\.(q|k|v|out)_proj': cfg}
    """
    attention = [
        name
        for name, module in model.named_modules()
        if isinstance(module, SplitMultiheadAttention)
        or (isinstance(module, nn.MultiheadAttention) and splittable(module))
    ]

    def widened(key: str) -> str:
        if key in attention:
            return rf"re:{re.escape(key)}\.(q|k|v|out)_proj"
        if key.startswith("re:") and any(re.fullmatch(key[3:], name) for name in attention):
            body = re.sub(r"^\^|(?<!\\)\$$", "", key[3:])  # anchors: targets match whole names anyway
            return rf"re:(?:{body})|(?:{body})\.(q|k|v|out)_proj"
        return key

    return {widened(key): config for key, config in mapping.items()}
