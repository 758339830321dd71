"""Real photographs for ImageNet models, offline: random resized crops of the bundled sample photos.

The sources are the colour photos that ship inside installed packages (no download):
scikit-image's `astronaut`, `chelsea`, `coffee`, `rocket` and scikit-learn's `china`, `flower`.
Each crop takes a random area fraction (`MIN_AREA`..1) and aspect ratio (3/4..4/3, log-uniform)
of one photo, is resized to `size` x `size` (bilinear, antialiased), flipped left-right with
probability 1/2, and normalised with the ImageNet mean and std.

The "calib" and "test" splits draw from the same six photos with *disjoint random streams*
(different generator seeds), so no crop is in both splits, but crops of one photo can overlap in
pixels. That mirrors calibrating on a few images of the deployment distribution; it is not a
held-out-photo split (six photos are too few for one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from mmcompress.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")
SPLITS = {"test": 0, "calib": 1}  # a stream per split: seed * 2 + this
MIN_AREA = 0.1
RATIO = (3 / 4, 4 / 3)


@lru_cache(maxsize=1)
def load_photos() -> tuple[torch.Tensor, ...]:
    """The six bundled colour photos as float tensors (3, H, W) in [0, 1], in `PHOTOS` order.

    Example:
        >>> [tuple(p.shape) for p in load_photos()][:1]
        [(3, 512, 512)]
    """
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        raise DataError("photo crops need scikit-image and scikit-learn (their bundled sample photos)") from err
    arrays = [getattr(skimage.data, name)() for name in PHOTOS[:4]] + list(load_sample_images().images)
    return tuple(torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float() / 255.0 for a in arrays)


def _crop_box(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area fraction MIN_AREA..1, log-uniform ratio."""
    for _ in range(20):
        area = height * width * float(torch.empty(1).uniform_(MIN_AREA, 1.0, generator=gen))
        log_ratio = torch.empty(1).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=gen)
        ratio = math.exp(float(log_ratio))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    side = min(height, width)  # fall back to the central square
    return (height - side) // 2, (width - side) // 2, side, side


def photo_crops(n: int, seed: int = 0, split: str = "test", size: int = 224) -> torch.Tensor:
    """`n` ImageNet-normalised random resized crops (+ random flips) of the bundled photos.

    Crops cycle through the photos (crop i comes from photo i mod 6); the same (n, seed, split)
    always gives the same tensor, and a longer `n` extends a shorter one.

    Args:
        n: number of crops (>= 1).
        seed: random seed; "calib" and "test" use disjoint streams for every seed.
        split: "test" (evaluation) or "calib" (calibration).
        size: output height and width.

    Returns:
        (n, 3, size, size) float32.

    Example:
        >>> photo_crops(8, split="calib").shape
        torch.Size([8, 3, 224, 224])
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if n < 1:
        raise DataError(f"photo_crops needs n >= 1, got {n}")
    photos = load_photos()
    gen = torch.Generator().manual_seed(2 * seed + SPLITS[split])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left, h, w = _crop_box(photo.shape[1], photo.shape[2], gen)
        crop = photo[None, :, top : top + h, left : left + w]  # (1, 3, h, w)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if bool(torch.rand(1, generator=gen) < 0.5):
            crop = crop.flip(-1)
        out[i] = (crop.clamp(0, 1) - mean) / std
    return out


@dataclass
class PhotoCrops(torch.utils.data.Dataset):
    """Unlabelled crops for an ImageNet model: items are (3, size, size) images. With no labels, the
    task is `agreement` (top-1 agreement with the float model), as the conformance matrix measures.

    Example:
        >>> ds = load_photo_crops("test"); ds[0].shape
        torch.Size([3, 224, 224])
    """

    images: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    def subset(self, limit: int | None) -> PhotoCrops:
        """First `limit` crops (all when None)."""
        return self if limit is None or limit >= len(self) else PhotoCrops(self.images[:limit])


PHOTO_CROPS = {"train": 512, "test": 300}  # crops per split: calibration/fine-tuning, evaluation


def load_photo_crops(split: str = "train") -> PhotoCrops:
    """The built-in `photo-crops` dataset: 512 "calib"-stream crops to train and calibrate on, the
    conformance matrix's 300 test crops to evaluate on.

    Example:
        >>> len(load_photo_crops("test"))
        300
    """
    if split not in PHOTO_CROPS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(PHOTO_CROPS)}")
    stream = "calib" if split == "train" else "test"
    return PhotoCrops(photo_crops(PHOTO_CROPS[split], seed=0, split=stream))
