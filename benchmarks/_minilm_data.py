"""Fixed sentence sets for the MiniLM benchmark (deterministic, offline).

Evaluation: the 304 distinct fashion captions plus 200 varied English sentences taken from the
Python documentation that ships with the interpreter (`pydoc_data`), so the set mixes short
templated captions with real technical prose of 6 to 40 words.
"""

from __future__ import annotations

import numpy as np
import torch

from mmcompress.data.captions import caption_vocabulary
from mmcompress.data.prose import prose_sentences
from mmcompress.models.minilm import load_minilm_tokenizer


def short_sentences() -> list[str]:
    """The 304 distinct captions."""
    return [text for text, _, _ in caption_vocabulary()]


def varied_sentences(n: int = 200) -> list[str]:
    """`n` prose sentences from the bundled Python docs, chosen by a stable hash (same on every run)."""
    return list(prose_sentences(n))


def evaluation_sentences() -> list[str]:
    return short_sentences() + varied_sentences()


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


def training_sentences(n_chains: int = 2400, seed: int = 5) -> list[str]:
    """Distillation sentences disjoint from the evaluation: chains of 2-4 captions joined by a
    connective, and the Python-docs prose that evaluation and calibration do not use."""
    rng = np.random.default_rng(seed)
    captions = short_sentences()
    joins = [", and ", "; also ", " next to ", ", then "]
    chains = [rng.choice(joins).join(rng.choice(captions, rng.integers(2, 5))) for _ in range(n_chains)]
    prose = varied_sentences(2000)[456:]  # not used by evaluation (first 200) or calibration (200-455)
    return chains + prose


def calibration_batches() -> list[dict]:
    """4 x 64 sentences of up to 128 tokens, disjoint from the evaluation and speed inputs: two
    batches of long caption chains and two of prose sentences that the evaluation does not use."""
    prose = varied_sentences(456)[200:]
    captions = [tokenize(long_sentences(64, seed=s), 128) for s in (10, 11)]
    return captions + [tokenize(prose[i : i + 64], 128) for i in range(0, 128, 64)]


def embed(run, sentences: list[str], batch: int = 32) -> torch.Tensor:
    """Embeddings in batches of `batch` sentences (padded per batch, as a service would): (N, 384)."""
    out = []
    for start in range(0, len(sentences), batch):
        result = run(tokenize(sentences[start : start + batch]))
        out.append(torch.as_tensor(result[0] if isinstance(result, list) else result).detach().float())
    return torch.cat(out)
