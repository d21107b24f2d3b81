"""The ResNet-MoD family (Cakaj, Mehnert, Yang, "CNN Mixture-of-Depths", ACCV 2024, arXiv 2409.17016).

ImageNet models (METHODS.md §7c, Table 5): torchvision ResNets (v1.5, stride on the 3×3) with the paper's
stage depths, in which block indices 1, 3, 5, ... of every stage are :class:`~cnnkit.efficiency.mod.MoDBlock`
s (c = 64):

==========  =============  ==========  ===========================
model       stages         block       parameters (1000 classes)
==========  =============  ==========  ===========================
R18-MoD     [2, 2, 2, 2]   basic
R26-MoD     [2, 2, 3, 4]   basic
R34-MoD     [3, 4, 6, 3]   basic
R42-MoD     [3, 3, 6, 6]   basic
R50-MoD     [3, 4, 6, 3]   bottleneck  18,105,949 (paper 18.11 M)
R75-MoD     [3, 4, 14, 3]  bottleneck  23,100,253 (paper 23.10 M)
R86-MoD     [3, 4, 18, 3]  bottleneck  25,597,405 (paper 25.60 M)
R101-MoD    [3, 4, 23, 3]  bottleneck  29,211,741 (paper 29.21 M)
R152-MoD    [3, 8, 36, 3]  bottleneck  37,460,437 (paper 37.46 M)
==========  =============  ==========  ===========================

CIFAR models (METHODS.md §1.6, Table 9): the same with a 3×3 stride-1 stem and no max-pool (R18-MoD
4,948,352, R34-MoD 12,418,864, R50-MoD 16,069,759 parameters at 10 classes).

The backbone keeps torchvision's initialization (He normal, fan-out); the MoD blocks are initialized as
:mod:`cnnkit.efficiency.mod` says. Extra keyword arguments are :class:`~cnnkit.efficiency.mod.MoD` config
options (``c``, ``fuse_to``, ``selected_order``, ...), validated with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import nn
from torchvision.models import resnet as tvr

from cnnkit.core.config import validate_config
from cnnkit.efficiency.mod import MoD, convert_resnet

__all__ = [
    "cifar_resnet18_mod",
    "cifar_resnet34_mod",
    "cifar_resnet50_mod",
    "resnet18_mod",
    "resnet26_mod",
    "resnet34_mod",
    "resnet42_mod",
    "resnet50_mod",
    "resnet75_mod",
    "resnet86_mod",
    "resnet101_mod",
    "resnet152_mod",
    "resnet_mod",
]

STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet_mod(
    block: type[tvr.BasicBlock | tvr.Bottleneck],
    layers: Sequence[int],
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    cifar_stem: bool = False,
    **mod_options: Any,
) -> nn.Module:
    """A torchvision ResNet with ``layers`` blocks per stage, converted by :class:`MoD` (``mod_options``).

    ``cifar_stem`` swaps the 7×7/2 stem and max-pool for a 3×3 stride-1 conv without max-pool (32×32 inputs).
    """
    config = cast(MoD.Config, validate_config(MoD.Config, mod_options, owner="ResNet-MoD model"))
    model: nn.Module = tvr.ResNet(block, list(layers), num_classes=num_classes)
    if cifar_stem or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if cifar_stem else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if cifar_stem:
        model.maxpool = nn.Identity()
    method = MoD(config=config)
    convert_resnet(model, placement=config.placement, stages=config.stages, **method.block_options())
    setattr(model, "cnnkit_stages", STAGES)  # noqa: B010 (a plain tuple attribute, not a submodule)
    return model


def _basic(layers: Sequence[int], num_classes: int, in_channels: int, **kw: Any) -> nn.Module:
    return resnet_mod(tvr.BasicBlock, layers, num_classes=num_classes, in_channels=in_channels, **kw)


def _bottleneck(layers: Sequence[int], num_classes: int, in_channels: int, **kw: Any) -> nn.Module:
    return resnet_mod(tvr.Bottleneck, layers, num_classes=num_classes, in_channels=in_channels, **kw)


def resnet18_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-18-MoD: BasicBlock [2, 2, 2, 2]."""
    return _basic((2, 2, 2, 2), num_classes, in_channels, **kw)


def resnet26_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-26-MoD: BasicBlock [2, 2, 3, 4]."""
    return _basic((2, 2, 3, 4), num_classes, in_channels, **kw)


def resnet34_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-34-MoD: BasicBlock [3, 4, 6, 3]."""
    return _basic((3, 4, 6, 3), num_classes, in_channels, **kw)


def resnet42_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-42-MoD: BasicBlock [3, 3, 6, 6]."""
    return _basic((3, 3, 6, 6), num_classes, in_channels, **kw)


def resnet50_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-50-MoD: Bottleneck [3, 4, 6, 3], 18,105,949 parameters."""
    return _bottleneck((3, 4, 6, 3), num_classes, in_channels, **kw)


def resnet75_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-75-MoD: Bottleneck [3, 4, 14, 3], 23,100,253 parameters."""
    return _bottleneck((3, 4, 14, 3), num_classes, in_channels, **kw)


def resnet86_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-86-MoD: Bottleneck [3, 4, 18, 3], 25,597,405 parameters."""
    return _bottleneck((3, 4, 18, 3), num_classes, in_channels, **kw)


def resnet101_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-101-MoD: Bottleneck [3, 4, 23, 3], 29,211,741 parameters."""
    return _bottleneck((3, 4, 23, 3), num_classes, in_channels, **kw)


def resnet152_mod(*, num_classes: int = 1000, in_channels: int = 3, **kw: Any) -> nn.Module:
    """ImageNet ResNet-152-MoD: Bottleneck [3, 8, 36, 3], 37,460,437 parameters."""
    return _bottleneck((3, 8, 36, 3), num_classes, in_channels, **kw)


def cifar_resnet18_mod(*, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> nn.Module:
    """CIFAR ResNet-18-MoD (3×3 stem, no max-pool): 4,948,352 / 4,994,522 parameters at 10 / 100 classes."""
    return _basic((2, 2, 2, 2), num_classes, in_channels, cifar_stem=True, **kw)


def cifar_resnet34_mod(*, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> nn.Module:
    """CIFAR ResNet-34-MoD: 12,418,864 / 12,465,034 parameters at 10 / 100 classes."""
    return _basic((3, 4, 6, 3), num_classes, in_channels, cifar_stem=True, **kw)


def cifar_resnet50_mod(*, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> nn.Module:
    """CIFAR ResNet-50-MoD: 16,069,759 / 16,254,169 parameters at 10 / 100 classes."""
    return _bottleneck((3, 4, 6, 3), num_classes, in_channels, cifar_stem=True, **kw)
