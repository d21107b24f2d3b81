"""The bench's model zoo: LeNets, CIFAR ResNets and VGGs, torchvision ImageNet models (METHODS.md §1.6).

Every factory takes keyword-only ``num_classes`` and ``in_channels`` and returns an ``nn.Module`` with a
``cnnkit_stages`` attribute (see :func:`cnnkit.core.sites.stage_names`). The factories are re-exported
lazily: importing this package imports neither torch nor torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnkit.bench.models.cifar_resnet import resnet18, resnet20, resnet32, resnet34, resnet50, resnet56
    from cnnkit.bench.models.cifar_vgg import vgg16_bn, vgg19_bn
    from cnnkit.bench.models.imagenet import (
        imagenet_resnet18,
        imagenet_resnet34,
        imagenet_resnet50,
        imagenet_resnet101,
        mobilenet_v2,
    )
    from cnnkit.bench.models.lenet import lenet5_caffe, lenet300_100

_LAZY: dict[str, str] = {
    "lenet300_100": "lenet",
    "lenet5_caffe": "lenet",
    "resnet20": "cifar_resnet",
    "resnet32": "cifar_resnet",
    "resnet56": "cifar_resnet",
    "resnet18": "cifar_resnet",
    "resnet34": "cifar_resnet",
    "resnet50": "cifar_resnet",
    "vgg16_bn": "cifar_vgg",
    "vgg19_bn": "cifar_vgg",
    "imagenet_resnet18": "imagenet",
    "imagenet_resnet34": "imagenet",
    "imagenet_resnet50": "imagenet",
    "imagenet_resnet101": "imagenet",
    "mobilenet_v2": "imagenet",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
