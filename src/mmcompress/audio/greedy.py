"""Greedy decoding of Whisper-style encoder-decoders with a static key/value cache.

transformers' `generate` pays several milliseconds of Python per token (logits processors, cache
objects, mask building, output bookkeeping) on top of a decoder step that costs ~2 ms on Whisper
tiny: on a CPU most of a transcription is that overhead. This loop does only the step's own work,
as gpt-fast and CTranslate2 do:
- the encoder runs once (PyTorch, or ONNX Runtime after `encoder_on_onnxruntime`);
- every layer's cross-attention keys/values are computed once from the encoder output;
- self-attention keys/values go into tensors preallocated for `max_new_tokens`;
- each step calls the model's own modules (so quantized layers run their integer kernels), then
  applies Whisper's token suppression (`suppress_tokens`, and `begin_suppress_tokens` at the first
  generated token) and takes the argmax, stopping at the end token.
It returns exactly the tokens `generate(do_sample=False)` returns for the same model (tested on the
real clips), as long as float rounding does not flip an argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.errors import ModelError
from mmcompress.quant.fuse_act import armed


@dataclass
class _Parts:
    """The modules a Whisper step uses."""

    encoder: nn.Module
    decoder: nn.Module
    head: nn.Module


def whisper_parts(model: nn.Module) -> _Parts | None:
    """The encoder, decoder and output head of a Whisper-style model, or None if it is not one.

    Example:
        >>> whisper_parts(whisper).head is whisper.proj_out
        True
    """
    base = getattr(model, "model", model)
    encoder, decoder = getattr(base, "encoder", None), getattr(base, "decoder", None)
    head = getattr(model, "proj_out", None)
    layers = getattr(decoder, "layers", None)
    if encoder is None or head is None or layers is None or len(layers) == 0:
        return None
    needed = ("self_attn", "encoder_attn", "fc1", "fc2", "self_attn_layer_norm", "encoder_attn_layer_norm")
    if not all(hasattr(layers[0], n) for n in needed) or not hasattr(decoder, "embed_positions"):
        return None
    return _Parts(encoder, decoder, head)


def matches_generate(model: nn.Module) -> bool:
    """True when `greedy_transcribe` decodes exactly as `generate` would by default: a Whisper-style
    model that is English-only and does not return timestamps (a multilingual model's `generate`
    detects the language; timestamps need Whisper's timestamp rules). `transcribe` uses the greedy
    loop only then.

    Example:
        >>> matches_generate(whisper_tiny_en)
        True
    """
    gen = getattr(model, "generation_config", None)
    return (
        whisper_parts(model) is not None
        and gen is not None
        and not getattr(gen, "is_multilingual", False)
        and not getattr(gen, "return_timestamps", False)
    )


def prompt_tokens(model: nn.Module) -> list[int]:
    """The tokens `generate` starts a transcript with: start of transcript, then (multilingual
    models) English + transcribe, then no-timestamps.

    Example:
        >>> prompt_tokens(whisper_tiny_en)
        [50257, 50362]
    """
    gen = model.generation_config
    tokens = [gen.decoder_start_token_id]
    if getattr(gen, "is_multilingual", False):
        lang, task = gen.lang_to_id.get("<|en|>"), gen.task_to_id.get("transcribe")
        tokens += [t for t in (lang, task) if t is not None]
    if not getattr(gen, "return_timestamps", False) and getattr(gen, "no_timestamps_token_id", None) is not None:
        tokens.append(gen.no_timestamps_token_id)
    return tokens


def _heads(attn: nn.Module, proj: nn.Module) -> tuple[int, int]:
    head_dim = attn.head_dim
    out = proj.out_features if hasattr(proj, "out_features") else proj.qweight.shape[0]
    return out // head_dim, head_dim


def _split(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, heads*head_dim) -> (B, heads, T, head_dim)."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


class _LayerCache:
    """One decoder layer's cross keys/values (fixed) and self keys/values (written per token)."""

    def __init__(self, layer: nn.Module, memory: torch.Tensor, length: int) -> None:
        cross = layer.encoder_attn
        self.cross_heads = _heads(cross, cross.q_proj)
        self.cross_k = _split(cross.k_proj(memory), *self.cross_heads)
        self.cross_v = _split(cross.v_proj(memory), *self.cross_heads)
        self.self_heads = _heads(layer.self_attn, layer.self_attn.q_proj)
        shape = (memory.shape[0], self.self_heads[0], length, self.self_heads[1])
        self.k = memory.new_zeros(shape)
        self.v = memory.new_zeros(shape)


def _self_attention(attn: nn.Module, x: torch.Tensor, cache: _LayerCache, pos: int) -> torch.Tensor:
    heads, head_dim = cache.self_heads
    n = x.shape[1]
    q = _split(attn.q_proj(x) * attn.scaling, heads, head_dim)
    cache.k[:, :, pos : pos + n] = _split(attn.k_proj(x), heads, head_dim)
    cache.v[:, :, pos : pos + n] = _split(attn.v_proj(x), heads, head_dim)
    keys, values = cache.k[:, :, : pos + n], cache.v[:, :, : pos + n]
    out = F.scaled_dot_product_attention(q, keys, values, is_causal=n > 1 and pos == 0, scale=1.0)
    return attn.out_proj(out.transpose(1, 2).reshape(x.shape[0], n, heads * head_dim))


def _cross_attention(attn: nn.Module, x: torch.Tensor, cache: _LayerCache) -> torch.Tensor:
    heads, head_dim = cache.cross_heads
    q = _split(attn.q_proj(x) * attn.scaling, heads, head_dim)
    out = F.scaled_dot_product_attention(q, cache.cross_k, cache.cross_v, scale=1.0)
    return attn.out_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], heads * head_dim))


