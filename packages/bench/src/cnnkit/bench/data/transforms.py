"""Standard transforms and normalization constants of the bench's datasets.

- MNIST / Fashion-MNIST: ``ToTensor`` + normalization. The pruning recipes (METHODS.md §1.5) use no
  augmentation on MNIST, so none is applied by default; ``augment=True`` adds translations of at most
  2 px (``RandomCrop(28, padding=2)``) and, for Fashion-MNIST only, horizontal flips.
- CIFAR (METHODS.md §1.2): train ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``; normalization.
  The CIFAR standard deviations are the true per-channel pixel stds (not the often copied
  0.2023/0.1994/0.2010).
- ImageNet-style folders (METHODS.md §1.3): train ``RandomResizedCrop(size)`` + flip; eval
  ``Resize(round(size * 256 / 224))`` + ``CenterCrop(size)``; ImageNet normalization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchvision import transforms as T

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "cifar_transform",
    "grey_transform",
    "imagenet_transform",
]

Transform = Callable[[Any], Any]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _compose(augmentation: list[Transform], mean: Sequence[float], std: Sequence[float]) -> Transform:
    composed: Transform = T.Compose([*augmentation, T.ToTensor(), T.Normalize(mean, std)])
    return composed


def grey_transform(
    mean: Sequence[float], std: Sequence[float], *, augment: bool, flip: bool = False, size: int = 28
) -> Transform:
    """PIL grey image -> normalized ``(1, size, size)`` tensor; ``augment`` adds 2-px translations (and
    horizontal flips when ``flip``)."""
    augmentation: list[Transform] = []
    if augment:
        augmentation.append(T.RandomCrop(size, padding=2))
        if flip:
            augmentation.append(T.RandomHorizontalFlip())
    return _compose(augmentation, mean, std)


def cifar_transform(
    mean: Sequence[float], std: Sequence[float], *, augment: bool, size: int = 32
) -> Transform:
    """PIL RGB image -> normalized ``(3, size, size)`` tensor; ``augment``: random crop (pad 4) + flip."""
    augmentation: list[Transform] = []
    if augment:
        augmentation = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
    return _compose(augmentation, mean, std)


def imagenet_transform(
    *,
    augment: bool,
    image_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Transform:
    """PIL RGB image -> normalized ``(3, image_size, image_size)`` tensor.

    Train (``augment``): ``RandomResizedCrop(image_size)`` + flip; else ``Resize(resize_size)`` +
    ``CenterCrop(image_size)`` with ``resize_size`` defaulting to ``round(image_size * 256 / 224)``.
    """
    if augment:
        steps: list[Transform] = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        resize = resize_size if resize_size is not None else round(image_size * 256 / 224)
        steps = [T.Resize(resize), T.CenterCrop(image_size)]
    return _compose(steps, mean, std)
