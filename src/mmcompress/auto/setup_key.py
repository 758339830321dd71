"""What a search's cached trials were measured on: the model, the data, the task and the settings.

Cached trials (and the runs and verifications beside them) are reused only by a search with the
same setup. A search on other data, another test limit, task or model into the same folder sets
the earlier outputs aside in `previous-<key>/` (nothing is deleted) and starts afresh, saying so:
reusing them would mix metrics measured on two datasets.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.core.io import atomic_write_json, model_fingerprint, stable_hash

SETUP_FILE = "setup.json"
DATA_SAMPLES = 256  # samples of each split hashed (their order and content); the lengths are hashed too
SEARCH_OUTPUTS = ("trials", "runs", "verified", "baseline")  # what a setup's measurements wrote


def data_digest(task: Any, dataset: Any, limit: int = DATA_SAMPLES) -> str:
    """SHA-1 of the first `limit` samples as the task batches them (inputs and targets), and the length.

    Example:
        >>> data_digest(ClassificationTask(), load_dataset("digits", "test"))
        '5f0c...'
    """
    digest = hashlib.sha1(str(len(dataset)).encode())
    n = min(limit, len(dataset))
    for idx in torch.arange(n).split(64):
        _update(digest, task.batch(dataset, idx))
    return digest.hexdigest()[:16]


def _update(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _update(digest, item)
    else:
        digest.update(json.dumps(value, default=str).encode())


def search_setup(model: nn.Module, task: Any, train: Any, test: Any, **settings: Any) -> dict[str, Any]:
    """The setup a search's trial metrics depend on (JSON-ready; `settings`: latency batch, metric, ...).

    Example:
        >>> setup = search_setup(model, task, train, test, latency_batch=32, metric_fn=None)
    """
    return {
        "model": model_fingerprint(model),
        "task": f"{type(task).__module__}.{type(task).__qualname__}:{task.primary_metric}",
        "test": data_digest(task, test, limit=len(test)),
        "train": data_digest(task, train),
        **{k: getattr(v, "__qualname__", v) for k, v in settings.items()},
    }


def claim_setup(out: Path, setup: dict[str, Any]) -> str | None:
    """Make `out` hold this setup's search: outputs of another setup move to `previous-<key>/`.

    Returns a sentence for the user when something was set aside (also warned), else None.

    Example:
        >>> claim_setup(Path("runs/auto"), setup)
    """
    key = stable_hash(setup)
    path = out / SETUP_FILE
    old = _read(path)
    present = [name for name in SEARCH_OUTPUTS if (out / name).exists()]
    message = None
    if present and old.get("key") != key:
        old_key = old.get("key") or "unknown"
        aside = out / f"previous-{old_key}"
        aside.mkdir(parents=True, exist_ok=True)
        for name in present:
            shutil.move(str(out / name), str(aside / name))
        changed = sorted(k for k in setup if old.get("setup", {}).get(k) != setup[k]) if old else ["unrecorded"]
        message = (
            f"auto: {out} holds a search measured on another setup (changed: {', '.join(changed)}); "
            f"its cached trials are not reused and were moved to {aside}"
        )
        warnings.warn(message, stacklevel=3)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "setup": setup})
    return message


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
