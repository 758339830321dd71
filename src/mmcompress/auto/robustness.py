"""Robustness: the task metric on test data corrupted per modality (image noise and blur, text
typos and word dropout, audio noise), deterministic under a seed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mmcompress.data.real_speech import SpeechClips

CORRUPTIONS = {
    "image_noise": ("image", "Gaussian pixel noise, sigma 0.1 of the range"),
    "image_blur": ("image", "Gaussian blur, sigma 1 pixel"),
    "text_typos": ("text", "a swap of two adjacent letters in 20% of the words"),
    "text_dropout": ("text", "20% of the words removed"),
    "audio_noise": ("audio", "white noise at 10 dB SNR"),
}


def corrupt(dataset: Any, kind: str, seed: int = 0) -> Any | None:
    """A corrupted copy of a test set laid out as the built-in ones are (a dataclass with `images`,
    `captions` or `audio`; recordings with transcripts, `real-speech`; a `torch.utils.data.Subset`
    of one); None when it has no such modality
    or another layout (`why_not_corrupted` says which).

    Example:
        >>> noisy = corrupt(load_dataset("fashion-captions", "test"), "image_noise", seed=0)
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")
    if isinstance(dataset, torch.utils.data.Subset):
        inner = corrupt(dataset.dataset, kind, seed)
        return None if inner is None else torch.utils.data.Subset(inner, dataset.indices)
    if why_not_corrupted(dataset, kind) is not None:
        return None
    g = torch.Generator().manual_seed(seed)
    if isinstance(dataset, SpeechClips):  # recordings with transcripts: noise on each waveform
        noisy = [dataclasses.replace(u, audio=_with_noise(u.audio.float(), g)) for u in dataset]
        return SpeechClips(noisy, dataset.name)
    if kind.startswith("image"):
        return dataclasses.replace(dataset, images=_corrupt_images(dataset.images, kind, g))
    if kind.startswith("text"):
        edit = _typo if kind == "text_typos" else _drop
        return dataclasses.replace(dataset, captions=[edit(c, g) for c in dataset.captions])
    noisy = _with_noise(dataset.audio.float(), g)
    if dataset.audio.dtype == torch.int16:
        noisy = noisy.clamp(-32767, 32767).round()
    return dataclasses.replace(dataset, audio=noisy.to(dataset.audio.dtype))


FIELDS = {"image": "images", "text": "captions", "audio": "audio"}
SNR_DB = 10.0


def _with_noise(audio: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """White noise at `SNR_DB` of each waveform's (last dimension's) own power."""
    power = audio.pow(2).mean(-1, keepdim=True)
    return audio + torch.randn(audio.shape, generator=g) * (power / 10 ** (SNR_DB / 10)).sqrt()


def why_not_corrupted(dataset: Any, kind: str) -> str | None:
    """Why `corrupt(dataset, kind)` gives None (no such modality, another layout), or None when it applies.

    Example:
        >>> why_not_corrupted(my_dataset, "image_noise")
        'the test set is not a dataclass with an `images` field (MyData)'
    """
    if isinstance(dataset, torch.utils.data.Subset):
        return why_not_corrupted(dataset.dataset, kind)
    if isinstance(dataset, SpeechClips):
        return None if kind == "audio_noise" else f"recordings hold no {CORRUPTIONS[kind][0]}"
    field = FIELDS[CORRUPTIONS[kind][0]]
    value = getattr(dataset, field, None) if dataclasses.is_dataclass(dataset) else None
    if value is None:
        return f"the test set is not a dataclass with an `{field}` field ({type(dataset).__name__})"
    if field == "captions":
        return (
            None if isinstance(value, list) and all(isinstance(c, str) for c in value) else "captions are not strings"
        )
    if not isinstance(value, torch.Tensor) or not (
        value.is_floating_point() or value.dtype in (torch.uint8, torch.int16)
    ):
        return f"`{field}` is not a float, uint8 or int16 tensor"
    if field == "images" and value.dim() < 2:
        return "`images` has fewer than 2 dimensions"
    return None


def _corrupt_images(images: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """Noise or blur in the images' own range: uint8 pixels 0..255, float ones from their min to max."""
    if images.dtype == torch.uint8:
        lo, hi = 0.0, 255.0
    else:
        lo, hi = float(images.min()), float(images.max())
    span = max(hi - lo, 1e-12)
    unit = (images.float() - lo) / span
    unit = unit + 0.1 * torch.randn(unit.shape, generator=g) if kind == "image_noise" else _blur(unit, sigma=1.0)
    out = unit.clamp(0, 1) * span + lo
    return out.round().to(torch.uint8) if images.dtype == torch.uint8 else out.to(images.dtype)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    flat = images.reshape(-1, 1, *images.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(images.shape)


def _typo(text: str, g: torch.Generator) -> str:
    words = text.split()
    for i, word in enumerate(words):
        if len(word) > 2 and torch.rand(1, generator=g).item() < 0.2:
            j = int(torch.randint(0, len(word) - 1, (1,), generator=g))
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return " ".join(words)


def _drop(text: str, g: torch.Generator) -> str:
    words = text.split()
    kept = [w for w in words if torch.rand(1, generator=g).item() >= 0.2]
    return " ".join(kept or words[:1])


def robustness(
    models: dict[str, Any], make_task: Callable[[Any], Any], test: Any, seed: int = 0, notes: list | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """corruption -> model label -> every metric of the task ("clean" first). Corruptions the test
    set has no modality (or layout) for, and corruptions the models fail on, are left out, with
    the reason appended to `notes`. (Text corruptions of fashion-captions change the caption
    queries, so they show in retrieval, not in zero-shot accuracy over class prompts.)

    Example:
        >>> table = robustness({"float": model, "int8": q}, lambda ds: task_for(model, ds), test)
        >>> table["image_noise"]["int8"]["zero_shot_accuracy"]
    """
    notes = [] if notes is None else notes
    out: dict[str, dict[str, dict[str, float]]] = {}
    skipped: dict[str, list[str]] = {}
    for kind in ("clean", *CORRUPTIONS):
        data = test if kind == "clean" else corrupt(test, kind, seed)
        if data is None:
            skipped.setdefault(why_not_corrupted(test, kind) or "not applicable", []).append(kind)
            continue
        try:
            task = make_task(data)
            out[kind] = {label: {k: float(v) for k, v in task.evaluate(m, data).items()} for label, m in models.items()}
        except Exception as err:  # a user's model or task may not take the corrupted copy: note it, go on
            if kind == "clean":
                raise
            notes.append(f"{kind}: the evaluation failed on the corrupted test set ({type(err).__name__}: {err})"[:300])
    notes.extend(f"{', '.join(kinds)}: not run ({why})" for why, kinds in skipped.items())
    return out


def robustness_rows(table: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """A table (header first): one row per corruption and metric, one column per model."""
    labels = list(next(iter(table.values())))
    rows = [["corruption", "metric", *labels]]
    for kind, by_model in table.items():
        for metric in by_model[labels[0]]:
            rows.append([kind, metric, *(f"{by_model[label][metric]:.4f}" for label in labels)])
    return rows
