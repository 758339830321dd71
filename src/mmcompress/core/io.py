"""Atomic writes and safe loads: nothing half-written, nothing unpickled."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.errors import MMCompressError, ModelError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to `path` via a temp file in the same folder and an atomic rename.

    Example:
        >>> atomic_write_bytes("out/x.bin", b"abc")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (sorted keys, indented)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically `torch.save` a checkpoint made of tensors and plain containers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def safe_torch_load(path: str | Path) -> Any:
    """Load a checkpoint with `weights_only=True`; a corrupted file is a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many types for corrupted files
        raise MMCompressError(
            f"checkpoint {path} is corrupted or not an mmcompress checkpoint ({err.__class__.__name__}); "
            "delete it and run again"
        ) from None


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check that files can be written there.

    Example:
        >>> ensure_writable_dir("runs/demo")
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise MMCompressError(
            f"output directory {path} is not writable ({err.strerror}); choose another with --out"
        ) from None
    return path


def check_writable(path: str | Path, option: str = "--out") -> None:
    """Fail early, creating nothing, when `path` could not be created or written (`option`: what
    the user changes to fix it).

    Example:
        >>> check_writable("runs/demo")
    """
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        reason = "a file is in the way" if not probe.is_dir() else "permission denied"
        raise MMCompressError(f"directory {path} is not writable ({reason} at {probe}); choose another with {option}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (weights files are checked against it on load).

    Example:
        >>> file_sha256("runs/x/model.safetensors")[:8]
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str | None, what: str, fix: str) -> None:
    """Raise ModelError when `path`'s SHA-256 differs from `expected` (None: nothing recorded, not checked).

    Example:
        >>> check_sha256(weights, stage["weights_sha256"], "stage checkpoint", "rerun with --no-resume")
    """
    if expected is None:
        return
    if not Path(path).is_file():
        raise ModelError(f"{what} {path} is missing; {fix}")
    if file_sha256(path) != expected:
        raise ModelError(f"{what} {path} does not match its recorded SHA-256 (corrupted or replaced); {fix}")


def json_digest(data: dict[str, Any], without: str) -> str:
    """SHA-256 of a JSON mapping's canonical form, leaving out the key `without` (where the digest is
    stored): records, quantization maps and file headers check themselves with it.

    Example:
        >>> record["record_sha256"] = json_digest(record, "record_sha256")
    """
    body = {k: v for k, v in data.items() if k != without}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short SHA-256 of the canonical JSON form of `obj` (config hashes, cache keys).

    Example:
        >>> stable_hash({"a": 1})
        '015abd7f5cc5'
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-1 over a model's state-dict names and tensor bytes (16 hex digits): resumed work must
    start from the same weights.

    Example:
        >>> model_fingerprint(nn.Linear(2, 2)) == model_fingerprint(nn.Linear(2, 2))
        False
    """
    digest = hashlib.sha1()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_state_checked(model: nn.Module, state: dict, what: str, fix: str) -> None:
    """Load a state dict; any missing, unexpected or mis-shaped tensor is a ModelError naming `what`.

    Example:
        >>> load_state_checked(model, state, "checkpoint x.safetensors", "delete it")
    """
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ModelError(f"{what} does not fit model {type(model).__name__} ({first[:200]}); {fix}") from None
    if missing or unexpected:
        raise ModelError(
            f"{what} does not fit model {type(model).__name__} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); {fix}"
        )
