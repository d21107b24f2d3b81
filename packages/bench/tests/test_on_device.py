"""Data on the device: the replayed crop and flip equal torchvision's on the same corner, the draws cover
every corner, the trainer's batches are the loader's, and transforms it cannot replay are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from cnnkit.bench.data.mini import fashion_mnist_mini
from cnnkit.bench.data.on_device import DataOnDeviceError, DeviceSplit, read_augmentation
from cnnkit.bench.data.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_transform, imagenet_transform
from cnnkit.bench.runconfig import RunConfig
from cnnkit.bench.trainer import RunFailed, Trainer, run

CPU = torch.device("cpu")


class RGBImages(Dataset[tuple[torch.Tensor, int]]):
    """Random uint8 RGB images passed through ``transform`` as PIL images (CIFAR-like, offline)."""

    def __init__(self, transform: Any, n: int = 24, size: int = 32) -> None:
        rng = np.random.default_rng(0)
        self.pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def pil(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.pil(index)), index % 10


def _reference(
    image: Image.Image, crop: T.RandomCrop, top: int, left: int, flip: bool, tail: Any
) -> torch.Tensor:
    """torchvision's own functional ops at the given corner: pad with the crop's fill, crop, flip, tail."""
    padded = TF.pad(
        image, list(crop.padding) if not isinstance(crop.padding, int) else crop.padding, fill=crop.fill
    )
    out = TF.crop(padded, top, left, *crop.size)
    return tail(TF.hflip(out) if flip else out)


@pytest.mark.parametrize("kind", ["cifar_rgb", "fashion_mnist_mini"])
def test_replayed_crop_and_flip_equal_torchvision_at_the_drawn_corner(kind: str) -> None:
    if kind == "cifar_rgb":
        augmented = RGBImages(cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=True))
        pil = augmented.pil
    else:
        augmented = fashion_mnist_mini(split="train_full", augment=True)  # type: ignore[assignment]

        def pil(index: int) -> Image.Image:
            return Image.fromarray(augmented.base.images[int(augmented.indices[index])])  # type: ignore[attr-defined]

    steps = augmented.transform.transforms if kind == "cifar_rgb" else augmented.base.transform.transforms  # type: ignore[attr-defined]
    crop = next(s for s in steps if isinstance(s, T.RandomCrop))
    tail = T.Compose([s for s in steps if isinstance(s, (T.ToTensor, T.Normalize))])
    split = DeviceSplit.read(augmented, device=CPU, augmented=True)
    assert split.augment is not None and split.augment.pad == (4 if kind == "cifar_rgb" else 2)
    draws = split.draws(seed=3)
    assert draws is not None and draws.flip.any() and not draws.flip.all()
    indices = torch.arange(min(len(split), 64))
    x, _ = split.batch(indices, draws)
    for i in indices.tolist():
        expected = _reference(pil(i), crop, int(draws.top[i]), int(draws.left[i]), bool(draws.flip[i]), tail)
        torch.testing.assert_close(x[i], expected, rtol=0, atol=1e-6)
    # the corners that show padding were drawn: the fill value (normalized black) is really compared
    assert ((draws.top[indices] == 0) | (draws.left[indices] == 0)).any()
    holder = augmented if kind == "cifar_rgb" else augmented.base  # type: ignore[attr-defined]
    assert holder.transform.transforms == steps  # the dataset's own transform is back after the read


def test_draws_cover_every_corner_and_flip_half_of_the_time_and_follow_the_seed() -> None:
    split = DeviceSplit.read(
        RGBImages(cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=True, size=4), n=4000, size=4),
        device=CPU,
        augmented=True,
    )
    draws = split.draws(seed=11)
    assert draws is not None
    corners = torch.bincount(draws.top * 9 + draws.left, minlength=81)
    assert corners.shape == (81,) and int(corners.min()) > 0  # all 9 x 9 corners of a 4-px padding
    assert abs(float(draws.flip.float().mean()) - 0.5) < 0.04
    again, other = split.draws(seed=11), split.draws(seed=12)
    assert again is not None and other is not None
    assert torch.equal(again.top, draws.top) and torch.equal(again.flip, draws.flip)
    assert not torch.equal(other.top, draws.top)


def _tiny_run(**fields: Any) -> RunConfig:
    return RunConfig(
        model="lenet5_caffe",
        dataset="fashion_mnist_mini",
        epochs=2,
        batch_size=64,
        max_steps_per_epoch=6,
        protocol="val",
        device="cpu",
        measure_latency=False,
        progress=False,
        **fields,
    )


def test_without_augmentation_the_run_on_device_is_the_loader_run() -> None:
    # fashion_mnist_mini is unaugmented by default: the same batches in the same order give the same run,
    # bit for bit (training, validation and test evaluation all read from the device copy)
    loaded, on_device = run(_tiny_run()), run(_tiny_run(data_on_device=True))
    for name in ("train_loss", "best_val_top1", "val_loss", "test_top1", "test_loss"):
        assert on_device[name] == loaded[name], name


def test_trainer_batches_are_the_loader_batches_with_augmentation() -> None:
    trainer = Trainer(_tiny_run(data_on_device=True, dataset_args={"augment": True}))
    trainer._setup()
    loaded = list(trainer._loaded_batches(seed=5))
    gathered = list(trainer._device_batches(seed=5))
    assert [len(y) for _, y in gathered] == [len(y) for _, y in loaded]
    for (_, y_loaded), (_, y_device) in zip(loaded, gathered, strict=True):
        assert torch.equal(y_loaded, y_device)  # the same examples in the same order
    changed = sum(not torch.equal(a, b) for (a, _), (b, _) in zip(loaded, gathered, strict=True))
    assert changed > 0  # and they are augmented


def test_a_transform_that_cannot_be_replayed_is_refused_by_name() -> None:
    with pytest.raises(DataOnDeviceError, match=r"RandomResizedCrop.*supported: RandomCrop"):
        read_augmentation(imagenet_transform(augment=True, image_size=32), image_shape=(3, 32, 32))
    with pytest.raises(DataOnDeviceError, match=r"keeps the image size \(32, 32\).*\(28, 28\)"):
        read_augmentation(T.RandomCrop(28), image_shape=(3, 32, 32))
    with pytest.raises(DataOnDeviceError, match="padding_mode='reflect'"):
        read_augmentation(T.RandomCrop(32, padding=4, padding_mode="reflect"), image_shape=(3, 32, 32))


class _RandomInGetitem(Dataset[tuple[torch.Tensor, int]]):
    """Augments inside ``__getitem__``, with no transform to read."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(1, 4, 4), 0


