"""A deterministic, learnable synthetic dataset for tests: class pattern + Gaussian noise.

Each class ``c`` has a fixed random pattern ``mu_c`` (standard normal, drawn from ``seed``); example ``i`` is
``mu_{y_i} + noise * eps_i`` with ``eps_i`` drawn from a generator seeded by ``(seed, stream, i)``, so any
item can be produced on its own, identically in every process. Labels are balanced (``i % num_classes``,
permuted). ``train_full`` (stream 0) has ``size`` examples, split 90/10 into ``train``/``val``; ``test``
(stream 1) has ``size`` more. A linear model separates the classes, so a few SGD steps lower the loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from cnnkit.bench.data.splits import SplitDataset, check_split, make_split

__all__ = ["SyntheticImages", "synthetic"]


class SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """``size`` images of ``shape``: class pattern plus noise (see module doc).

    Args:
        size: number of examples.
        shape: ``(C, H, W)`` of each image.
        num_classes: number of classes (patterns).
        seed: seeds the patterns, the labels and the noise.
        stream: separates independent sets drawn with the same patterns (0 = train, 1 = test).
        noise: standard deviation of the noise (patterns have unit variance).
    """

    def __init__(
        self, *, size: int, shape: Sequence[int], num_classes: int, seed: int, stream: int, noise: float = 1.0
    ) -> None:
        if size < 1 or num_classes < 1 or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"invalid synthetic data: {size=}, shape={tuple(shape)}, {num_classes=}")
        self.shape = tuple(int(d) for d in shape)
        self.seed, self.stream, self.noise = seed, stream, noise
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn((num_classes, *self.shape), generator=generator)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + stream))
        self.targets: list[int] = (order % num_classes).tolist()
        self.classes = [f"class_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        label = self.targets[index]
        item_seed = ((self.seed * 7_919 + self.stream) * 1_000_003 + index) % 2**63
        generator = torch.Generator().manual_seed(item_seed)
        image = self.patterns[label] + self.noise * torch.randn(self.shape, generator=generator)
        return image, label


def synthetic(
    *,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    size: int = 256,
    seed: int = 0,
    noise: float = 1.0,
) -> SplitDataset:
    """Synthetic learnable images for tests (see module doc); ``root``, ``download`` and ``augment`` are
    accepted for a uniform signature and ignored (no files, no augmentation)."""
    check_split(split)
    base = SyntheticImages(
        size=size,
        shape=shape,
        num_classes=num_classes,
        seed=seed,
        stream=1 if split == "test" else 0,
        noise=noise,
    )
    return make_split(
        base,
        split=split,
        classes=base.classes,
        targets=base.targets,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
