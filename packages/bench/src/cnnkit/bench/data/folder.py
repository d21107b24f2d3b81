"""ImageFolder datasets: any ImageNet-style root, and CIFAR-10 as JPEG files.

``imagefolder``: a root with ``train/<class>/*`` and ``val/<class>/*`` (or ``test/<class>/*``; ``test/`` wins
when both exist). ``train``/``val`` are the 90/10 split of ``train/``; ``test`` is the official evaluation
folder (ImageNet's ``val/``). Recipe (METHODS.md §1.3): ``RandomResizedCrop`` + flip for training,
``Resize(256)`` + ``CenterCrop(224)`` for evaluation (scaled with ``image_size``), ImageNet normalization.

``cifar10_jpeg``: the tree ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` (JPEG quality 75), used in place
when extracted under the root, else extracted once from ``<root>/cifar10-jpeg.tar.gz`` into the cache
(:func:`cnnkit.bench.data.paths.extract_once`). CIFAR transforms and CIFAR-10 normalization, 32×32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision import datasets

from cnnkit.bench.data.paths import DataNotFoundError, extract_once, resolve_data_root
from cnnkit.bench.data.splits import SplitDataset, check_split, make_split, use_augmentation
from cnnkit.bench.data.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_transform, imagenet_transform

__all__ = ["CIFAR10_JPEG_ARCHIVE", "cifar10_jpeg", "find_cifar10_jpeg", "imagefolder"]

CIFAR10_JPEG_DIR = "cifar10-jpeg"
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
_EVAL_FOLDERS = ("test", "val")


def imagefolder(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    image_size: int = 224,
    resize_size: int | None = None,
    subdir: str | None = None,
) -> SplitDataset:
    """An ImageNet-style folder dataset, ``(3, image_size, image_size)`` normalized tensors.

    Args:
        root: the folder holding ``train/`` and ``val/`` (or ``test/``), or a data root with ``subdir``.
        download: folder datasets cannot be downloaded; only accepted for a uniform signature.
        image_size: crop size (224 for ImageNet).
        resize_size: resize before the centre crop in evaluation; default ``round(image_size * 256 / 224)``.
        subdir: a sub-folder of ``root`` holding the dataset (e.g. ``"imagenet"``).
    """
    check_split(split)
    base_dir = resolve_data_root(root)
    if subdir:
        base_dir = base_dir / subdir
    transform = imagenet_transform(
        augment=use_augmentation(split, augment, default=True), image_size=image_size, resize_size=resize_size
    )
    return _folder_split(
        base_dir / "train",
        _split_folder(base_dir, split),
        transform,
        split=split,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def cifar10_jpeg(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """CIFAR-10 as JPEG (q75) ImageFolder, ``(3, 32, 32)`` normalized tensors; 45000/5000/10000.

    ``download`` is accepted for a uniform signature; this copy cannot be downloaded.
    """
    check_split(split)
    tree = find_cifar10_jpeg(resolve_data_root(root))
    augmented = use_augmentation(split, augment, default=True)
    transform = cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=augmented)
    folder = tree / ("test" if split == "test" else "train")
    return _folder_split(
        tree / "train", folder, transform, split=split, val_fraction=val_fraction, split_seed=split_seed
    )


def find_cifar10_jpeg(data_root: Path) -> Path:
    """The ``cifar10-jpeg`` tree: extracted under ``data_root``, else extracted from the archive found at
    ``data_root`` (the archive itself, or a folder holding it directly or in ``cifar10-jpeg/``)."""
    tree = data_root / CIFAR10_JPEG_DIR
    if (tree / "train").is_dir() and (tree / "test").is_dir():
        return tree
    candidates = [data_root, data_root / CIFAR10_JPEG_ARCHIVE, tree / CIFAR10_JPEG_ARCHIVE]
    for archive in candidates:
        if archive.is_file() and archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            extracted = extract_once(archive) / CIFAR10_JPEG_DIR
            if not (extracted / "train").is_dir():
                raise DataNotFoundError(f"{archive} does not contain {CIFAR10_JPEG_DIR}/train/")
            return extracted
    raise DataNotFoundError(
        f"CIFAR-10 JPEG copy not found: neither {tree}/{{train,test}}/ nor "
        f"{data_root / CIFAR10_JPEG_ARCHIVE} exists. Point --data-root / CNNKIT_DATA at the folder holding "
        f"{CIFAR10_JPEG_ARCHIVE}."
    )


def _split_folder(base_dir: Path, split: str) -> Path:
    """``train/`` for the training splits, else the first of ``test/``, ``val/`` that exists (``train/``
    must exist in every case: it defines the classes)."""
    names = ("train",) if split != "test" else _EVAL_FOLDERS
    found = [base_dir / name for name in names if (base_dir / name).is_dir()]
    if (base_dir / "train").is_dir() and found:
        return found[0]
    raise DataNotFoundError(
        f"image folder not found: {base_dir} needs train/ and val/ (or test/) sub-folders of class folders. "
        "Point --data-root / CNNKIT_DATA (and subdir=) at such a folder; folder datasets cannot be "
        "downloaded (--download does not apply)."
    )


class _ImageFolder(datasets.ImageFolder):  # type: ignore[misc]
    """An :class:`~torchvision.datasets.ImageFolder` whose classes are given (those of ``train/``), so the
    evaluation folder's labels match the training folder's even if it lacks a class."""

    def __init__(self, root: Path, *, class_to_idx: dict[str, int], transform: Callable[[Any], Any]) -> None:
        self._given_class_to_idx = dict(class_to_idx)
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        mapping = self._given_class_to_idx
        return sorted(mapping, key=mapping.__getitem__), dict(mapping)


def _folder_split(
    train_dir: Path,
    folder: Path,
    transform: Callable[[Any], Any],
    *,
    split: str,
    val_fraction: float,
    split_seed: int,
) -> SplitDataset:
    _, class_to_idx = datasets.folder.find_classes(str(train_dir))
    base = _ImageFolder(folder, class_to_idx=class_to_idx, transform=transform)
    if not base.samples:
        raise DataNotFoundError(f"no images found in {folder} (expected <class>/<image> files)")
    return make_split(
        base,
        split=split,
        classes=base.classes,
        targets=base.targets,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
