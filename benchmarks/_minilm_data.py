"""Fixed sentence sets for the MiniLM benchmark (built from the caption corpus, deterministic)."""

from __future__ import annotations

import numpy as np

from mmcompress.data.captions import caption_vocabulary
from mmcompress.models.minilm import load_minilm_tokenizer


def short_sentences() -> list[str]:
    """The 304 distinct captions: the evaluation set for embedding cosine similarity."""
    return [text for text, _, _ in caption_vocabulary()]


def long_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` long sentences, each joining 12 random captions (calibration and speed inputs)."""
    rng = np.random.default_rng(seed)
    captions = short_sentences()
    return [", then ".join(rng.choice(captions, 12)) for _ in range(n)]


def tokenize(texts: list[str], tokens: int | None = None) -> dict:
    tok = load_minilm_tokenizer()
    if tokens is None:
        enc = tok(texts, padding=True, return_tensors="pt")
    else:
        enc = tok(texts, padding="max_length", truncation=True, max_length=tokens, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def long_batch(batch: int, tokens: int) -> dict:
    return tokenize(long_sentences(batch, seed=1), tokens)
