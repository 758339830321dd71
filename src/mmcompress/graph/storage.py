"""Compact weight files: safetensors where each tensor takes its smallest encoding.

Encodings: dense; bitmap (a bit per element + the non-zero values); and, for integer codes of
fewer than 8 bits, packed (a bit stream of b-bit codes) and bitmap + packed non-zero codes.
The measured "stored bytes" of a model is exactly the payload this format writes. A tensor that
several names share (tied weights, tied integer codes) is stored once under its first name; the
others are listed as aliases and filled in again on loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from mmcompress.core.io import atomic_write_bytes
from mmcompress.core.shared_params import tensor_key
from mmcompress.errors import ModelError
from mmcompress.graph.sparse import bitmap_bytes, decode_bitmap, dense_bytes, encode_bitmap
from mmcompress.quant.modules import QUANT_MODULES
from mmcompress.quant.packing import pack_codes, packed_nbytes, unpack_codes

FORMAT = "mmcompress-compact-v1"


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without duplicates of shared (tied) tensors: each under its first name."""
    aliases = tied_aliases(model)
    return {name: t for name, t in model.state_dict().items() if name not in aliases}


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict name -> the first name of the same shared tensor, for every later name.

    Example:
        >>> tied_aliases(whisper)
        {'proj_out.weight': 'model.decoder.embed_tokens.weight'}
    """
    first: dict[tuple, str] = {}
    aliases = {}
    for name, t in model.state_dict().items():
        key = tensor_key(t)
        if t.numel() and key in first:
            aliases[name] = first[key]
        first.setdefault(key, name)
    return aliases


def code_bits(model: nn.Module) -> dict[str, int]:
    """State-dict name -> bit width for integer weight codes narrower than 8 bits."""
    return {
        f"{name}.qweight": m.bits for name, m in model.named_modules() if isinstance(m, QUANT_MODULES) and m.bits < 8
    }


def _encodings(t: torch.Tensor, bits: int | None) -> dict[str, int]:
    """Bytes of each encoding that applies to `t`."""
    sizes = {"dense": dense_bytes(t)}
    if t.numel() >= 64:
        sizes["bitmap"] = bitmap_bytes(t)
    if bits is not None:
        nnz = int((t != 0).sum())
        sizes["packed"] = packed_nbytes(t.numel(), bits)
        sizes["bitmap_packed"] = (t.numel() + 7) // 8 + packed_nbytes(nnz, bits)
    return sizes


def tensor_stored_bytes(t: torch.Tensor, bits: int | None = None) -> int:
    """Bytes one tensor takes in the compact format (its smallest encoding)."""
    return min(_encodings(t, bits).values())


def stored_bytes(model: nn.Module) -> dict[str, int]:
    """Per-tensor payload bytes of `save_compact(model)`.

    Example:
        >>> sum(stored_bytes(nn.Linear(4, 4)).values())
        80
    """
    bits = code_bits(model)
    return {name: tensor_stored_bytes(t, bits.get(name)) for name, t in unique_state(model).items()}


def save_compact(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write the model's tensors in the compact format, atomically.

    Example:
        >>> save_compact(model, "out/model.safetensors")
    """
    tensors, layout = {}, {}
    bits_of = code_bits(model)
    for name, t in unique_state(model).items():
        t = t.detach().cpu().contiguous()
        bits = bits_of.get(name)
        sizes = _encodings(t, bits)
        encoding = min(sizes, key=sizes.get)
        info = {"encoding": encoding, "shape": list(t.shape)}
        if encoding == "dense":
            tensors[name] = t
        elif encoding == "bitmap":
            tensors[f"{name}::bitmap"], tensors[f"{name}::values"] = encode_bitmap(t)
        elif encoding == "packed":
            tensors[f"{name}::packed"], info["bits"] = pack_codes(t, bits), bits
        else:  # bitmap_packed
            bitmap, values = encode_bitmap(t)
            tensors[f"{name}::bitmap"], tensors[f"{name}::packed"] = bitmap, pack_codes(values, bits)
            info.update(bits=bits, nnz=values.numel())
        layout[name] = info
    meta = {"format": FORMAT, "layout": json.dumps(layout), "extra": json.dumps(extra or {})}
    meta["aliases"] = json.dumps(tied_aliases(model))
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def _decode(fh, name: str, info: dict) -> torch.Tensor:
    shape = tuple(info.get("shape", ()))
    encoding = info["encoding"]
    if encoding == "dense":
        return fh.get_tensor(name)
    if encoding == "bitmap":
        return decode_bitmap(fh.get_tensor(f"{name}::bitmap"), fh.get_tensor(f"{name}::values"), shape)
    if encoding == "packed":
        return unpack_codes(fh.get_tensor(f"{name}::packed"), info["bits"], shape)
    if encoding == "bitmap_packed":
        values = unpack_codes(fh.get_tensor(f"{name}::packed"), info["bits"], (info["nnz"],))
        return decode_bitmap(fh.get_tensor(f"{name}::bitmap"), values, shape)
    raise ValueError(f"unknown encoding {encoding!r} for {name}")


def load_compact(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Decode a compact file into a plain state dict (exact; tied names share one tensor) and its
    `extra` metadata.

    Example:
        >>> state, extra = load_compact("out/model.safetensors")
        >>> model.load_state_dict(state)
    """
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ModelError(f"{path} is not an mmcompress compact weight file")
            layout = json.loads(meta["layout"])
            state = {name: _decode(fh, name, info) for name, info in layout.items()}
            state.update({alias: state[name] for alias, name in json.loads(meta.get("aliases", "{}")).items()})
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path} is corrupted or truncated ({err}); re-create it") from None
    return state, json.loads(meta.get("extra", "{}"))
