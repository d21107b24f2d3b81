"""CIFAR VGG16-BN and VGG19-BN (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", arXiv 1409.1556), METHODS.md §1.6.

Configurations D (16) and E (19) for 32×32 inputs: every 3×3 convolution (with bias) is followed by BN and
ReLU, five 2×2 max-pools take 32×32 to 1×1, all in ``features``; the classifier is Dropout(0.5) →
Linear(512, 512) → ReLU → Dropout(0.5) → Linear(512, 512) → ReLU → Linear(512, classes) (15,253,578 and
20,565,834 params at 10 classes). Stage M is the run of ``features`` modules after the (M−1)-th max-pool up
to and including the M-th (METHODS.md §1.1): five stages ending at 16/8/4/2/1 px.

Initialization [choice]: He normal (fan-out) for convolutions with zero bias, BN weight 1 and bias 0,
N(0, 0.01²) with zero bias for linear layers (torchvision's VGG init).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnkit.bench.models._common import Stages, init_weights

__all__ = ["CONFIGS", "CifarVGG", "vgg16_bn", "vgg19_bn"]

_M = "M"
#: Layer configurations: conv widths, ``"M"`` for a 2×2 max-pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "D": (64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M),
    "E": (64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M, 512, 512, 512, 512, _M),
}


def _features(config: Sequence[int | str], in_channels: int) -> tuple[nn.Sequential, Stages]:
    """The ``features`` Sequential and its stages (``features.i`` names, each ending at a max-pool)."""
    layers: list[nn.Module] = []
    stages: list[tuple[str, ...]] = []
    current: list[str] = []
    channels = in_channels
    for item in config:
        if item == _M:
            new: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            width = int(item)
            new = [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        for module in new:
            current.append(f"features.{len(layers)}")
            layers.append(module)
        if item == _M:
            stages.append(tuple(current))
            current = []
    return nn.Sequential(*layers), tuple(stages)


class CifarVGG(nn.Module):
    """VGG with BN for 32×32 inputs: ``features`` (conv-BN-ReLU and max-pools) then ``classifier``.

    Args:
        config: a key of :data:`CONFIGS` (``"D"`` = VGG-16, ``"E"`` = VGG-19).
        num_classes: outputs of the last linear layer.
        in_channels: channels of the input image.
        dropout: dropout probability of the two dropout layers of the classifier.
    """

    def __init__(
        self, *, config: str, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.features, self.cnnkit_stages = _features(CONFIGS[config], in_channels)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return out


def vgg16_bn(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """CIFAR VGG16-BN (configuration D; 15,253,578 / 15,299,748 params at 10 / 100 classes)."""
    return CifarVGG(config="D", num_classes=num_classes, in_channels=in_channels, dropout=dropout)


def vgg19_bn(*, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    """CIFAR VGG19-BN (configuration E; 20,565,834 / 20,612,004 params at 10 / 100 classes)."""
    return CifarVGG(config="E", num_classes=num_classes, in_channels=in_channels, dropout=dropout)
