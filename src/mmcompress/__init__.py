"""mmcompress: compress multimodal PyTorch models (quantize, prune, distill, export) and measure them.

Public names load their module on first use (PEP 562), so `import mmcompress` costs almost nothing
beyond torch; `mmcompress.quantize` imports the quantization code the first time it is touched.

Example:
    >>> import mmcompress
    >>> model = mmcompress.load_model("fashion-clip")
    >>> rec = mmcompress.quantize(model, mmcompress.QuantConfig(weight_bits=8))
    >>> mmcompress.measure(model).compression
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {  # name -> module that defines it
    "Adapter": "mmcompress.models.adapter",
    "attach_adapter": "mmcompress.models.adapter",
    "load_adapter": "mmcompress.models.adapter",
    "register_adapter": "mmcompress.models.adapter",
    "auto_compress": "mmcompress.auto.api",
    "ClassificationTask": "mmcompress.train.tasks",
    "Task": "mmcompress.train.tasks",
    "AgreementTask": "mmcompress.train.reference_tasks",
    "EvaluationTask": "mmcompress.train.reference_tasks",
    "TrainConfig": "mmcompress.train.config",
    "fit": "mmcompress.train.loop",
    "DistillConfig": "mmcompress.distill.config",
    "distill": "mmcompress.distill.api",
    "LowRankConfig": "mmcompress.graph.lowrank",
    "factorize": "mmcompress.graph.lowrank",
    "ShareConfig": "mmcompress.graph.sharing",
    "fuse_shared_weights": "mmcompress.graph.sharing",
    "share_weights": "mmcompress.graph.sharing",
    "load_deep": "mmcompress.graph.deep_file",
    "save_deep": "mmcompress.graph.deep_file",
    "export_onnx": "mmcompress.graph.export",
    "fold_batchnorm": "mmcompress.graph.folding",
    "load_compact": "mmcompress.graph.storage",
    "save_compact": "mmcompress.graph.storage",
    "load_quantized": "mmcompress.graph.quant_files",
    "save_quantized": "mmcompress.graph.quant_files",
    "Measurement": "mmcompress.evaluate.measure",
    "measure": "mmcompress.evaluate.measure",
    "bench": "mmcompress.evaluate.bench",
    "PruneConfig": "mmcompress.prune.api",
    "prune": "mmcompress.prune.api",
    "gradual_prune": "mmcompress.prune.schedule",
    "StructuredConfig": "mmcompress.prune.structured",
    "prune_structured": "mmcompress.prune.structured",
    "QuantConfig": "mmcompress.quant.config",
    "quantize": "mmcompress.quant.api",
    "TuneConfig": "mmcompress.quant.tune",
    "tune_quantized": "mmcompress.quant.tune",
    "list_datasets": "mmcompress.data.registry",
    "load_dataset": "mmcompress.data.registry",
    "list_models": "mmcompress.models.zoo",
    "load_model": "mmcompress.models.zoo",
    "compress": "mmcompress.recipe.runner",
    "load_run_folder": "mmcompress.recipe.specs",
    "Recipe": "mmcompress.recipe.schema",
    "load_recipe": "mmcompress.recipe.schema",
}
__all__ = sorted(_PUBLIC)
# subpackages reachable as attributes (`mmcompress.graph.export`); `prune` and `distill` name the verbs
_SUBPACKAGES = {"audio", "auto", "core", "data", "evaluate", "graph", "models", "quant", "recipe", "report", "train"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mmcompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


class _Package(types.ModuleType):
    """`mmcompress.prune` and `mmcompress.distill` are functions and subpackages: importing the
    subpackage must not rebind the public function (the subpackage stays in sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
