"""Splits held as one tensor on the run's device, augmented there in batches (``RunConfig.data_on_device``).

Why: on a GPU, small images leave the model little work per step, so decoding and augmenting every image
in loader workers every epoch can set the pace (on one H100, the bench trained a CIFAR ResNet-18 and a
ResNet-34 at nearly the same speed, 326 s and 346 s for 40 epochs, although the ResNet-34 does twice the
work; not profiled). Here every split is read once, without augmentation, into one tensor on the device,
and each training batch is cropped and flipped there by one gather. Measured with
``benchmarks/data_on_device.py`` (CIFAR-10 JPEG, batch 128, 2-core AMD EPYC, no workers): the batch stream
alone runs 15x faster (751 against 49 batches/s); CPU training of a ResNet-18 (1.5 s per step) does not
change (0.98x, within noise), and the one-time read costs 7.4 s.

The augmentation is read from the training split's torchvision transform, so it is the dataset's own
recipe, replayed exactly (the split is read through the same transform with its random steps left out):

- ``RandomCrop(size, padding=p)`` with constant padding and ``size`` equal to the image size: a top-left
  corner uniform in ``[0, 2p]²`` of the padded image; padded pixels take the crop's ``fill`` as the
  per-pixel steps that follow it make it (for CIFAR: black, normalized, ``(0 − mean) / std``).
- ``RandomHorizontalFlip(p)``, before or after the crop (the corner's distribution is symmetric).
- Per-pixel deterministic steps: ``ToTensor``, ``PILToTensor``, ``ConvertImageDtype``, ``Normalize``.

Any other transform (``RandomResizedCrop``, ``ColorJitter``, ...), or a second crop or flip, is refused
with an error naming it. A training split without a readable ``transform``, and every evaluation split,
must give the same tensor on two reads of each of its first 16 items; one that does not (augmentation
inside ``__getitem__``) is refused rather than trained unaugmented or evaluated on one frozen draw (a
check, not a proof: a rarely random item could pass it).

Draws: each epoch draws one (top, left, flip) per example of the split, indexed by its position in the
split, from a generator seeded with the epoch's data seed. A batch's augmentation therefore does not
depend on the batching or on how DDP ranks share it, and a resumed run repeats it. The draws differ from
torchvision's per-sample ones (a different random stream, the same distribution). Memory: the split as
float32, ``N·C·H·W·4`` bytes (CIFAR-10's 50,000 training images: 614 MB), read in host memory first; a
split that does not fit in the free host or device memory is refused before it is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

__all__ = [
    "BatchAugment",
    "DataOnDeviceError",
    "DeviceSplit",
    "Draws",
    "free_bytes",
    "read_augmentation",
]

_PER_PIXEL = (T.ToTensor, T.PILToTensor, T.ConvertImageDtype, T.Normalize)
_SUPPORTED = "RandomCrop (constant padding, size = image size), RandomHorizontalFlip, " + ", ".join(
    t.__name__ for t in _PER_PIXEL
)
_READS_COMPARED = 16


class DataOnDeviceError(ValueError):
    """The dataset's training augmentation cannot be replayed on the device; the message says why."""


