"""Data on the device: the replayed crop and flip equal torchvision's on the same corner, the draws cover
every corner, the trainer's batches are the loader's, and transforms it cannot replay are refused."""

from __future__ import annotations

import itertools
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
    image: Image.Image, crop: T.RandomCrop, draw: tuple[int, int, bool], tail: Any, *, flip_first: bool
) -> torch.Tensor:
    """torchvision's own functional ops at the drawn corner: pad with the crop's fill, crop, flip, tail.
    A transform that flips first gives the same image at the mirrored corner ``2p − left``."""
    top, left, flip = draw
    padding = crop.padding if isinstance(crop.padding, int) else list(crop.padding)
    if flip and flip_first:
        mirrored = 2 * int(crop.padding) - left
        return tail(TF.crop(TF.pad(TF.hflip(image), padding, fill=crop.fill), top, mirrored, *crop.size))
    out = TF.crop(TF.pad(image, padding, fill=crop.fill), top, left, *crop.size)
    return tail(TF.hflip(out) if flip else out)


GREY_FILL_FLIP_FIRST = T.Compose(
    [
        T.RandomHorizontalFlip(),
        T.RandomCrop(32, padding=3, fill=128),
        T.ToTensor(),
        T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ]
)


@pytest.mark.parametrize("kind", ["cifar_rgb", "fashion_mnist_mini", "rgb_grey_fill_flip_first"])
def test_replayed_crop_and_flip_equal_torchvision_at_the_drawn_corner(kind: str) -> None:
    if kind == "fashion_mnist_mini":
        augmented: Any = fashion_mnist_mini(split="train_full", augment=True)
        holder = augmented.base

        def pil(index: int) -> Image.Image:
            return Image.fromarray(augmented.base.images[int(augmented.indices[index])])

    else:
        recipe = GREY_FILL_FLIP_FIRST if kind.endswith("flip_first") else None
        augmented = RGBImages(recipe or cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=True))
        holder, pil = augmented, augmented.pil
    steps = holder.transform.transforms
    crop = next(s for s in steps if isinstance(s, T.RandomCrop))
    tail = T.Compose([s for s in steps if isinstance(s, (T.ToTensor, T.Normalize))])
    split = DeviceSplit.read(augmented, device=CPU, augmented=True)
    assert split.augment is not None and split.augment.pad == crop.padding
    draws = split.draws(seed=3)
    assert draws is not None and draws.flip.any() and not draws.flip.all()
    indices = torch.arange(min(len(split), 64))
    x, _ = split.batch(indices, draws)
    for i in indices.tolist():
        draw = (int(draws.top[i]), int(draws.left[i]), bool(draws.flip[i]))
        expected = _reference(pil(i), crop, draw, tail, flip_first=kind.endswith("flip_first"))
        torch.testing.assert_close(x[i], expected, rtol=0, atol=1e-6)
    # the corners that show padding were drawn: the fill value (black or grey, normalized) is compared
    assert ((draws.top[indices] == 0) | (draws.left[indices] == 0)).any()
    assert holder.transform.transforms == steps  # the dataset's own transform is back after the read


def test_reading_leaves_the_global_rng_as_it_was() -> None:
    # the model is built right after the data: its initialisation must not depend on data_on_device
    augmented = RGBImages(cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=True))
    state = torch.get_rng_state()
    DeviceSplit.read(augmented, device=CPU, augmented=True)
    DeviceSplit.read(RGBImages(cifar_transform(CIFAR10_MEAN, CIFAR10_STD, augment=False)), device=CPU)
    assert torch.equal(torch.get_rng_state(), state)


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
    loaded = list(itertools.islice(trainer._loaded_batches(seed=5), trainer.steps_per_epoch))
    gathered = list(trainer._device_batches(seed=5))
    assert [len(y) for _, y in gathered] == [len(y) for _, y in loaded]
    for (_, y_loaded), (_, y_device) in zip(loaded, gathered, strict=True):
        assert torch.equal(y_loaded, y_device)  # the same examples in the same order
    changed = sum(not torch.equal(a, b) for (a, _), (b, _) in zip(loaded, gathered, strict=True))
    assert changed > 0  # and they are augmented


def test_augmented_runs_on_and_off_the_device_start_from_the_same_model() -> None:
    models = []
    for on_device in (False, True):
        trainer = Trainer(_tiny_run(data_on_device=on_device, dataset_args={"augment": True}))
        trainer._setup()
        models.append(trainer.model.state_dict())
    for key, value in models[0].items():
        assert torch.equal(models[1][key], value), key


def test_a_rank_gathers_its_slice_of_the_global_augmented_batch() -> None:
    from cnnkit.bench.distributed import DistInfo

    trainer = Trainer(_tiny_run(data_on_device=True, dataset_args={"augment": True}))
    trainer._setup()
    single = list(trainer._device_batches(seed=9))
    ranks = []
    for rank in (0, 1):
        trainer.dist = DistInfo(rank=rank, world_size=2, local_rank=rank)
        ranks.append(list(trainer._device_batches(seed=9)))
    for whole, first, second in zip(single, *ranks, strict=True):
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])  # the same images, augmented alike
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])


def test_a_transform_that_cannot_be_replayed_is_refused_by_name() -> None:
    with pytest.raises(DataOnDeviceError, match=r"RandomResizedCrop.*supported: RandomCrop"):
        read_augmentation(imagenet_transform(augment=True, image_size=32), image_shape=(3, 32, 32))
    with pytest.raises(DataOnDeviceError, match=r"keeps the image size \(32, 32\).*\(28, 28\)"):
        read_augmentation(T.RandomCrop(28), image_shape=(3, 32, 32))
    flips = T.Compose([T.RandomHorizontalFlip(0.9), T.RandomHorizontalFlip(0.9), T.ToTensor()])
    with pytest.raises(DataOnDeviceError, match="one RandomHorizontalFlip per transform.*has 2"):
        read_augmentation(flips, image_shape=(3, 32, 32))
    with pytest.raises(DataOnDeviceError, match=r"fill \(0, 0\) has 2 values for 3 channels"):
        read_augmentation(
            T.Compose([T.RandomCrop(32, 4, fill=(0, 0)), T.ToTensor()]), image_shape=(3, 32, 32)
        )
    with pytest.raises(DataOnDeviceError, match=r"fill 0.5; expected integers in \[0, 255\]"):
        read_augmentation(T.Compose([T.RandomCrop(32, 4, fill=0.5), T.ToTensor()]), image_shape=(3, 32, 32))
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
