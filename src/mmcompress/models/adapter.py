"""Adapters: declarative descriptions of which modules form each modality tower.

Algorithms ask the adapter; they never hard-code attribute paths. A model
finds its adapter (`adapter_for`) in this order: one attached with `attach_adapter` (Python or
YAML), its own `adapter()` method, the registry of known architectures (Hugging Face families,
`mmcompress.models.hf`), else an empty adapter (algorithms work on the whole model).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mmcompress.core.config import yaml_error_line
from mmcompress.errors import ConfigError
from mmcompress.models.attention_specs import BUILTIN_ATTENTION, AttentionSpec

MODALITIES = ("image", "text", "audio", "fusion")
_ATTACHED = "_mmcompress_adapter"


@dataclass(frozen=True)
class Adapter:
    """Which module-name prefixes belong to which modality, its layer stacks, attention and inputs.

    Attributes:
        towers: modality -> module-name prefixes ("image_tower" covers "image_tower.conv1"; ""
            covers the whole model).
        example_inputs: callable(batch_size) -> inputs following the batch convention.
        layers: modality -> path of the tower's ModuleList of blocks.
        attention: how to find heads in the model's attention classes.
        prepare: raw multimodal batch -> model inputs (the calibration collator); raw batches are
            dicts of "image" (B, C, H, W) floats in [0, 1], "text" (list of str) and "audio"
            (list of 1-D 16 kHz waveforms). A missing modality the model needs is a DataError.

    Example:
        >>> adapter = Adapter(towers={"image": ("cnn",), "fusion": ("head",)})
        >>> adapter.modality_of("cnn.0")
        'image'
    """

    towers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    example_inputs: Callable[[int], Any] | None = None
    layers: dict[str, str] = field(default_factory=dict)
    attention: tuple[AttentionSpec, ...] = ()
    prepare: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        for modality in [*self.towers, *self.layers]:
            if modality not in MODALITIES:
                raise ConfigError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")

    def modality_of(self, name: str) -> str | None:
        """Modality of a module or parameter name, by longest matching prefix (None if none)."""
        best, best_len = None, -1
        for modality, prefixes in self.towers.items():
            for prefix in prefixes:
                hit = prefix == "" or name == prefix or name.startswith(prefix + ".")
                if hit and len(prefix) > best_len:
                    best, best_len = modality, len(prefix)
        return best

    def tower_names(self) -> list[str]:
        return list(self.towers)

    def attention_spec(self, module: nn.Module) -> AttentionSpec | None:
        """The spec of `module`'s attention class (this adapter's first, then the built-in ones)."""
        for spec in (*self.attention, *BUILTIN_ATTENTION):
            if type(module).__name__ == spec.class_name:
                return spec
        return None


AdapterFactory = Callable[[nn.Module], Adapter]
_REGISTRY: dict[str, AdapterFactory] = {}
ADAPTER_PROVIDERS = ["mmcompress.models.hf"]  # modules registering adapters of known families, loaded on first lookup


def register_adapter(*keys: str) -> Callable[[AdapterFactory], AdapterFactory]:
    """Register an adapter factory for model classes or Hugging Face `config.model_type`s.

    Example:
        >>> @register_adapter("MyNet")
        ... def my_net(model): return Adapter(towers={"image": ("backbone",)})
    """

    def wrap(factory: AdapterFactory) -> AdapterFactory:
        for key in keys:
            _REGISTRY[key] = factory
        return factory

    return wrap


def registered_adapters() -> dict[str, AdapterFactory]:
    """Every registered key (class name or model_type) and its factory."""
    for provider in ADAPTER_PROVIDERS:  # plugins, like entry points: their import registers adapters
        importlib.import_module(provider)
    return dict(_REGISTRY)


def adapter_for(model: nn.Module) -> Adapter:
    """The model's adapter: attached, its `adapter()` method, registered, or an empty one.

    Without an adapter, algorithms still work on the whole model (no per-modality budgets).

    Example:
        >>> adapter_for(nn.Linear(2, 2)).towers
        {}
    """
    attached = getattr(model, _ATTACHED, None)
    if attached is not None:
        return attached
    make = getattr(model, "adapter", None)
    if callable(make):
        return make()
    registry = registered_adapters()
    for key in (type(model).__name__, getattr(getattr(model, "config", None), "model_type", None)):
        if key in registry:
            return registry[key](model)
    return Adapter()


def describe_missing(model: nn.Module) -> str:
    """How to give a model without an adapter one (for error messages)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = sorted(registered_adapters())
    kind = f"{type(model).__name__}" + (f" (model_type {model_type!r})" if model_type else "")
    return (
        f"no adapter describes {kind}; known: {', '.join(known)}. Describe its towers with "
        "mmcompress.attach_adapter(model, Adapter(towers={'image': ('vision',), 'text': ('text',)})) "
        "or a YAML file (towers: {image: [vision], text: [text]}), or register one with "
        "@mmcompress.register_adapter('ClassName')"
    )


