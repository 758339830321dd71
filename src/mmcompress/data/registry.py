"""`load_dataset(name)`: the allow-listed built-in datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmcompress.data.captions import make_caption_dataset
from mmcompress.data.digits import load_digits
from mmcompress.data.fashion_mnist import load_fashion_mnist
from mmcompress.errors import DataError, unknown_name

CAPTION_SEEDS = {"train": 1, "test": 2}


def _fashion(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    return load_fashion_mnist(split, data_dir, download_dir)


def _captions(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    return make_caption_dataset(load_fashion_mnist(split, data_dir, download_dir), seed=CAPTION_SEEDS[split])


def _digits(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    return load_digits(split)


def _spoken(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    from mmcompress.data.spoken_digits import load_spoken_digits

    return load_spoken_digits(split)


def _photos(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    from mmcompress.data.photos import load_photo_crops

    return load_photo_crops(split)


def _speech(split: str, data_dir: Path | None, download_dir: Path | None) -> Any:
    from mmcompress.data.real_speech import load_real_speech_split

    return load_real_speech_split(split)


DATASETS: dict[str, tuple[Callable[..., Any], str]] = {
    "fashion-mnist": (_fashion, "Fashion-MNIST, 60,000 train / 10,000 test 28x28 grayscale images, 10 classes"),
    "fashion-captions": (_captions, "Fashion-MNIST images paired with varied, sometimes ambiguous captions"),
    "digits": (_digits, "scikit-learn's bundled 8x8 digits (1,437 train / 360 test), upsampled to 28x28"),
    "spoken-digits": (_spoken, "digit images paired with spoken digits synthesized by espeak-ng (unheard test voices)"),
    "photo-crops": (
        _photos,
        "ImageNet-normalised 224x224 crops of the bundled sample photos (512 train / 300 test), "
        "no labels: use --task agreement (for MobileNetV2 and other ImageNet models)",
    ),
    "real-speech": (
        _speech,
        "real English speech for speech recognizers (hf:whisper-tiny.en): 10 transcribed pocketsphinx "
        "recordings to test (word error rate), 4 other recordings + 96 espeak-ng sentences to calibrate",
    ),
}


def list_datasets() -> dict[str, str]:
    """Built-in dataset names and one-line descriptions.

    Example:
        >>> sorted(list_datasets())
        ['digits', 'fashion-captions', 'fashion-mnist']
    """
    return {name: desc for name, (_, desc) in DATASETS.items()}


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    download_dir: str | Path | None = "auto",
    limit: int | None = None,
) -> Any:
    """Load a built-in dataset split.

    Args:
        name: one of `list_datasets()`.
        split: "train" or "test".
        data_dir: a folder to search first for data files (e.g. from --data-dir / MMCOMPRESS_DATA).
        download_dir: where to download Fashion-MNIST if it is nowhere else; "auto" is
            `~/.cache/mmcompress/datasets/fashion-mnist`, None never downloads.
        limit: keep only the first `limit` samples.

    Example:
        >>> ds = load_dataset("fashion-captions", "test", limit=100)
        >>> image, caption_id, label = ds[0]
    """
    if name not in DATASETS:
        raise DataError(unknown_name("dataset", name, list(DATASETS)))
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; valid splits: train, test")
    loader, _ = DATASETS[name]
    if data_dir is not None and not Path(data_dir).is_dir():  # a folder the user names must exist
        raise DataError(f"data folder {data_dir} does not exist (from --data-dir or MMCOMPRESS_DATA)")
    if download_dir == "auto":
        download_dir = Path.home() / ".cache" / "mmcompress" / "datasets" / "fashion-mnist"
    ds = loader(split, Path(data_dir) if data_dir else None, Path(download_dir) if download_dir else None)
    return ds.subset(limit)
