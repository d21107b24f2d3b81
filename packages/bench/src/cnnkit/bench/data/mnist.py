"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) through torchvision, from read-only roots.

torchvision reads the *uncompressed* idx files in ``<root>/MNIST/raw`` (``FashionMNIST``). Where a data root
holds them, it is read in place. Where it holds only the original ``.gz`` files, their md5 is checked against
torchvision's sums and they are decompressed once into ``<cache>/torchvision/<Name>/raw`` (atomically);
the data root is never written and no network is touched. Only ``download=True`` downloads: into the root
when it is writable, else into the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from torchvision import datasets

from cnnkit.bench.data.paths import DataNotFoundError, cache_dir, is_writable, resolve_data_root
from cnnkit.bench.data.splits import SplitDataset, check_split, make_split, use_augmentation
from cnnkit.bench.data.transforms import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    grey_transform,
)

__all__ = ["FASHION_MNIST_CLASSES", "fashion_mnist", "mnist", "prepare_idx_root"]

FASHION_MNIST_CLASSES: tuple[str, ...] = tuple(datasets.FashionMNIST.classes)

MnistClass = type[datasets.MNIST]


def mnist(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """MNIST digits, ``(1, 28, 28)`` normalized tensors, 10 classes; 54000/6000/10000 train/val/test.

    No augmentation by default; ``augment=True`` adds 2-px translations to the training splits.
    """
    return _idx_dataset(
        datasets.MNIST,
        split=split,
        root=root,
        download=download,
        augment=augment,
        val_fraction=val_fraction,
        split_seed=split_seed,
        flip=False,
    )


def fashion_mnist(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """Fashion-MNIST, ``(1, 28, 28)`` normalized tensors, 10 classes; 54000/6000/10000 train/val/test.

    No augmentation by default; ``augment=True`` adds 2-px translations and horizontal flips.
    """
    return _idx_dataset(
        datasets.FashionMNIST,
        split=split,
        root=root,
        download=download,
        augment=augment,
        val_fraction=val_fraction,
        split_seed=split_seed,
        flip=True,
    )


_STATS = {"MNIST": (MNIST_MEAN, MNIST_STD), "FashionMNIST": (FASHION_MNIST_MEAN, FASHION_MNIST_STD)}


def _idx_dataset(
    cls: MnistClass,
    *,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    augment: bool | None,
    val_fraction: float,
    split_seed: int,
    flip: bool,
) -> SplitDataset:
    check_split(split)
    torch_root = prepare_idx_root(cls, resolve_data_root(root), download=download)
    mean, std = _STATS[cls.__name__]
    transform = grey_transform(mean, std, augment=use_augmentation(split, augment, default=False), flip=flip)
    base = cls(str(torch_root), train=split != "test", transform=transform, download=False)
    return make_split(
        base,
        split=split,
        classes=list(base.classes),
        targets=base.targets.numpy(),
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def _file_names(cls: MnistClass) -> list[tuple[str, str, str]]:
    """``(gz name, idx name, md5 of gz)`` of each of the four files."""
    return [(gz, gz.removesuffix(".gz"), md5) for gz, md5 in cls.resources]


def prepare_idx_root(cls: MnistClass, data_root: Path, *, download: bool) -> Path:
    """A root that torchvision ``cls(root, download=False)`` can read (see module doc); never writes to
    ``data_root`` unless ``download`` is set and the files are missing there."""
    raw = data_root / cls.__name__ / "raw"
    files = _file_names(cls)
    if all((raw / idx).is_file() for _, idx, _ in files):
        return data_root
    if all((raw / gz).is_file() for gz, _, _ in files):
        return _decompress_to_cache(cls, raw)
    if download:
        target = data_root if is_writable(data_root) else cache_dir() / "torchvision"
        cls(str(target), train=True, download=True)
        return target
    raise DataNotFoundError(
        f"{cls.__name__} not found: {raw} holds neither the four idx files nor their .gz originals "
        f"({', '.join(gz for gz, _, _ in files)}). Point --data-root / CNNKIT_DATA at a folder containing "
        f"{cls.__name__}/raw/, or pass download=True (CLI: --download) to fetch it."
    )


def _decompress_to_cache(cls: MnistClass, raw: Path) -> Path:
    """Decompress the md5-checked ``.gz`` files of ``raw`` into the cache; returns the torchvision root."""
    torch_root = cache_dir() / "torchvision"
    out = torch_root / cls.__name__ / "raw"
    for gz, idx, md5 in _file_names(cls):
        if (out / idx).is_file():
            continue
        _check_md5(raw / gz, md5)
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{idx}.", dir=out)
        try:
            with os.fdopen(fd, "wb") as dst, gzip.open(raw / gz, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, out / idx)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return torch_root


def _check_md5(path: Path, expected: str) -> None:
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != expected:
        raise DataNotFoundError(
            f"{path} is corrupt or not the original file (md5 {digest}, expected {expected}); replace it, "
            "or remove it and pass download=True (CLI: --download)."
        )
