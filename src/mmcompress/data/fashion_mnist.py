"""Fashion-MNIST: found under a user path, the Debian package path, or downloaded."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcompress.core.io import atomic_write_bytes
from mmcompress.data.idx import read_idx
from mmcompress.errors import DataError

CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
HOW_TO_GET = (
    "install it with 'apt-get install dataset-fashion-mnist' (Debian, as root), "
    "or put the four *-ubyte.gz files in a folder given by --data-dir / MMCOMPRESS_DATA"
)


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Grayscale images (N, 28, 28) uint8 with integer labels; items are (float image, label).

    Example:
        >>> ds = load_fashion_mnist("test")
        >>> image, label = ds[0]; image.shape
        torch.Size([1, 28, 28])
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str = "fashion-mnist"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float_image(self.images[i : i + 1])[0], int(self.labels[i])

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """A batch of model inputs, (B, 1, 28, 28) float (classification tasks batch through it)."""
        return to_float_image(self.images[index])

    def subset(self, limit: int | None) -> ImageDataset:
        """First `limit` samples (all when None)."""
        if limit is None or limit >= len(self):
            return self
        return ImageDataset(self.images[:limit], self.labels[:limit], self.class_names, self.name)


def to_float_image(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float normalised to mean 0, std ~1."""
    return (((images.float() / 255.0) - 0.2860) / 0.3530).unsqueeze(1)


def _download(folder: Path, filename: str) -> None:
    try:
        with urllib.request.urlopen(OFFICIAL_URL + filename, timeout=15) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"Fashion-MNIST not found and the download failed ({err}); {HOW_TO_GET}") from None
    atomic_write_bytes(folder / filename, data)


def find_fashion_mnist(data_dir: str | Path | None = None, download_dir: Path | None = None) -> Path:
    """Folder holding the four Fashion-MNIST files, searched in the documented order.

    Order: `data_dir` (user), the Debian package folder, an earlier download in `download_dir`,
    then a new download into `download_dir` (None: never download).

    Example:
        >>> find_fashion_mnist()
        PosixPath('/usr/share/datasets/fashion-mnist')
    """
    names = [f for pair in FILES.values() for f in pair[:2]]
    candidates = [Path(data_dir)] if data_dir else []
    candidates += [DEBIAN_DIR] + ([download_dir] if download_dir else [])
    for folder in candidates:
        for sub in (folder, folder / "fashion-mnist"):
            if all((sub / n).exists() for n in names):
                return sub
    if data_dir and not Path(data_dir).exists():
        raise DataError(f"data dir {data_dir} does not exist; {HOW_TO_GET}")
    if download_dir is None:
        raise DataError(f"Fashion-MNIST not found; {HOW_TO_GET}")
    download_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        if not (download_dir / n).exists():
            _download(download_dir, n)
    return download_dir


def load_fashion_mnist(
    split: str = "train", data_dir: str | Path | None = None, download_dir: Path | None = None
) -> ImageDataset:
    """Load one split of Fashion-MNIST with size and magic-number checks.

    Args:
        split: "train" (60,000) or "test" (10,000).
        data_dir: a folder the user gave (searched first).
        download_dir: where to download when nothing is found (None: no download).

    Example:
        >>> len(load_fashion_mnist("test"))
        10000
    """
    if split not in FILES:
        raise DataError(f"unknown split {split!r}; valid splits: train, test")
    folder = find_fashion_mnist(data_dir, download_dir)
    img_name, lbl_name, count = FILES[split]
    images = read_idx(folder / img_name, (count, 28, 28))
    labels = read_idx(folder / lbl_name, (count,))
    if labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{folder / lbl_name} has label {labels.max()} outside 0..9")
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), CLASS_NAMES)
