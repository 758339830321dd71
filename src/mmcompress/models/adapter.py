"""Adapters: declarative descriptions of which modules form each modality tower.

Algorithms ask the adapter; they never hard-code attribute paths (DESIGN principle 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

MODALITIES = ("image", "text", "audio", "fusion")


@dataclass(frozen=True)
class Adapter:
    """Which module-name prefixes belong to which modality, and how to build example inputs.

    Attributes:
        towers: modality -> module-name prefixes ("image_tower" covers "image_tower.conv1").
        example_inputs: callable(batch_size) -> inputs following the batch convention.

    Example:
        >>> adapter = Adapter(towers={"image": ("cnn",), "fusion": ("head",)})
        >>> adapter.modality_of("cnn.0")
        'image'
    """

    towers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    example_inputs: Callable[[int], Any] | None = None

    def __post_init__(self) -> None:
        for modality in self.towers:
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")

    def modality_of(self, name: str) -> str | None:
        """Modality of a module or parameter name, by longest matching prefix (None if none)."""
        best, best_len = None, -1
        for modality, prefixes in self.towers.items():
            for prefix in prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                    best, best_len = modality, len(prefix)
        return best

    def tower_names(self) -> list[str]:
        return list(self.towers)


def adapter_for(model: nn.Module) -> Adapter:
    """The model's adapter: its `ADAPTER` attribute / `adapter()` method, or an empty one.

    Without an adapter, algorithms still work on the whole model (no per-modality budgets).

    Example:
        >>> adapter_for(nn.Linear(2, 2)).towers
        {}
    """
    make = getattr(model, "adapter", None)
    if callable(make):
        return make()
    return Adapter()
