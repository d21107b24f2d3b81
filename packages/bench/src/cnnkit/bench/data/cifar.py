"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from torchvision's pickled layout, read in place.

The data root holds ``cifar-10-batches-py/`` (``cifar-100-python/``) as torchvision extracts it; it is only
read (torchvision checks the files' md5). ``download=True`` downloads the archive when the folder is
missing: into the root when it is writable, else into ``<cache>/torchvision``, where later calls with
``download=True`` find it. Recipe (METHODS.md §1.2): random crop 32 with padding 4 and horizontal flip on
the training splits, normalization everywhere; 45k/5k/10k train/val/test.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision import datasets

from cnnkit.bench.data.paths import DataNotFoundError, cache_dir, is_writable, resolve_data_root
from cnnkit.bench.data.splits import SplitDataset, check_split, make_split, use_augmentation
from cnnkit.bench.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar_transform,
)

__all__ = ["CIFAR10_CLASSES", "cifar10", "cifar100"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CifarClass = type[datasets.CIFAR10]


def cifar10(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """CIFAR-10, ``(3, 32, 32)`` normalized tensors, 10 classes; 45000/5000/10000 train/val/test."""
    return _cifar(
        datasets.CIFAR10,
        CIFAR10_MEAN,
        CIFAR10_STD,
        split=split,
        root=root,
        download=download,
        augment=augment,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def cifar100(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """CIFAR-100 (fine labels), ``(3, 32, 32)`` normalized tensors, 100 classes; 45000/5000/10000."""
    return _cifar(
        datasets.CIFAR100,
        CIFAR100_MEAN,
        CIFAR100_STD,
        split=split,
        root=root,
        download=download,
        augment=augment,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def _cifar(
    cls: CifarClass,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    augment: bool | None,
    val_fraction: float,
    split_seed: int,
) -> SplitDataset:
    check_split(split)
    torch_root = _cifar_root(cls, resolve_data_root(root), download=download)
    transform = cifar_transform(mean, std, augment=use_augmentation(split, augment, default=True))
    try:
        base = cls(str(torch_root), train=split != "test", transform=transform, download=download)
    except RuntimeError as exc:  # torchvision: files missing or md5 mismatch
        raise DataNotFoundError(
            f"{torch_root / cls.base_folder} is incomplete or corrupted ({exc}); replace it, or remove it "
            "and pass download=True (CLI: --download)."
        ) from exc
    return make_split(
        base,
        split=split,
        classes=list(base.classes),
        targets=base.targets,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def _cifar_root(cls: CifarClass, data_root: Path, *, download: bool) -> Path:
    """The root holding ``cls.base_folder``: the data root, or (``download`` only) where to download."""
    if (data_root / cls.base_folder).is_dir():
        return data_root
    if not download:
        raise DataNotFoundError(
            f"{cls.__name__} not found: {data_root / cls.base_folder} does not exist. Point --data-root "
            f"/ CNNKIT_DATA at the folder containing {cls.base_folder}/ (torchvision's pickled layout), "
            "or pass download=True (CLI: --download) to fetch it."
        )
    return data_root if is_writable(data_root) else cache_dir() / "torchvision"