def _step(parts: _Parts, caches: list[_LayerCache], ids: torch.Tensor, pos: int) -> torch.Tensor:
    """Logits of the last position after feeding `ids` (B, n) at positions pos..pos+n-1."""
    decoder = parts.decoder
    x = decoder.embed_tokens(ids)
    scale = getattr(decoder, "embed_scale", 1.0)
    if scale != 1.0:
        x = x * scale
    x = x + decoder.embed_positions.weight[pos : pos + ids.shape[1]]
    for layer, cache in zip(decoder.layers, caches, strict=True):
        x = x + _self_attention(layer.self_attn, layer.self_attn_layer_norm(x), cache, pos)
        x = x + _cross_attention(layer.encoder_attn, layer.encoder_attn_layer_norm(x), cache)
        x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
    return parts.head(decoder.layer_norm(x[:, -1]))


def _is_whisper_encoder(encoder: nn.Module) -> bool:
    layers = getattr(encoder, "layers", None)
    parts = ("conv1", "conv2", "embed_positions", "layer_norm")
    return (
        layers is not None
        and len(layers) > 0
        and all(hasattr(encoder, p) for p in parts)
        and all(hasattr(layers[0], p) for p in ("self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"))
    )


def _whisper_encode(
    encoder: nn.Module, features: torch.Tensor, attention_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The Whisper encoder's forward with its own modules, without transformers' per-layer copies
    (contiguous heads, output objects): the same operations in the same order. `attention_dtype`
    (e.g. torch.bfloat16): the attention products run in it (softmax accumulates in float32 inside
    the fused kernel), the rest of the encoder in the input's dtype."""
    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(features))))
    x = x.permute(0, 2, 1) + encoder.embed_positions.weight[: x.shape[2]]
    for layer in encoder.layers:
        attn = layer.self_attn
        heads, head_dim = _heads(attn, attn.q_proj)
        h = layer.self_attn_layer_norm(x)
        q = _split(attn.q_proj(h) * attn.scaling, heads, head_dim)
        k, v = _split(attn.k_proj(h), heads, head_dim), _split(attn.v_proj(h), heads, head_dim)
        out = _attention(q, k, v, attention_dtype).transpose(1, 2)
        x = x + attn.out_proj(out.reshape(x.shape[0], x.shape[1], heads * head_dim))
        with armed(layer):  # a fused W8A8 fc1 applies the GELU in its int8 kernel, as in layer(...)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
    return encoder.layer_norm(x)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or dtype == q.dtype:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), scale=1.0)
    return out.to(q.dtype)


def attention_dtype_for(name: str | torch.dtype | None) -> torch.dtype | None:
    """The encoder attention dtype `name` asks for: None/"float32" (the model's own), "bfloat16"
    (or the torch dtypes), or "auto" (bfloat16 where the CPU has AMX bf16 tiles, else the model's
    own: with AVX-512 BF16 alone, bf16 attention was slower than float32).

    Example:
        >>> attention_dtype_for("bfloat16")
        torch.bfloat16
    """
    if name in (None, "float32", torch.float32):
        return None
    if name in ("bfloat16", torch.bfloat16):
        return torch.bfloat16
    if name == "auto":
        from mmcompress.core.cpu import cpu_features

        return torch.bfloat16 if cpu_features().bf16 else None
    raise ValueError(f"attention_dtype {name!r} is not one of 'float32', 'bfloat16', 'auto'")


