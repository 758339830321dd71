"""Compact weight files: safetensors holding int8 codes, and bitmap-sparse tensors where smaller.

The measured "stored bytes" of a model is exactly the payload this format writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from mmcompress.core.io import atomic_write_bytes
from mmcompress.errors import ModelError
from mmcompress.graph.sparse import bitmap_bytes, decode_bitmap, dense_bytes, encode_bitmap

FORMAT = "mmcompress-compact-v1"


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without duplicates of shared (tied) tensors."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def tensor_stored_bytes(t: torch.Tensor) -> int:
    """Bytes one tensor takes in the compact format (the smaller of dense and bitmap-sparse)."""
    return min(dense_bytes(t), bitmap_bytes(t)) if t.numel() >= 64 else dense_bytes(t)


def stored_bytes(model: nn.Module) -> dict[str, int]:
    """Per-tensor payload bytes of `save_compact(model)`.

    Example:
        >>> sum(stored_bytes(nn.Linear(4, 4)).values())
        80
    """
    return {name: tensor_stored_bytes(t) for name, t in unique_state(model).items()}


def save_compact(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write the model's tensors in the compact format, atomically.

    Example:
        >>> save_compact(model, "out/model.safetensors")
    """
    tensors, layout = {}, {}
    for name, t in unique_state(model).items():
        t = t.detach().cpu().contiguous()
        if t.numel() >= 64 and bitmap_bytes(t) < dense_bytes(t):
            bitmap, values = encode_bitmap(t)
            tensors[f"{name}::bitmap"], tensors[f"{name}::values"] = bitmap, values
            layout[name] = {"encoding": "bitmap", "shape": list(t.shape)}
        else:
            tensors[name] = t
            layout[name] = {"encoding": "dense"}
    meta = {"format": FORMAT, "layout": json.dumps(layout), "extra": json.dumps(extra or {})}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def load_compact(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Decode a compact file into a plain state dict (exact) and its `extra` metadata.

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
            state = {}
            for name, info in layout.items():
                if info["encoding"] == "bitmap":
                    state[name] = decode_bitmap(
                        fh.get_tensor(f"{name}::bitmap"), fh.get_tensor(f"{name}::values"), tuple(info["shape"])
                    )
                else:
                    state[name] = fh.get_tensor(name)
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ModelError(f"{path} is corrupted or truncated ({err}); re-create it") from None
    return state, json.loads(meta.get("extra", "{}"))
