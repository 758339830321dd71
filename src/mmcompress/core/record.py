"""The JSON-serializable record of what a technique did (replayable)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Any


def environment_versions() -> dict[str, str]:
    """Versions of the packages that determine results.

    Example:
        >>> "torch" in environment_versions()
        True
    """
    import importlib.metadata

    import numpy
    import torch

    try:
        ours = importlib.metadata.version("mmcompress")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was not installed
        ours = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "mmcompress": ours,
    }


@dataclass
class Record:
    """What one technique did to a model.

    Attributes:
        technique: registered name ("quantize", "prune", ...).
        config: the config(s) applied, keyed by target key.
        modules: per-module details (config used, scales shape, sparsity...).
        metrics: numbers measured while applying it.
        info: facts about the machine a result was made for (e.g. quantize: the CPU's integer
            instruction sets and the weight bits chosen for integer kernels).

    Example:
        >>> rec = Record("prune", {"_default": {"sparsity": 0.5}})
        >>> Record.from_json(rec.to_json()) == rec
        True
    """

    technique: str
    config: dict[str, Any]
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Record:
        return cls.from_dict(json.loads(text))


EDITS = "_mmcompress_edits"  # attribute of a model's root module: records of changes to its structure


def note_edit(model: Any, record: Record) -> None:
    """Remember on `model` a record of a change to its structure (structured pruning, low-rank
    factorization, BatchNorm folding), so `save_quantized` can write it and `load_quantized` replay it
    on a fresh model of the original architecture.

    Example:
        >>> note_edit(model, prune_structured(model, {"re:.*fc1": {"ratio": 0.5}}, example_inputs=x))
        >>> [r["technique"] for r in structure_edits(model)]
        ['prune_structured']
    """
    model.__dict__.setdefault(EDITS, []).append(record.to_dict())


def structure_edits(model: Any) -> list[dict[str, Any]]:
    """The structure records `note_edit` kept on `model`, oldest first.

    Example:
        >>> structure_edits(torch.nn.Linear(2, 2))
        []
    """
    return list(model.__dict__.get(EDITS, []))
