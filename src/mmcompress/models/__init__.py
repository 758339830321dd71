"""Built-in models, fusion styles, and adapters that describe modality towers."""

from mmcompress.models.adapter import Adapter, adapter_for
from mmcompress.models.zoo import list_models, load_model

__all__ = ["Adapter", "adapter_for", "list_models", "load_model"]
