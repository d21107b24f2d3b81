"""The 90/10 split protocol shared by every dataset.

- ``train``: the official training set minus the held-out part (90 % by default).
- ``val``: the held-out part: ``round(N * val_fraction)`` examples, stratified by class (each class gives
  its share; the rounding remainder goes to the classes with the largest fractional quotas), drawn with
  ``numpy.random.default_rng(split_seed)``. Disjoint from ``train``; never augmented.
- ``test``: the official test set.
- ``train_full``: the whole official training set (the ``last`` protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "EVAL_SPLITS",
    "SPLITS",
    "Split",
    "SplitDataset",
    "check_split",
    "check_val_fraction",
    "make_split",
    "split_indices",
    "stratified_split",
    "use_augmentation",
]

Split = Literal["train", "val", "test", "train_full"]
SPLITS: tuple[str, ...] = ("train", "val", "test", "train_full")
#: Splits that are never augmented.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")


def check_split(split: str) -> None:
    """Raise :class:`ValueError` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def check_val_fraction(val_fraction: float) -> None:
    """Raise :class:`ValueError` unless ``0 < val_fraction < 1``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


def use_augmentation(split: str, augment: bool | None, *, default: bool) -> bool:
    """Whether ``split`` is augmented: never for ``val``/``test``; else ``augment``, or the dataset's
    ``default`` (its recipe's standard) when ``augment`` is None."""
    if split in EVAL_SPLITS:
        return False
    return default if augment is None else bool(augment)


def stratified_split(
    targets: Sequence[int] | np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_indices, val_indices)`` of a stratified, seeded hold-out split (see module doc)."""
    check_val_fraction(val_fraction)
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    _, counts = np.unique(labels, return_counts=True)
    n_val = int(np.floor(len(labels) * val_fraction + 0.5))
    per_class = _val_counts(counts, n_val=n_val, fraction=val_fraction)
    rng = np.random.default_rng(seed)
    grouped = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
    picks = [rng.permutation(members)[:k] for members, k in zip(grouped, per_class, strict=True)]
    val = np.sort(np.concatenate(picks).astype(np.int64))
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), val


def _val_counts(counts: np.ndarray, *, n_val: int, fraction: float) -> np.ndarray:
    """Per-class hold-out sizes summing to ``n_val`` (largest-remainder apportionment)."""
    quotas = counts * fraction
    per_class = np.floor(quotas).astype(np.int64)
    remainder = n_val - int(per_class.sum())
    order = np.argsort(-(quotas - per_class), kind="stable")
    per_class[order[: max(remainder, 0)]] += 1
    capped: np.ndarray = np.minimum(per_class, counts)
    return capped


def split_indices(
    split: str, targets: Sequence[int] | np.ndarray, *, val_fraction: float, seed: int
) -> np.ndarray:
    """Indices into the official training set (``train``/``val``/``train_full``) or test set (``test``)."""
    check_split(split)
    if split in ("test", "train_full"):
        check_val_fraction(val_fraction)
        return np.arange(len(targets), dtype=np.int64)
    train, val = stratified_split(targets, val_fraction=val_fraction, seed=seed)
    return train if split == "train" else val


class SplitDataset(Dataset[tuple[torch.Tensor, int]]):
    """One split of a dataset: ``base`` restricted to ``indices``, yielding ``(image tensor, int label)``.

    Args:
        base: the underlying dataset (official training or test set, with this split's transform).
        indices: positions in ``base`` that form this split.
        split: the split's name.
        classes: class names, index = label.
        targets: labels of all of ``base`` (used to expose this split's labels without loading images).

    Attributes:
        indices: ``np.ndarray`` of int64 positions in ``base`` (stable across runs for a given seed).
        targets: labels of this split, aligned with ``indices``.
    """

    def __init__(
        self,
        base: Dataset[Any],
        indices: np.ndarray,
        *,
        split: str,
        classes: Sequence[str],
        targets: Sequence[int] | np.ndarray,
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.split = split
        self.classes = list(classes)
        self.targets: list[int] = np.asarray(targets, dtype=np.int64)[self.indices].tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.indices[index])]
        return image, int(label)

    def __repr__(self) -> str:
        base = type(self.base).__name__
        return f"{type(self).__name__}(split={self.split!r}, size={len(self)}, base={base})"


def make_split(
    base: Dataset[Any],
    *,
    split: str,
    classes: Sequence[str],
    targets: Sequence[int] | np.ndarray,
    val_fraction: float,
    split_seed: int,
) -> SplitDataset:
    """Wrap ``base`` (the official training set, or the test set when ``split == "test"``) as ``split``."""
    indices = split_indices(split, targets, val_fraction=val_fraction, seed=split_seed)
    return SplitDataset(base, indices, split=split, classes=classes, targets=targets)
