"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv 1512.03385).

Two families, one implementation (:class:`CifarResNet`), METHODS.md §1.6:

* ResNet-20/32/56 (the paper's CIFAR networks, as in OpenLTH and GraSP): a 3×3 stem with 16 channels and
  three stages of 16/32/64 channels with n = (depth−2)/6 BasicBlocks each, strides 1/2/2. Shortcuts where
  the shape changes are ``"projection"`` (1×1 conv + BN, OpenLTH; 272,474 / 466,906 / 855,770 params) or
  ``"zero_pad"`` (the paper's option A: subsample and pad channels with zeros, no parameters; ResNet-20 has
  269,722 params).
* ResNet-18/34/50 adapted to 32×32 inputs (the Cakaj papers, MoD Table 9): a 3×3 stride-1 stem with 64
  channels + BN + ReLU and no max-pool, four stages of width 64/128/256/512 with strides 1/2/2/2,
  BasicBlocks ([2,2,2,2], [3,4,6,3]) or Bottlenecks (×4 expansion, [3,4,6,3], stride on the 3×3 as in
  torchvision's v1.5), 1×1 conv + BN projections when the shape changes, global average pool, FC.

Attribute names follow torchvision (``conv1``, ``bn1``, ``relu``, ``layer1..``, ``avgpool``, ``fc``; blocks
with ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample``), so model-surgery code treats both alike.
Initialization [choice]: He normal (fan-out) for convolutions, BN weight 1 and bias 0, PyTorch's default for
the FC layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.bench.models._common import Stages, init_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ShortcutKind",
    "ZeroPadShortcut",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
]

ShortcutKind = Literal["projection", "zero_pad"]


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the channels up to ``out_channels``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (``>= in_channels``).
        stride: spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("a zero-padding shortcut cannot reduce the number of channels")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: ShortcutKind) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "zero_pad":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers with an identity (or ``downsample``) shortcut; ReLU after the sum.

    Args:
        in_channels: channels of the input.
        width: channels of both convolutions (and of the output).
        stride: stride of the first convolution.
        shortcut: the kind of shortcut when the shape changes.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, shortcut: ShortcutKind = "projection"
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, width, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + identity)
        return result


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided) → 1×1 expand (×4), each with BN; ReLU after the residual sum.

    Args:
        in_channels: channels of the input.
        width: channels of the 1×1 and 3×3 convolutions; the output has ``4 * width``.
        stride: stride of the 3×3 convolution.
        shortcut: the kind of shortcut when the shape changes.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, shortcut: ShortcutKind = "projection"
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: Tensor = self.relu(out + identity)
        return result


class CifarResNet(nn.Module):
    """A ResNet for 32×32 inputs: 3×3 stem (stride 1, no max-pool), stages ``layer1..layerK``, GAP, FC.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        widths: block width per stage (the stem has ``widths[0]`` channels).
        num_classes: outputs of the FC layer.
        in_channels: channels of the input image.
        shortcut: ``"projection"`` (1×1 conv + BN) or ``"zero_pad"`` (option A) where the shape changes.
    """

    def __init__(
        self,
        *,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: ShortcutKind = "projection",
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        if shortcut not in ("projection", "zero_pad"):
            raise ValueError(f"shortcut must be 'projection' or 'zero_pad', got {shortcut!r}")
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(channels, width, stride if j == 0 else 1, shortcut))
                channels = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_stages = len(layers)
        self.cnnkit_stages: Stages = tuple(f"layer{i + 1}" for i in range(len(layers)))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        out: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


def _he_cifar_resnet(depth: int, num_classes: int, in_channels: int, shortcut: ShortcutKind) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet of He et al. has depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(
        block=BasicBlock,
        layers=(n, n, n),
        widths=(16, 32, 64),
        num_classes=num_classes,
        in_channels=in_channels,
        shortcut=shortcut,
    )


def resnet20(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: ShortcutKind = "projection"
) -> nn.Module:
    """ResNet-20 (3 BasicBlocks per stage; 272,474 params with projections, 269,722 with zero_pad)."""
    return _he_cifar_resnet(20, num_classes, in_channels, shortcut)


def resnet32(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: ShortcutKind = "projection"
) -> nn.Module:
    """ResNet-32 (5 BasicBlocks per stage; 466,906 params with projections)."""
    return _he_cifar_resnet(32, num_classes, in_channels, shortcut)


def resnet56(
    *, num_classes: int = 10, in_channels: int = 3, shortcut: ShortcutKind = "projection"
) -> nn.Module:
    """ResNet-56 (9 BasicBlocks per stage; 855,770 params with projections)."""
    return _he_cifar_resnet(56, num_classes, in_channels, shortcut)


_WIDE = (64, 128, 256, 512)


def resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (BasicBlock [2,2,2,2]; 11,173,962 / 11,220,132 params at 10 / 100 classes)."""
    return CifarResNet(
        block=BasicBlock, layers=(2, 2, 2, 2), widths=_WIDE, num_classes=num_classes, in_channels=in_channels
    )


def resnet34(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-34 (BasicBlock [3,4,6,3]; 21,282,122 / 21,328,292 params at 10 / 100 classes)."""
    return CifarResNet(
        block=BasicBlock, layers=(3, 4, 6, 3), widths=_WIDE, num_classes=num_classes, in_channels=in_channels
    )


def resnet50(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-50 (Bottleneck [3,4,6,3]; 23,520,842 / 23,705,252 params at 10 / 100 classes)."""
    return CifarResNet(
        block=Bottleneck, layers=(3, 4, 6, 3), widths=_WIDE, num_classes=num_classes, in_channels=in_channels
    )
