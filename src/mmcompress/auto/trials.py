"""The trial cache: one JSON file per evaluated plan, so an interrupted search resumes and a plan
is never evaluated twice."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmcompress.auto.plan import Plan
from mmcompress.core.io import atomic_write_json


@dataclass
class TrialRecord:
    """One evaluated plan: its metrics (accuracy, size_mb, latency_ms, ...) or why it failed."""

    plan: Plan
    params: dict[str, Any]
    status: str = "ok"  # "ok" or "failed"
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok" and all(math.isfinite(v) for v in self.metrics.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan": self.plan.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**{**data, "plan": Plan.from_dict(data["plan"])})


class TrialCache:
    """`<dir>/<plan key>.json` per trial, written atomically (a crash leaves no half file).

    Example:
        >>> cache = TrialCache("runs/auto/trials")
        >>> cache.get(plan) is None
        True
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, plan: Plan) -> TrialRecord | None:
        path = self.dir / f"{plan.key()}.json"
        if not path.is_file():
            return None
        try:
            return TrialRecord.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):  # unreadable: evaluate again
            return None

    def put(self, record: TrialRecord) -> None:
        atomic_write_json(self.dir / f"{record.plan.key()}.json", record.to_dict())

    def all(self) -> list[TrialRecord]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(TrialRecord.from_dict(json.loads(path.read_text())))
            except (ValueError, KeyError, TypeError):
                continue
        return out
