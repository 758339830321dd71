"""scikit-learn's bundled 8x8 digits, upsampled to 28x28 so image towers fit both datasets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcompress.core.extras import require
from mmcompress.data.fashion_mnist import ImageDataset

DIGIT_NAMES = tuple(str(d) for d in range(10))


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """Load the 1,797 digits, a fixed stratified-by-shuffle train/test split, as 28x28 uint8.

    Example:
        >>> ds = load_digits("test"); ds.images.shape[1:]
        torch.Size([28, 28])
    """
    sk_load_digits = require("sklearn.datasets", "data", "the digits dataset").load_digits

    if split not in ("train", "test"):
        from mmcompress.errors import DataError

        raise DataError(f"unknown split {split!r}; valid splits: train, test")
    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    images = F.interpolate(images[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    idx = order[:n_test] if split == "test" else order[n_test:]
    return ImageDataset(images[idx], labels[idx], DIGIT_NAMES, name="digits")