@dataclass(frozen=True)
class BatchAugment:
    """A random crop of the padded image (``pad`` pixels each side, 0: none) and a horizontal flip with
    probability ``flip_p``; ``fill`` (one value per channel) is a padded pixel's value in the stored
    tensors."""

    pad: int = 0
    flip_p: float = 0.0
    fill: tuple[float, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.pad == 0 and self.flip_p == 0.0


@dataclass(frozen=True)
class Draws:
    """One epoch's augmentation: per example of the split, the crop's corner and whether it is flipped."""

    top: Tensor
    left: Tensor
    flip: Tensor


def _transform_holder(dataset: Dataset[Any]) -> Any:
    """The object whose ``transform`` makes the dataset's items: the dataset or its ``base``; None if
    neither has one."""
    holders: tuple[Any, ...] = (dataset, getattr(dataset, "base", None))
    for holder in holders:
        if getattr(holder, "transform", None) is not None:
            return holder
    return None


@contextmanager
def _transform_swapped(holder: Any, transform: Any) -> Iterator[None]:
    saved = holder.transform
    holder.transform = transform
    try:
        yield
    finally:
        holder.transform = saved


def _steps(transform: Any) -> list[Any]:
    return list(transform.transforms) if isinstance(transform, T.Compose) else [transform]


def _uniform_padding(crop: T.RandomCrop, size: Sequence[int]) -> int:
    padding = crop.padding or 0
    sides = [padding] if isinstance(padding, int) else list(padding)
    if len(set(sides)) != 1 or crop.padding_mode != "constant":
        raise DataOnDeviceError(
            f"data_on_device replays RandomCrop only with the same constant padding on every side; the "
            f"training transform has padding={crop.padding!r}, padding_mode={crop.padding_mode!r}"
        )
    if tuple(crop.size) != tuple(size):
        raise DataOnDeviceError(
            f"data_on_device replays RandomCrop only when it keeps the image size {tuple(size)}; the "
            f"training transform crops to {tuple(crop.size)}"
        )
    return int(sides[0])


def _fill_value(crop: T.RandomCrop, after: list[Any], channels: int) -> tuple[float, ...]:
    """A padded pixel's value after the per-pixel steps that follow the crop: a constant image of the
    crop's ``fill`` passed through them (random steps, which leave a constant image as it is, skipped)."""
    from PIL import Image

    fill = crop.fill
    values = (fill,) * channels if isinstance(fill, (int, float)) else tuple(fill)
    if len(values) != channels:
        raise DataOnDeviceError(
            f"the training transform's RandomCrop fill {fill!r} has {len(values)} values for "
            f"{channels} channels"
        )
    per_pixel = [step for step in after if isinstance(step, _PER_PIXEL)]
    if any(isinstance(step, (T.ToTensor, T.PILToTensor)) for step in per_pixel):
        if any(float(v) != int(v) or not 0 <= int(v) <= 255 for v in values):
            raise DataOnDeviceError(
                f"the training transform pads PIL images with fill {fill!r}; expected integers in [0, 255]"
            )
        color = tuple(int(v) for v in values)
        image: Any = Image.new("L" if channels == 1 else "RGB", (1, 1), color[0] if channels == 1 else color)
    else:  # the crop works on tensors: its fill is already in tensor units
        image = torch.tensor([float(v) for v in values], dtype=torch.float32).view(channels, 1, 1)
    for step in per_pixel:
        image = step(image)
    return tuple(float(v) for v in torch.as_tensor(image, dtype=torch.float32).reshape(channels))


def read_augmentation(transform: Any, *, image_shape: Sequence[int]) -> BatchAugment:
    """A training ``transform``'s random crop and flip as a :class:`BatchAugment`.

    Raises:
        DataOnDeviceError: a step of the transform that cannot be replayed on the device.
    """
    channels, size = int(image_shape[0]), tuple(int(v) for v in image_shape[1:])
    steps = _steps(transform)
    pad, flip_p, fill = 0, 0.0, tuple[float, ...]()
    randoms = [
        type(step).__name__ for step in steps if isinstance(step, (T.RandomCrop, T.RandomHorizontalFlip))
    ]
    for name in set(randoms):
        if randoms.count(name) > 1:
            raise DataOnDeviceError(
                f"data_on_device replays one {name} per transform; the training transform has "
                f"{randoms.count(name)}. Train with data_on_device=False."
            )
    for position, step in enumerate(steps):
        if isinstance(step, T.RandomCrop):
            pad = _uniform_padding(step, size)
            fill = _fill_value(step, steps[position + 1 :], channels)
        elif isinstance(step, T.RandomHorizontalFlip):
            flip_p = float(step.p)
        elif not isinstance(step, _PER_PIXEL):
            raise DataOnDeviceError(
                f"data_on_device cannot replay the training transform {type(step).__name__} on the device; "
                f"supported: {_SUPPORTED}. Train with data_on_device=False."
            )
    return BatchAugment(pad=pad, flip_p=flip_p, fill=fill)


def _without_random_steps(transform: Any) -> T.Compose:
    return T.Compose(
        [s for s in _steps(transform) if not isinstance(s, (T.RandomCrop, T.RandomHorizontalFlip))]
    )


def _check_deterministic(dataset: Dataset[Any]) -> None:
    """A split stored as read once must give the same tensor on every read of an item."""
    sized: Any = dataset
    for index in range(min(_READS_COMPARED, len(sized))):
        first, second = dataset[index][0], dataset[index][0]
        if not torch.equal(torch.as_tensor(first), torch.as_tensor(second)):
            raise DataOnDeviceError(
                f"data_on_device stores this split as read once, but item {index} of "
                f"{type(dataset).__name__} differs between two reads: a random augmentation outside a "
                "readable torchvision transform (inside __getitem__, or on an evaluation split). Train "
                "with data_on_device=False."
            )


def _read_all(dataset: Dataset[Any], *, num_workers: int, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Every item of ``dataset`` in order, as one float32 image tensor and one int64 label tensor."""
    # its own generator: a loader without one draws its workers' base seed from the global RNG, which
    # would change the model's initialisation that follows
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )
    sized: Any = dataset
    images: Tensor | None = None
    labels = torch.empty(len(sized), dtype=torch.int64)
    start = 0
    for x, y in loader:
        if images is None:
            images = torch.empty((len(sized), *x.shape[1:]), dtype=torch.float32)
        images[start : start + len(x)] = x
        labels[start : start + len(x)] = y
        start += len(x)
    if images is None:
        raise DataOnDeviceError("data_on_device: the split is empty")
    return images, labels


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (host RAM: ``MemAvailable`` of /proc/meminfo where readable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_fits(dataset: Dataset[Any], shape: tuple[int, ...], device: torch.device) -> None:
    """Refuse, before reading, a split that does not fit as float32 in host memory (it is read there
    first) or in the device's."""
    sized: Any = dataset
    needed = len(sized) * math.prod(shape) * 4
    places = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    for place in places:
        free = free_bytes(place)
        if needed > free:
            raise DataOnDeviceError(
                f"data_on_device: the split ({len(sized)} images of shape {shape}) needs "
                f"{needed / 2**30:.2f} GiB as float32, but only {free / 2**30:.2f} GiB of {place} memory is "
                "free. Train with data_on_device=False."
            )


class DeviceSplit:
    """A split as one image tensor and one label tensor on ``device``; ``augment`` replays the training
    augmentation on batches (None: the split is used as stored)."""

    def __init__(self, images: Tensor, labels: Tensor, augment: BatchAugment | None = None) -> None:
        self.images, self.labels = images, labels
        self.augment = augment if augment is not None and not augment.is_identity else None
        self.fill: Tensor | None = None
        if self.augment is not None and self.augment.pad:
            if len(self.augment.fill) != images.shape[1]:
                raise DataOnDeviceError(
                    f"the crop's fill has {len(self.augment.fill)} values for {images.shape[1]} channels"
                )
            self.fill = torch.tensor(self.augment.fill, dtype=images.dtype, device=images.device)

    @classmethod
    def read(
        cls, dataset: Dataset[Any], *, device: torch.device, augmented: bool = False, num_workers: int = 0
    ) -> DeviceSplit:
        """Read ``dataset`` onto ``device``. With ``augmented`` (the training split), its transform's random
        crop and flip are left out of the read and replayed per batch; otherwise (or when it has no readable
        transform) its items must not be random, and are stored as read. The global RNG is left as it was
        (the model built next initialises as without ``data_on_device``)."""
        with torch.random.fork_rng(devices=[]):
            holder = _transform_holder(dataset) if augmented else None
            if holder is None:
                _check_deterministic(dataset)
                return cls._read_as_is(dataset, None, device, num_workers)
            augment_steps = holder.transform
            with _transform_swapped(holder, _without_random_steps(augment_steps)):
                return cls._read_as_is(dataset, augment_steps, device, num_workers)

    @classmethod
    def _read_as_is(
        cls, dataset: Dataset[Any], augment_steps: Any, device: torch.device, num_workers: int
    ) -> DeviceSplit:
        """Check, then read ``dataset`` as its transform now stands; ``augment_steps`` (the training
        transform, or None) is replayed per batch."""
        shape = tuple(torch.as_tensor(dataset[0][0]).shape)
        augment = None if augment_steps is None else read_augmentation(augment_steps, image_shape=shape)
        _check_fits(dataset, shape, device)
        images, labels = _read_all(dataset, num_workers=num_workers)
        return cls(images.to(device), labels.to(device), augment)

    def __len__(self) -> int:
        return len(self.labels)

    def draws(self, seed: int) -> Draws | None:
        """The augmentation of the epoch whose data seed is ``seed`` (None: nothing random)."""
        if self.augment is None:
            return None
        generator = torch.Generator().manual_seed(seed)
        n, corners = len(self), 2 * self.augment.pad + 1
        top = torch.randint(corners, (n,), generator=generator)
        left = torch.randint(corners, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.augment.flip_p
        device = self.images.device
        return Draws(top.to(device), left.to(device), flip.to(device))

    def batch(self, indices: Tensor, draws: Draws | None = None) -> tuple[Tensor, Tensor]:
        """Images and labels of the examples at ``indices`` (positions in the split), augmented by
        ``draws`` when given."""
        indices = indices.to(self.images.device)  # a no-op for the trainer, which passes device indices
        labels = self.labels[indices]
        if draws is None or self.augment is None:
            return self.images[indices], labels
        return self._crop_and_flip(indices, draws), labels

    def _crop_and_flip(self, indices: Tensor, draws: Draws) -> Tensor:
        """Output pixel (a, b) of example i is stored pixel (top + a − pad, left + b' − pad), with b' = b or
        W − 1 − b when flipped; a pixel outside the image is the fill."""
        assert self.augment is not None
        _, channels, height, width = self.images.shape
        pad, device = self.augment.pad, self.images.device
        top, left, flip = draws.top[indices], draws.left[indices], draws.flip[indices]
        cols = torch.arange(width, device=device)
        rows = top[:, None] + torch.arange(height, device=device) - pad  # (B, H)
        cols = left[:, None] + torch.where(flip[:, None], width - 1 - cols, cols) - pad  # (B, W)
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        picked = self.images[
            indices[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            rows.clamp(0, height - 1)[:, None, :, None],
            cols.clamp(0, width - 1)[:, None, None, :],
        ]
        if self.fill is None:
            return picked
        return torch.where(inside[:, None], picked, self.fill.view(1, channels, 1, 1))

    def slices(self, batch_size: int, part: range | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The examples of ``part`` (default: all) in order, ``batch_size`` at a time, unaugmented."""
        part = range(len(self)) if part is None else part
        for start in range(part.start, part.stop, batch_size):
            stop = min(start + batch_size, part.stop)
            yield self.images[start:stop], self.labels[start:stop]
