"""The bench's dataset specs, read at plugin discovery.

Imports only :class:`cnnkit.core.specs.DatasetSpec` (no torch, no torchvision); each factory is named by its
``target`` and imported on first use. Every factory is ``f(*, split, root=None, download=False, augment=None,
val_fraction=0.1, split_seed=0, **options) -> Dataset`` with ``split`` in train/val/test/train_full.
"""

from __future__ import annotations

from cnnkit.core.specs import DatasetSpec

__all__ = ["DATASET_SPECS"]

_DATA = "cnnkit.bench.data"
_FASHION = "Xiao et al. 2017, arXiv 1708.07747"
_CIFAR = "Krizhevsky 2009"

DATASET_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="fashion_mnist_mini",
        target=f"{_DATA}.mini:fashion_mnist_mini",
        summary="Embedded real Fashion-MNIST subset (4000 train / 1000 test, class-balanced); no data root",
        paper=_FASHION,
        num_classes=10,
        input_shape=(1, 28, 28),
        tags=("embedded", "offline", "grayscale", "fashion-mnist"),
    ),
    DatasetSpec(
        name="mnist",
        target=f"{_DATA}.mnist:mnist",
        summary="MNIST digits (torchvision), 54k/6k/10k train/val/test",
        paper="LeCun et al. 1998",
        num_classes=10,
        input_shape=(1, 28, 28),
        tags=("grayscale", "torchvision"),
    ),
    DatasetSpec(
        name="fashion_mnist",
        target=f"{_DATA}.mnist:fashion_mnist",
        summary="Fashion-MNIST (torchvision), 54k/6k/10k train/val/test",
        paper=_FASHION,
        num_classes=10,
        input_shape=(1, 28, 28),
        tags=("grayscale", "torchvision", "fashion-mnist"),
    ),
    DatasetSpec(
        name="cifar10",
        target=f"{_DATA}.cifar:cifar10",
        summary="CIFAR-10 (torchvision pickles), crop+flip, 45k/5k/10k train/val/test",
        paper=_CIFAR,
        num_classes=10,
        input_shape=(3, 32, 32),
        tags=("rgb", "torchvision", "cifar"),
    ),
    DatasetSpec(
        name="cifar100",
        target=f"{_DATA}.cifar:cifar100",
        summary="CIFAR-100 fine labels (torchvision pickles), crop+flip, 45k/5k/10k train/val/test",
        paper=_CIFAR,
        num_classes=100,
        input_shape=(3, 32, 32),
        tags=("rgb", "torchvision", "cifar"),
    ),
    DatasetSpec(
        name="cifar10_jpeg",
        target=f"{_DATA}.folder:cifar10_jpeg",
        summary="CIFAR-10 as JPEG q75 (cifar10-jpeg.tar.gz, extracted once to the cache), 45k/5k/10k",
        paper=_CIFAR,
        num_classes=10,
        input_shape=(3, 32, 32),
        tags=("rgb", "imagefolder", "cifar", "jpeg"),
    ),
    DatasetSpec(
        name="imagefolder",
        target=f"{_DATA}.folder:imagefolder",
        summary="Any ImageNet-style folder (train/ + val/ or test/), RandomResizedCrop / CenterCrop 224",
        paper="Deng et al. 2009 (ImageNet)",
        num_classes=None,
        input_shape=(3, 224, 224),
        tags=("rgb", "imagefolder", "imagenet"),
    ),
    DatasetSpec(
        name="synthetic",
        target=f"{_DATA}.synthetic:synthetic",
        summary="Deterministic learnable random images (class pattern + noise) for tests",
        paper="",
        num_classes=10,
        input_shape=(3, 32, 32),
        tags=("synthetic", "offline", "testing"),
    ),
)
