"""mmcompress: compress multimodal PyTorch models (quantize, prune, distill, export) and measure them.

Example:
    >>> import mmcompress
    >>> model = mmcompress.load_model("fashion-clip")
    >>> rec = mmcompress.quantize(model, mmcompress.QuantConfig(weight_bits=8))
    >>> mmcompress.measure(model).compression
"""

__version__ = "0.1.0"

from mmcompress.auto.api import auto_compress
from mmcompress.data.registry import list_datasets, load_dataset
from mmcompress.distill import DistillConfig, distill
from mmcompress.evaluate.bench import bench
from mmcompress.evaluate.measure import Measurement, measure
from mmcompress.graph.deep_file import load_deep, save_deep
from mmcompress.graph.export import export_onnx
from mmcompress.graph.folding import fold_batchnorm
from mmcompress.graph.lowrank import LowRankConfig, factorize
from mmcompress.graph.sharing import ShareConfig, fuse_shared_weights, share_weights
from mmcompress.graph.storage import load_compact, save_compact
from mmcompress.models.adapter import Adapter, attach_adapter, load_adapter, register_adapter
from mmcompress.models.zoo import list_models, load_model
from mmcompress.prune.api import PruneConfig, prune
from mmcompress.prune.schedule import gradual_prune
from mmcompress.prune.structured import StructuredConfig, prune_structured
from mmcompress.quant.api import QuantConfig, quantize
from mmcompress.quant.saving import load_quantized, save_quantized
from mmcompress.recipe.runner import compress
from mmcompress.recipe.schema import Recipe, load_recipe
from mmcompress.train.config import TrainConfig
from mmcompress.train.loop import fit
from mmcompress.train.tasks import ClassificationTask, Task

__all__ = [
    "Adapter",
    "attach_adapter",
    "auto_compress",
    "load_adapter",
    "register_adapter",
    "ClassificationTask",
    "DistillConfig",
    "LowRankConfig",
    "Measurement",
    "PruneConfig",
    "QuantConfig",
    "Recipe",
    "ShareConfig",
    "StructuredConfig",
    "Task",
    "TrainConfig",
    "bench",
    "compress",
    "distill",
    "export_onnx",
    "factorize",
    "fit",
    "fold_batchnorm",
    "fuse_shared_weights",
    "gradual_prune",
    "list_datasets",
    "list_models",
    "load_compact",
    "load_deep",
    "load_dataset",
    "load_model",
    "load_quantized",
    "load_recipe",
    "measure",
    "prune",
    "prune_structured",
    "quantize",
    "save_compact",
    "save_deep",
    "share_weights",
    "save_quantized",
]
