"""Adapters that describe modality towers (`adapter.py`, `attention_specs.py`: library floor),
Hugging Face families and packaged pretrained models, and the built-in zoo (`zoo.py`: lab floor).
Nothing is imported here, so the library's adapters never load the zoo."""

from mmcompress.core.lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
