"""The tasks of the built-in models: caption classification (fusion models) and CLIP-style
contrastive training with zero-shot evaluation (fashion-clip), on the built-in caption data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.data.captions import TEMPLATES, ZERO_SHOT_PHRASES
from mmcompress.data.fashion_mnist import to_float_image
from mmcompress.evaluate.metrics import accuracy, precision_at_k, zero_shot_accuracy
from mmcompress.train.tasks import ClassificationTask, Task, predict_all


class CaptionClassificationTask(ClassificationTask):
    """Image + caption -> class, for the fusion models; also reports the ambiguous-caption split.

    Example:
        >>> task = CaptionClassificationTask(model, test)
        >>> task.evaluate(model, test)  # accuracy, accuracy_ambiguous, accuracy_specific
    """

    def __init__(self, model: nn.Module, dataset: Any) -> None:
        self.tokens = model.tokenize(dataset.captions)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        cid = dataset.caption_ids[index]
        inputs = {"image": to_float_image(dataset.images[index])}
        inputs.update({k: v[cid] for k, v in self.tokens.items()})
        return inputs, dataset.labels[index]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        logits, labels = predict_all(self, model, dataset, batch_size)
        amb = dataset.sample_ambiguous()
        out = {"accuracy": accuracy(logits, labels)}
        if amb.any():
            out["accuracy_ambiguous"] = accuracy(logits[amb], labels[amb])
        if (~amb).any():
            out["accuracy_specific"] = accuracy(logits[~amb], labels[~amb])
        return out


class ContrastiveTask(Task):
    """CLIP training on image-caption pairs; zero-shot accuracy and text->image precision@10.

    Several images share one caption text, so a text's positives are all images in the batch
    with the same caption (multi-positive InfoNCE), not only its own pair.

    Example:
        >>> task = ContrastiveTask(clip, test)
        >>> task.evaluate(clip, test)  # zero_shot_accuracy, retrieval_p@10
    """

    primary_metric = "zero_shot_accuracy"

    def __init__(self, model: nn.Module, dataset: Any) -> None:
        self.tokens = model.tokenize(dataset.captions)
        self.text_cache: torch.Tensor | None = None

    def prepare(self, model: nn.Module) -> None:
        frozen = not any(p.requires_grad for p in model.text_tower.parameters())
        self.text_cache = None
        if frozen:  # frozen text tower: encode each distinct caption once
            model.text_tower.eval()
            with torch.no_grad():
                self.text_cache = model.text_tower(**self.tokens)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        cid = dataset.caption_ids[index]
        inputs = {"image": to_float_image(dataset.images[index])}
        inputs.update({k: v[cid] for k, v in self.tokens.items()})
        return inputs, cid

    def embeddings(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, text) embeddings of a batch: a frozen text tower reads the caption cache, a
        trained one encodes each distinct caption of the batch once."""
        img = model.encode_image(inputs["image"])
        if self.text_cache is not None:
            return img, model.project_text(self.text_cache[targets])
        unique, inverse = torch.unique(targets, return_inverse=True)
        first = torch.zeros_like(unique).scatter_(0, inverse, torch.arange(len(targets), device=targets.device))
        mask = inputs["attention_mask"][first]
        width = int(mask.sum(1).max())  # captions of this batch need no more tokens than this
        txt = model.encode_text(inputs["input_ids"][first, :width], mask[:, :width])
        return img, txt[inverse]

    def frozen_embedder(self, teacher: nn.Module) -> Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) -> a frozen teacher's (image, text) embeddings, each distinct caption's
        text features computed once (distillation calls it for every batch)."""
        with torch.no_grad():
            text = teacher.text_tower(**self.tokens)
        return lambda inputs, targets: (teacher.encode_image(inputs["image"]), teacher.project_text(text[targets]))

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        img, txt = self.embeddings(model, inputs, targets)
        return self.loss_from_embeddings(model, img, txt, targets)

    def loss_from_embeddings(
        self, model: nn.Module, img: torch.Tensor, txt: torch.Tensor, targets: Any
    ) -> torch.Tensor:
        """Multi-positive InfoNCE of (B, D) unit-norm image and text embeddings of one batch."""
        logits = model.logit_scale.exp().clamp(max=100) * img.float() @ txt.float().T  # (B, B)
        same = (targets[:, None] == targets[None, :]).float()
        soft = same / same.sum(1, keepdim=True)
        return 0.5 * (_soft_ce(logits, soft) + _soft_ce(logits.T, soft))

    @torch.no_grad()
    def evaluate(self, model: Any, dataset: Any, batch_size: int = 512) -> dict[str, float]:
        """Zero-shot accuracy and text->image precision@10, using only `model(**inputs)`.

        Only the forward pass is used (images paired with a blank text, texts with a blank
        image), so the same code evaluates an ONNX Runtime artifact.
        """
        model.eval()
        images = torch.cat(
            [
                image_embeddings(model, to_float_image(dataset.images[s : s + batch_size]))
                for s in range(0, len(dataset), batch_size)
            ]
        )
        class_embeds = class_prompt_embeddings(model)
        used = torch.unique(dataset.caption_ids)
        queries = text_embeddings(model, [dataset.captions[i] for i in used.tolist()])
        relevant = dataset.caption_classes[used][:, dataset.labels]  # (Q, N)
        return {
            "zero_shot_accuracy": zero_shot_accuracy(images, class_embeds, dataset.labels),
            "retrieval_p@10": precision_at_k(queries @ images.T, relevant, k=10),
        }


def image_embeddings(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Image embeddings (N, D) from a dual encoder's forward, paired with a blank caption."""
    blank = model.tokenize([""] * images.shape[0])
    return model(image=images, **blank)[0].float()


def text_embeddings(model: Any, texts: list[str]) -> torch.Tensor:
    """Text embeddings (N, D) from a dual encoder's forward, paired with a blank image."""
    return model(image=torch.zeros(len(texts), 1, 28, 28), **model.tokenize(texts))[1].float()


def class_prompt_embeddings(model: Any) -> torch.Tensor:
    """One embedding per class: the mean over caption templates of its prompt, re-normalised. (C, D)"""
    texts = [t.format(p) for p in ZERO_SHOT_PHRASES for t in TEMPLATES]
    emb = text_embeddings(model, texts).view(len(ZERO_SHOT_PHRASES), len(TEMPLATES), -1).mean(1)
    return F.normalize(emb, dim=-1)


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