def attach_adapter(model: nn.Module, adapter: Adapter | str | Path | dict) -> Adapter:
    """Attach an adapter (an Adapter, a dict or a YAML file) to a model instance; checked first.

    Every tower prefix, layer stack and attention class must exist in the model.

    Example:
        >>> attach_adapter(model, {"towers": {"image": ["backbone"], "fusion": ["head"]}})
    """
    if isinstance(adapter, (str, Path)):
        adapter = load_adapter(adapter)
    elif isinstance(adapter, dict):
        adapter = adapter_from_dict(adapter)
    problems = check_adapter(model, adapter)
    if problems:
        raise ConfigError("the adapter does not fit the model: " + "; ".join(problems))
    object.__setattr__(model, _ATTACHED, adapter)
    return adapter


def adapter_from_dict(data: dict) -> Adapter:
    """An Adapter from plain data: {towers: {modality: [prefix...]}, layers: {...}, attention: [...]}.

    Example:
        >>> adapter_from_dict({"towers": {"text": ["encoder"]}}).towers
        {'text': ('encoder',)}
    """
    unknown = set(data) - {"towers", "layers", "attention"}
    if unknown:
        raise ConfigError(f"adapter has unknown keys {sorted(unknown)}; valid: towers, layers, attention")
    towers = data.get("towers") or {}
    if not isinstance(towers, dict) or not all(isinstance(v, (list, tuple)) for v in towers.values()):
        raise ConfigError("adapter 'towers' must map a modality to a list of module-name prefixes")
    specs = []
    for item in data.get("attention") or []:
        item = dict(item)
        try:
            item["class_name"] = item.pop("class")
            item["head_counts"] = tuple(item.pop("heads", ()))
            item["widths"] = tuple(item.get("widths", ()))
            specs.append(AttentionSpec(**item))
        except (KeyError, TypeError) as err:
            raise ConfigError(
                f"adapter attention entry {item} is invalid ({err}); give class, q, k, v, o, head_dim, heads"
            ) from None
    return Adapter(
        towers={m: tuple(p) for m, p in towers.items()}, layers=dict(data.get("layers") or {}), attention=tuple(specs)
    )


def load_adapter(path: str | Path) -> Adapter:
    """Read an adapter from a YAML file.

    Example:
        >>> load_adapter("my_model.adapter.yaml").towers["image"]
        ('backbone',)
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"adapter file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"adapter file is not valid YAML: {yaml_error_line(err, str(path))}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"adapter file {str(path)!r} must hold a mapping with 'towers'")
    return adapter_from_dict(data)


def check_adapter(model: nn.Module, adapter: Adapter) -> list[str]:
    """Problems of `adapter` on `model`: tower prefixes, layer stacks or attention modules that do not exist.

    Example:
        >>> check_adapter(model, adapter_for(model))
        []
    """
    modules = dict(model.named_modules())
    params = {n for n, _ in model.named_parameters()}
    problems = []
    for modality, prefixes in adapter.towers.items():
        for prefix in prefixes:
            if prefix and prefix not in modules and prefix not in params:
                problems.append(f"tower {modality!r}: no module or parameter {prefix!r}")
    for modality, path in adapter.layers.items():
        if not isinstance(modules.get(path), nn.ModuleList):
            problems.append(f"layers of {modality!r}: {path!r} is not a ModuleList of the model")
    classes = {type(m).__name__ for m in modules.values()}
    for spec in adapter.attention:
        if spec.class_name not in classes:
            problems.append(f"attention class {spec.class_name!r} does not occur in the model")
    return problems


def matching(pattern: str, names: list[str]) -> list[str]:
    """Names fully matching a regex (adapters use it to list per-layer modules)."""
    return [n for n in names if re.fullmatch(pattern, n)]


def require_matches(chosen: list, mapping: Mapping[str, Any], model: nn.Module) -> list:
    """Raise ConfigError when a target mapping selected no module at all (never a silent no-op).

    Example:
        >>> chosen = require_matches(list(resolve_targets(...)), mapping, model)
    """
    if not chosen and any(v is not None for v in mapping.values()):
        if any(k.startswith("modality:") for k in mapping) and not adapter_for(model).towers:
            raise ConfigError(f"targets {list(mapping)} name modalities, but {describe_missing(model)}")
        if any(hasattr(m, "qweight") for m in model.modules()):  # quantized layers hold integer codes
            raise ConfigError(
                f"targets {list(mapping)} matched no supported module of {type(model).__name__}, which is "
                "already quantized (its layers hold integer codes): prune / factorize the float model, quantize last"
            )
        raise ConfigError(
            f"targets {list(mapping)} matched no supported module of {type(model).__name__}; "
            "check module names, regexes and modality tags (a model without an adapter has no modalities)"
        )
    return chosen
