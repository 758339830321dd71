"""Adapters for Hugging Face families (one file each), loading by "hf:" / "st:" names, tiny configs.

Importing this package registers the adapters (`mmcompress.models.adapter.register_adapter`).
"""

from mmcompress.models.hf import bert, clip, llava, siglip, vit, wav2vec2, whisper  # noqa: F401
