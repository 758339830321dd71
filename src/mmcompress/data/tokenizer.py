"""A small word-level tokenizer for models that learn their own text embeddings."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Lower-cased word tokenizer with a fixed vocabulary built from a corpus.

    Example:
        >>> tok = WordTokenizer.from_corpus(["a photo of a coat"])
        >>> tok(["a coat"], max_length=4)["input_ids"].tolist()
        [[2, 3, 6, 0]]
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_corpus(cls, texts: Iterable[str]) -> WordTokenizer:
        words = sorted({w for t in texts for w in _WORD.findall(t.lower())})
        return cls([PAD, UNK, CLS, *words])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index[CLS]] + [self.index.get(w, unk) for w in _WORD.findall(text.lower())]

    def __call__(self, texts: Sequence[str], max_length: int = 16) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.int64)
        mask = torch.zeros(len(texts), max_length, dtype=torch.int64)
        for i, text in enumerate(texts):
            tokens = self.encode(text)[:max_length]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}
