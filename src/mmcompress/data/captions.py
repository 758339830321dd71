"""Fashion-MNIST image-caption pairs with varied templates and (sometimes ambiguous) phrasings.

Each class has several specific phrasings and some ambiguous ones shared with similar classes
("a top" fits t-shirt, pullover and shirt). A caption's `classes` are all classes it fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcompress.data.fashion_mnist import ImageDataset, to_float_image

TEMPLATES = (
    "a photo of {}",
    "a picture of {}",
    "a grayscale image of {}",
    "{} on a plain background",
    "a product shot of {}",
    "a low-resolution photo of {}",
    "this is {}",
    "a catalogue image showing {}",
)

# class index -> specific phrasings (fit that class only)
SPECIFIC = {
    0: ("a t-shirt", "a tee", "a short-sleeved t-shirt"),
    1: ("a pair of trousers", "some pants", "a pair of jeans"),
    2: ("a pullover", "a sweater", "a knitted jumper"),
    3: ("a dress", "a summer dress", "a long gown"),
    4: ("a coat", "a winter jacket", "an overcoat"),
    5: ("a sandal", "a flip-flop", "a strappy sandal"),
    6: ("a shirt", "a button-up shirt", "a collared blouse"),
    7: ("a sneaker", "a running shoe", "a trainer"),
    8: ("a bag", "a handbag", "a leather purse"),
    9: ("an ankle boot", "a short boot", "a chunky boot"),
}
# ambiguous phrasing -> every class it fits
AMBIGUOUS = {
    "a top": (0, 2, 6),
    "a long-sleeved top": (2, 4, 6),
    "a warm layer": (2, 4),
    "something to wear": (1, 3),
    "a shoe": (5, 7, 9),
    "a summer shoe": (5, 7),
    "a closed shoe": (7, 9),
    "an accessory": (8, 5),
}
ZERO_SHOT_PHRASES = tuple(phrases[0] for _, phrases in sorted(SPECIFIC.items()))


def caption_vocabulary() -> list[tuple[str, tuple[int, ...], bool]]:
    """Every distinct caption as (text, classes it fits, is_ambiguous), in a fixed order.

    Example:
        >>> len(caption_vocabulary())
        304
    """
    out = []
    for template in TEMPLATES:
        for cls, phrases in sorted(SPECIFIC.items()):
            out += [(template.format(p), (cls,), False) for p in phrases]
        out += [(template.format(p), classes, True) for p, classes in AMBIGUOUS.items()]
    return out


def _ambiguous_for(cls: int) -> list[str]:
    return [p for p, classes in AMBIGUOUS.items() if cls in classes]


def assign_captions(labels: torch.Tensor, seed: int, ambiguous_rate: float) -> torch.Tensor:
    """Pick a caption id for each label: a random template and phrasing, ambiguous at `ambiguous_rate`.

    Example:
        >>> assign_captions(torch.tensor([0, 7]), seed=0, ambiguous_rate=0.3).shape
        torch.Size([2])
    """
    vocab = caption_vocabulary()
    index = {text: i for i, (text, _, _) in enumerate(vocab)}
    gen = torch.Generator().manual_seed(seed)
    rolls = torch.rand(len(labels), generator=gen)
    picks = torch.randint(0, 1 << 30, (len(labels), 2), generator=gen)
    ids = torch.empty(len(labels), dtype=torch.int64)
    for i, cls in enumerate(labels.tolist()):
        template = TEMPLATES[int(picks[i, 0]) % len(TEMPLATES)]
        options = _ambiguous_for(cls) if rolls[i] < ambiguous_rate else list(SPECIFIC[cls])
        options = options or list(SPECIFIC[cls])
        ids[i] = index[template.format(options[int(picks[i, 1]) % len(options)])]
    return ids


@dataclass
class CaptionDataset(torch.utils.data.Dataset):
    """Image-caption pairs. Items: (image, caption_id, label).

    Attributes:
        images/labels: the Fashion-MNIST split.
        caption_ids: index into `captions` per sample.
        captions: the distinct caption texts; `caption_classes` (C, 10) bool: classes each fits.
        caption_ambiguous: (C,) bool.

    Example:
        >>> ds = load_fashion_captions("test")
        >>> ds.caption_text(0)
        'a picture of a short boot'
    """

    images: torch.Tensor
    labels: torch.Tensor
    caption_ids: torch.Tensor
    captions: list[str]
    caption_classes: torch.Tensor
    caption_ambiguous: torch.Tensor
    class_names: tuple[str, ...]
    name: str = "fashion-captions"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return to_float_image(self.images[i : i + 1])[0], int(self.caption_ids[i]), int(self.labels[i])

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """The images alone, (B, 1, 28, 28) float (an image-only classifier on this set)."""
        return to_float_image(self.images[index])

    def caption_text(self, i: int) -> str:
        return self.captions[int(self.caption_ids[i])]

    def sample_ambiguous(self) -> torch.Tensor:
        """(N,) bool: whether each sample's caption is ambiguous."""
        return self.caption_ambiguous[self.caption_ids]

    def select(self, mask_or_index: torch.Tensor) -> CaptionDataset:
        """A new dataset holding the chosen samples (bool mask or index tensor)."""
        return CaptionDataset(
            self.images[mask_or_index],
            self.labels[mask_or_index],
            self.caption_ids[mask_or_index],
            self.captions,
            self.caption_classes,
            self.caption_ambiguous,
            self.class_names,
            self.name,
        )

    def subset(self, limit: int | None) -> CaptionDataset:
        """First `limit` samples (all when None)."""
        if limit is None or limit >= len(self):
            return self
        return self.select(torch.arange(limit))


def make_caption_dataset(base: ImageDataset, seed: int, ambiguous_rate: float = 0.3) -> CaptionDataset:
    """Attach captions to an image dataset (deterministic for a seed).

    Example:
        >>> make_caption_dataset(load_fashion_mnist("test"), seed=1).captions[:1]
        ['a photo of a t-shirt']
    """
    vocab = caption_vocabulary()
    classes = torch.zeros(len(vocab), len(base.class_names), dtype=torch.bool)
    for i, (_, fits, _) in enumerate(vocab):
        classes[i, list(fits)] = True
    return CaptionDataset(
        images=base.images,
        labels=base.labels,
        caption_ids=assign_captions(base.labels, seed, ambiguous_rate),
        captions=[text for text, _, _ in vocab],
        caption_classes=classes,
        caption_ambiguous=torch.tensor([amb for _, _, amb in vocab]),
        class_names=base.class_names,
    )
