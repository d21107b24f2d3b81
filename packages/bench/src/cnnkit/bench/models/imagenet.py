"""torchvision ImageNet models, always built without pretrained weights (``weights=None``; nothing is ever
downloaded): ResNet-18/34/50/101 (He et al. 2016, arXiv 1512.03385; torchvision's v1.5 with the stride on
the 3×3 of the Bottleneck) and MobileNetV2 (Sandler et al. 2018, arXiv 1801.04381).

``in_channels != 3`` replaces the stem convolution by a fresh one with the same kernel, stride, padding and
bias. Stages (``cnnkit_stages``): ``layer1..layer4`` for ResNets (56/28/14/7 px at 224×224); for
MobileNetV2 the ``features`` children grouped by output resolution at 224×224: 112 (0–1), 56 (2–3),
28 (4–6), 14 (7–13) and 7 px (14–18).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import nn
from torchvision import models as tvm

from cnnkit.bench.models._common import Stages, declare_stages, replace_conv_in_channels

__all__ = [
    "MOBILENET_V2_STAGES",
    "RESNET_STAGES",
    "imagenet_resnet18",
    "imagenet_resnet34",
    "imagenet_resnet50",
    "imagenet_resnet101",
    "mobilenet_v2",
]

RESNET_STAGES: Stages = ("layer1", "layer2", "layer3", "layer4")


def _features_range(start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in range(start, stop))


MOBILENET_V2_STAGES: Stages = (
    _features_range(0, 2),
    _features_range(2, 4),
    _features_range(4, 7),
    _features_range(7, 14),
    _features_range(14, 19),
)


def _resnet(
    builder: Callable[..., tvm.ResNet], num_classes: int, in_channels: int, **kwargs: Any
) -> nn.Module:
    model: nn.Module = builder(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        model.conv1 = replace_conv_in_channels(cast(nn.Conv2d, model.conv1), in_channels)
    declare_stages(model, RESNET_STAGES)
    return model


def imagenet_resnet18(
    *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-18, random init (11,689,512 params at 1000 classes)."""
    return _resnet(tvm.resnet18, num_classes, in_channels, zero_init_residual=zero_init_residual)


def imagenet_resnet34(
    *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-34, random init (21,797,672 params at 1000 classes)."""
    return _resnet(tvm.resnet34, num_classes, in_channels, zero_init_residual=zero_init_residual)


def imagenet_resnet50(
    *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-50 v1.5, random init (25,557,032 params at 1000 classes)."""
    return _resnet(tvm.resnet50, num_classes, in_channels, zero_init_residual=zero_init_residual)


def imagenet_resnet101(
    *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """torchvision ResNet-101 v1.5, random init (44,549,160 params at 1000 classes)."""
    return _resnet(tvm.resnet101, num_classes, in_channels, zero_init_residual=zero_init_residual)


def mobilenet_v2(
    *, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """torchvision MobileNetV2, random init (3,504,872 params at 1000 classes and ``width_mult=1``)."""
    model: nn.Module = tvm.mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout
    )
    if in_channels != 3:
        stem = cast(nn.Sequential, model.get_submodule("features.0"))
        stem[0] = replace_conv_in_channels(cast(nn.Conv2d, stem[0]), in_channels)
    declare_stages(model, MOBILENET_V2_STAGES)
    return model
