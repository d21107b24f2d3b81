"""``fashion_mnist_mini``: a small real Fashion-MNIST subset shipped with the package (offline default).

The file ``embedded/fashion_mnist_mini.npz`` holds 4000 training images (400 per class) and 1000 test
images (100 per class) of Fashion-MNIST (Xiao et al. 2017, MIT licence, © 2017 Zalando SE; see
``embedded/LICENSE-fashion-mnist.txt``), as uint8, with their labels and their indices in the official
files. It was made by ``packages/bench/scripts/make_embedded_subset.py`` (seed 0); see ``embedded/README.md``.

Splits: ``train`` = 90 % of the 4000 (3600, stratified, seeded), ``val`` = the other 400, ``test`` = the
1000, ``train_full`` = the 4000. Images get exactly the transform of :func:`~cnnkit.bench.data.mnist.
fashion_mnist`, so an item equals the official dataset's item at the stored index.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cnnkit.bench.data.splits import SplitDataset, check_split, make_split, use_augmentation
from cnnkit.bench.data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD, grey_transform

__all__ = ["EMBEDDED_FILE", "ArrayImages", "fashion_mnist_mini", "load_embedded"]

EMBEDDED_FILE = "fashion_mnist_mini.npz"
_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class ArrayImages(Dataset[tuple[torch.Tensor, int]]):
    """Grey uint8 images ``(N, H, W)`` with labels; items are PIL images passed through ``transform``
    (as torchvision's MNIST does), with the label as ``int``.

    Args:
        images: uint8 array ``(N, H, W)``.
        labels: integer array ``(N,)``.
        transform: applied to each PIL image.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, transform: Callable[[Any], Any]) -> None:
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"need uint8 images (N, H, W) and N labels, got {images.shape}, {len(labels)}")
        self.images, self.transform = images, transform
        self.targets: list[int] = np.asarray(labels, dtype=np.int64).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"
        return self.transform(image), self.targets[index]


@functools.lru_cache(maxsize=1)
def load_embedded() -> dict[str, np.ndarray]:
    """The arrays of the embedded file (read once per process; read-only): ``x_train``, ``y_train``,
    ``index_train``, ``x_test``, ``y_test``, ``index_test``."""
    blob = resources.files("cnnkit.bench.data").joinpath("embedded", EMBEDDED_FILE).read_bytes()
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def fashion_mnist_mini(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SplitDataset:
    """The embedded Fashion-MNIST subset, ``(1, 28, 28)`` normalized tensors, 10 classes; 3600/400/1000.

    ``root`` and ``download`` are accepted for a uniform signature and ignored (the data is embedded).
    No augmentation by default; ``augment=True`` adds 2-px translations and horizontal flips.
    """
    check_split(split)
    arrays = load_embedded()
    part = "test" if split == "test" else "train"
    augmented = use_augmentation(split, augment, default=False)
    transform = grey_transform(FASHION_MNIST_MEAN, FASHION_MNIST_STD, augment=augmented, flip=True)
    base = ArrayImages(arrays[f"x_{part}"], arrays[f"y_{part}"], transform=transform)
    return make_split(
        base,
        split=split,
        classes=_CLASSES,
        targets=base.targets,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
