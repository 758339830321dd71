"""Trained-checkpoint cache keyed by a hash of the model's build + training config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from mmcompress.core.io import atomic_write_bytes, atomic_write_json, check_sha256, file_sha256, load_state_checked
from mmcompress.errors import ModelError


def default_cache_dir() -> Path:
    """`~/.cache/mmcompress` (pass `cache_dir` to override; the CLI reads MMCOMPRESS_CACHE)."""
    return Path.home() / ".cache" / "mmcompress"


def cache_paths(cache_dir: Path, name: str, key: str) -> tuple[Path, Path]:
    """(weights, metadata) paths of one cache entry."""
    stem = cache_dir / "models" / f"{name}-{key}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_cached(cache_dir: Path, name: str, key: str, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write weights (safetensors) then metadata (JSON), each atomically; metadata last marks completion.

    Example:
        >>> save_cached(default_cache_dir(), "fusion-late", "abc123", model, {"metrics": {}})
    """
    weights, meta = cache_paths(cache_dir, name, key)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(tensors))
    atomic_write_json(meta, {**info, "name": name, "key": key, "weights_sha256": file_sha256(weights)})
    return weights


def load_cached(cache_dir: Path, name: str, key: str, model: nn.Module) -> dict[str, Any] | None:
    """Load cached weights into `model`; None on a cache miss. A corrupted entry is an error.

    Example:
        >>> info = load_cached(default_cache_dir(), "fusion-late", "abc123", model)
    """
    weights, meta = cache_paths(cache_dir, name, key)
    if not (weights.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        state = load_file(weights)
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelError(f"cached checkpoint {weights} is corrupted ({err}); delete it to retrain") from None
    if info.get("key") != key:
        raise ModelError(f"cached checkpoint {weights} belongs to another config; delete it to retrain")
    check_sha256(weights, info.get("weights_sha256"), "cached checkpoint", "delete it to retrain")
    load_state_checked(model, state, f"cached checkpoint {weights}", "delete it to retrain")
    return info
