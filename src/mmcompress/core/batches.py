"""Batch conventions: tensor -> model(x), tuple -> model(*x), dict -> model(**x)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmcompress.errors import DataError


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without tensors).

    Example:
        >>> model_device(nn.Linear(2, 2))
        device(type='cpu')
    """
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@dataclass(frozen=True)
class ModelCall:
    """What latency times in place of one forward pass on a batch: `fn(model)`, e.g. transcribing
    one clip with greedy decoding, where a forward pass is a single decoder step. At most
    `repeats` timed calls after `warmup` (a call can take seconds).

    Example:
        >>> latency_ms(whisper, ModelCall(lambda m: transcribe(m, clips[:1]), "transcribe 1 clip"))
    """

    fn: Callable[[nn.Module], Any]
    what: str
    repeats: int = 5
    warmup: int = 1


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run `model` on one batch of inputs following the batch convention; inputs move to the
    model's device first (so every verb calibrates and evaluates a model where it lives, CPU or GPU).

    Example:
        >>> call_model(model, {"image": x, "input_ids": ids, "attention_mask": mask})
    """
    device = model_device(model)
    if device.type != "cpu":
        inputs = move_to(inputs, device)
    args, kwargs = ((), inputs) if isinstance(inputs, dict) else (tuple(inputs), {})
    if not isinstance(inputs, (dict, tuple, list)):
        args = (inputs,)
    try:
        return model(*args, **kwargs)
    except TypeError as err:
        problem = _binding_problem(model, args, kwargs)
        if problem is None:  # the batch fits the signature: the error is the model's own
            raise
        hint = (
            "a tuple/list batch is the model's positional inputs: pass inputs only, not (inputs, labels) pairs"
            if isinstance(inputs, (tuple, list))
            else "the dataset's inputs do not fit this model: pick data made for it (or an adapter that maps them)"
        )
        raise DataError(
            f"{type(model).__name__}.forward cannot take this batch ({_describe(inputs)}): {problem}; {hint}"
        ) from err


def _binding_problem(model: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """Why `model.forward` cannot be called with these arguments (None: it can, or it has no signature)."""
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as err:
        return str(err)
    except ValueError:
        return None
    return None


def _describe(inputs: Any) -> str:
    """A short description of a batch: its structure, shapes and keys."""
    if isinstance(inputs, torch.Tensor):
        return f"one tensor {tuple(inputs.shape)}"
    if isinstance(inputs, dict):
        return "keys " + ", ".join(map(str, inputs))
    if isinstance(inputs, (tuple, list)):
        return f"{len(inputs)} positional inputs"
    return type(inputs).__name__


def prediction(output: Any) -> Any:
    """A model's prediction: `.logits` of a Hugging Face ModelOutput, else the output itself.

    Example:
        >>> prediction(vit(pixel_values=x)).shape   # (B, classes)
    """
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else output


def tensors_in(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(path, tensor)` for every tensor inside nested dicts/tuples/lists."""
    if isinstance(obj, torch.Tensor):
        yield "", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            for sub, t in tensors_in(value):
                yield f"{key}{'.' + sub if sub else ''}", t
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            for sub, t in tensors_in(value):
                yield f"[{i}]{'.' + sub if sub else ''}", t


def check_finite(inputs: Any, where: str = "batch") -> None:
    """Raise DataError naming the first input that holds NaN or Inf."""
    for path, t in tensors_in(inputs):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DataError(f"{where} input {path or 'tensor'} contains NaN or Inf; clean the data first")


def move_to(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor in a nested batch to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def first_batch(batches: Iterable[Any], where: str = "data") -> Any:
    """Return the first batch, or raise DataError when the iterable is empty."""
    for batch in batches:
        return batch
    raise DataError(f"{where} is empty; give at least one batch")


def batch_size_of(inputs: Any) -> int:
    """Leading dimension of the first tensor in a batch."""
    for _, t in tensors_in(inputs):
        return int(t.shape[0])
    raise DataError("batch holds no tensor")


def check_finite_weights(modules: Any, verb: str) -> None:
    """Raise DataError naming the first layer whose parameters hold NaN or Inf (`modules`: a model
    or (name, module) pairs); `verb` says what cannot proceed.

    Example:
        >>> check_finite_weights(model, "export")
    """
    pairs = modules.named_modules() if isinstance(modules, torch.nn.Module) else modules
    for name, module in pairs:
        for pname, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and not torch.isfinite(param).all():
                where = f"{name}.{pname}" if name else pname
                raise DataError(f"parameter {where!r} has NaN or Inf values; the model cannot {verb}")


def check_model_runs(model: nn.Module, inputs: Any, data_label: str) -> None:
    """Run `model` once on a small batch of the data it was given, in eval mode and without gradients
    (modes restored), so that data made for another model fails here in one line naming both, not
    deep inside the model's forward at the first stage.

    Example:
        >>> check_model_runs(whisper, spoken_digits_batch, "spoken-digits")
        DataError: WhisperForConditionalGeneration does not run on a batch of spoken-digits ...
    """
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, inputs)
    except DataError:
        raise
    except Exception as err:  # the model's own error on foreign data: any type
        raise DataError(
            f"{type(model).__name__} does not run on a batch of {data_label} ({_describe(inputs)}): "
            f"{type(err).__name__}: {str(err)[:200]}; give data whose items are this model's inputs"
        ) from None
    finally:
        for module, training in modes.items():
            module.train(training)
