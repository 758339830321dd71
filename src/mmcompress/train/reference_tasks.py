"""Tasks for models without labels or with their own evaluation: agreement with the float model
(top-1 and KL, or output cosine), and a user's evaluation function (WER, retrieval, ...).

Example:
    >>> task = AgreementTask(copy.deepcopy(model).eval())      # the float model is the reference
    >>> task.evaluate(quantized, unlabeled_inputs)["agreement"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.core.batches import call_model, prediction, tensors_in
from mmcompress.errors import ConfigError
from mmcompress.evaluate.metrics import mean_kl, top1_agreement
from mmcompress.train.tasks import ClassificationTask, Task

LOWER_IS_BETTER = ("wer", "cer", "error", "loss", "perplexity", "kl", "distance")


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output is compared on: logits, else its first tensor (e.g. last_hidden_state)."""
    pred = prediction(output)
    if isinstance(pred, torch.Tensor):
        return pred
    for _, tensor in tensors_in(pred if not hasattr(pred, "to_tuple") else pred.to_tuple()):
        return tensor
    raise ConfigError(f"the model's output ({type(output).__name__}) holds no tensor to compare")


class AgreementTask(Task):
    """Compare a model with a frozen reference (the float model) on unlabeled inputs.

    `metric="agreement"`: top-1 agreement of the last dimension (classifiers, token logits), with
    mean KL; the loss is KL(reference || model), so fine-tuning and Taylor importance need no labels.
    `metric="cosine"`: mean cosine of the outputs (embedding models); the loss is 1 - cosine.
    Dataset items are model inputs (a tensor, tuple or dict); `(inputs, label)` pairs and the
    built-in labelled sets work too (labels are ignored).

    Example:
        >>> task = AgreementTask(float_model, metric="cosine")
        >>> task.evaluate(quantized, sentences)["cosine"]
    """

    def __init__(self, reference: nn.Module, metric: str = "agreement") -> None:
        if metric not in ("agreement", "cosine"):
            raise ConfigError(f"AgreementTask metric must be 'agreement' or 'cosine', not {metric!r}")
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.primary_metric = metric
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
        if hasattr(base, "labels"):  # a built-in layout (a Subset of unlabelled tensors is not one)
            try:
                return ClassificationTask().batch(dataset, index)[0], None
            except (TypeError, AttributeError, KeyError):
                pass
        items = [dataset[int(i)] for i in index]
        if all(is_labelled(item) for item in items):
            items = [item[0] for item in items]
        return torch.utils.data.default_collate(items), None

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        with torch.no_grad():
            target = output_tensor(call_model(self.reference, inputs)).float()
        out = output_tensor(call_model(model, inputs)).float()
        target = target.to(out.device)
        if self.primary_metric == "cosine":
            return 1 - F.cosine_similarity(out.flatten(1), target.flatten(1), dim=-1).mean()
        log_p, log_q = target.log_softmax(-1), out.log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 256) -> dict[str, float]:
        model.eval()
        key = (id(dataset), len(dataset), batch_size)
        outs, refs = [], []
        for start in range(0, len(dataset), batch_size):
            inputs, _ = self.batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))))
            outs.append(output_tensor(call_model(model, inputs)).float().cpu())
            if key not in self._cache:
                refs.append(output_tensor(call_model(self.reference, inputs)).float().cpu())
        if key not in self._cache:
            self._cache[key] = torch.cat(refs)
        out, ref = torch.cat(outs), self._cache[key]
        cosine = float(F.cosine_similarity(out.flatten(1), ref.flatten(1), dim=-1).mean())
        if self.primary_metric == "cosine":
            return {"cosine": cosine}
        flat_ref, flat_out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
        return {"agreement": top1_agreement(flat_ref, flat_out), "kl": mean_kl(flat_ref, flat_out), "cosine": cosine}


def is_labelled(item: Any) -> bool:
    """Whether a dataset item is an (inputs, class label) pair: a label is an int or a 0-d tensor."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return False
    label = item[1]
    return isinstance(label, int) or (isinstance(label, torch.Tensor) and label.dim() == 0)


def reference_task(metric: str, reference: nn.Module) -> AgreementTask:
    """`agreement` or `cosine` against a frozen reference model."""
    return AgreementTask(reference, metric)


class EvaluationTask(Task):
    """A user's evaluation function as a task: `evaluate(model) -> {metric: value}` (or a number);
    batches and the loss come from `base` (by default agreement with the float model).

    The first metric is the primary one; it is lower-is-better when the function says so
    (`fn.higher_is_better = False`) or its name reads so (wer, error, loss, perplexity, ...).

    Example:
        >>> def wer(model): return {"wer": word_error_rate(refs, transcribe(model, clips))}
        >>> task = EvaluationTask(wer, AgreementTask(float_model))
    """

    def __init__(self, evaluate: Callable[[nn.Module], Any], base: Task) -> None:
        self.fn, self.base = evaluate, base
        self.primary_metric = getattr(evaluate, "primary_metric", None) or "metric"
        self.higher_is_better = getattr(evaluate, "higher_is_better", None)

    def batch(self, dataset: Any, index: torch.Tensor) -> tuple[Any, Any]:
        return self.base.batch(dataset, index)

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        return self.base.loss(model, inputs, targets)

    def evaluate(self, model: nn.Module, dataset: Any = None, batch_size: int = 256) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            value = self.fn(model)
        metrics = {"metric": value} if isinstance(value, (int, float)) else dict(value or {})
        if not metrics or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise ConfigError(f"the evaluation function must return a number or {{name: number}}; got {value!r}")
        self.learn_name(next(iter(metrics)) if "metric" not in metrics else "metric")
        return {k: float(v) for k, v in metrics.items()}

    def learn_name(self, name: str) -> None:
        """Take the primary metric's name (and its direction) from the function's first result, or
        from a resumed run's saved evaluation, where the function did not run in this process."""
        if self.primary_metric == "metric":
            self.primary_metric = name
        if self.higher_is_better is None:
            self.higher_is_better = not any(word in self.primary_metric.lower() for word in LOWER_IS_BETTER)