def _runs_own_encoder(encoder: nn.Module) -> bool:
    """The loop runs this encoder with `_whisper_encode` (a Whisper-style PyTorch encoder in eval mode)."""
    return _is_whisper_encoder(encoder) and not encoder.training


def _encode(encoder: nn.Module, features: torch.Tensor, attention_dtype: torch.dtype | None = None) -> torch.Tensor:
    if _runs_own_encoder(encoder):
        return _whisper_encode(encoder, features, attention_dtype)
    out = encoder(features)
    return out[0] if isinstance(out, (tuple, list)) or hasattr(out, "last_hidden_state") else out


@torch.no_grad()
def greedy_transcribe(
    model: nn.Module,
    input_features: torch.Tensor,
    max_new_tokens: int = 64,
    attention_dtype: str | torch.dtype | None = None,
) -> torch.Tensor:
    """Greedy token ids (as `generate` returns them) for a batch of log-mel inputs.

    Args:
        model: a Whisper-style encoder-decoder (transformers' WhisperForConditionalGeneration,
            float, quantized, pruned, or with its encoder in ONNX Runtime).
        input_features: (B, mel bins, frames) log-mel features, as its adapter prepares them.
        max_new_tokens: most tokens generated after the prompt.
        attention_dtype: the encoder's attention products in "bfloat16" (2-3x faster than float32
            on CPUs with AMX; slower with AVX-512 BF16 alone; the 1500-frame attention is about a
            third of a Whisper tiny encoder), "float32"/None (the model's own dtype), or "auto"
            (bfloat16 where the CPU has AMX). The tokens may then differ from `generate`'s.

    Returns:
        (B, n) generated token ids, as `generate` returns them: without the prompt and without
        the final end token; rows that ended earlier are padded with the end token.

    Example:
        >>> feats = adapter_for(whisper).prepare({"audio": [clip.audio]})["input_features"]
        >>> whisper.mmcompress_tokenizer.batch_decode(greedy_transcribe(whisper, feats), skip_special_tokens=True)
        ['He was in a fevered state of mind...']
    """
    parts = whisper_parts(model)
    if parts is None:
        raise ModelError(f"{type(model).__name__} is not a Whisper-style encoder-decoder; use model.generate")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    gen = model.generation_config
    prompt = prompt_tokens(model)
    limit = parts.decoder.embed_positions.weight.shape[0]
    length = min(len(prompt) + max_new_tokens, limit)
    first = next(model.parameters(), None)
    features = input_features.to(first.device) if first is not None else input_features
    dtype = attention_dtype_for(attention_dtype)
    if dtype is not None and not _runs_own_encoder(parts.encoder):
        if attention_dtype != "auto":
            raise ModelError(
                f"attention_dtype needs a Whisper-style PyTorch encoder, not {type(parts.encoder).__name__}"
            )
        dtype = None
    memory = _encode(parts.encoder, features, dtype)
    caches = [_LayerCache(layer, memory, length) for layer in parts.decoder.layers]
    batch = memory.shape[0]
    ids = torch.tensor([prompt] * batch, device=memory.device)
    suppress = torch.tensor(list(gen.suppress_tokens or []), dtype=torch.long, device=memory.device)
    begin = torch.tensor(list(gen.begin_suppress_tokens or []), dtype=torch.long, device=memory.device)
    eos_ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos, ends = eos_ids[0], torch.tensor(eos_ids, device=memory.device)
    done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
    out, pos, step_ids = [ids], 0, ids
    while pos + step_ids.shape[1] < length:
        logits = _step(parts, caches, step_ids, pos)
        pos += step_ids.shape[1]
        logits[:, suppress] = float("-inf")
        if len(out) == 1:
            logits[:, begin] = float("-inf")
        token = logits.argmax(-1)
        token = torch.where(done, torch.full_like(token, eos), token)
        out.append(token[:, None])
        done |= torch.isin(token, ends)
        if bool(done.all()):
            break
        step_ids = token[:, None]
    tokens = torch.cat(out[1:], 1)
    return tokens[:, :-1] if bool(done.all()) else tokens