def test_augmentation_hidden_in_getitem_is_refused_not_dropped() -> None:
    with pytest.raises(DataOnDeviceError, match="differs between two reads"):
        DeviceSplit.read(_RandomInGetitem(), device=CPU, augmented=True)


def test_an_evaluation_split_with_a_random_transform_is_refused_not_frozen() -> None:
    random_eval = RGBImages(cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=True))
    with pytest.raises(DataOnDeviceError, match="item 0 of RGBImages differs between two reads"):
        DeviceSplit.read(random_eval, device=CPU)  # not the training split: stored as read, so refused


def test_the_run_names_the_dataset_when_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnkit.bench.data.mini as mini

    monkeypatch.setattr(
        mini, "grey_transform", lambda *a, **k: T.Compose([T.RandomRotation(5), T.ToTensor()])
    )
    with pytest.raises(RunFailed, match=r"dataset 'fashion_mnist_mini'.*RandomRotation"):
        run(_tiny_run(data_on_device=True))


def test_a_split_larger_than_the_free_memory_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cnnkit.bench.data.on_device as on_device

    plain = fashion_mnist_mini(split="test")  # 1000 images of 1x28x28 float32: 3.1 MB
    assert on_device.free_bytes(CPU) > 3_136_000  # the real function: this machine can hold it
    monkeypatch.setattr(on_device, "free_bytes", lambda device: 3_000_000)
    monkeypatch.setattr(on_device, "_read_all", lambda *a, **k: pytest.fail("read although it cannot fit"))
    with pytest.raises(
        DataOnDeviceError, match=r"1000 images of shape \(1, 28, 28\).*0\.00 GiB of cpu memory"
    ):
        DeviceSplit.read(plain, device=CPU)
