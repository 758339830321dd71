"""Sentence-embedding task: batches of tokenized sentences, evaluated by cosine similarity to a
reference encoder (the float or teacher model). Used to distill and repair sentence encoders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import call_model
from mmcompress.errors import ConfigError, DataError
from mmcompress.train.tasks import Task


class Sentences(Sequence):
    """A dataset of sentences (no labels).

    Example:
        >>> len(Sentences(["a red coat", "a pair of sandals"]))
        2
    """

    def __init__(self, texts: Sequence[str]) -> None:
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if bad:
            raise DataError(f"sentences must be non-empty strings; got {bad[0]!r}")
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]


class EmbeddingTask(Task):
    """Batches are `{"input_ids", "attention_mask"}` padded to the longest sentence of the batch;
    metrics are the mean and minimum cosine similarity of the model's embeddings to `reference`'s.

    Args:
        tokenizer: a Hugging Face tokenizer (called on a list of strings).
        reference: the encoder to compare with (None: evaluation reports nothing).
        max_length: tokens per sentence at most.

    Example:
        >>> task = EmbeddingTask(load_minilm_tokenizer(), reference=MiniLMEncoder())
        >>> task.evaluate(pruned_encoder, Sentences(texts))   # {"cosine": ..., "cosine_min": ...}
    """

    primary_metric = "cosine"

    def __init__(self, tokenizer: Callable, reference: nn.Module | None = None, max_length: int = 128) -> None:
        self.tokenizer, self.reference, self.max_length = tokenizer, reference, max_length
        self._reference_cache: tuple[Any, torch.Tensor] | None = None  # (dataset, its reference embeddings)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        texts = [dataset[int(i)] for i in index]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, None

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """1 - cosine between the model's and the reference's embeddings: fine-tuning a compressed
        encoder distils it from the float model (sentences have no labels)."""
        if self.reference is None:
            raise ConfigError("sentence embeddings have no labels to train on; give the task a reference encoder")
        with torch.no_grad():
            target = _embedding(call_model(self.reference, inputs)).float()
        out = _embedding(call_model(model, inputs)).float()
        return 1 - F.cosine_similarity(out, target.to(out.device), dim=-1).mean()

    @torch.no_grad()
    def embed(self, model: nn.Module, dataset: Any, batch_size: int = 64) -> torch.Tensor:
        """Embeddings (N, D) of every sentence, in batches."""
        model.eval()
        out = []
        for start in range(0, len(dataset), batch_size):
            inputs, _ = self.batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))))
            out.append(_embedding(call_model(model, inputs)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 64) -> dict[str, float]:
        if self.reference is None:
            return {}
        if self._reference_cache is None or self._reference_cache[0] is not dataset:
            self._reference_cache = (dataset, self.embed(self.reference, dataset, batch_size))
        cos = F.cosine_similarity(self.embed(model, dataset, batch_size), self._reference_cache[1], dim=-1)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}


def _embedding(result: Any) -> torch.Tensor:
    """The sentence embedding of an encoder's output (the first element of a tuple or list)."""
    return result[0] if isinstance(result, (tuple, list)) else result
