"""Built-in real datasets: Fashion-MNIST (+ captions), scikit-learn digits, spoken digits, photos
and real speech (`mmcompress.data.registry.load_dataset`)."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
