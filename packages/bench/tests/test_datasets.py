"""Datasets of the bench: the embedded default, real MNIST/Fashion-MNIST/CIFAR-10-JPEG from the shared data
folder (read-only), stand-ins for CIFAR pickles and ImageFolder roots, splits, errors and specs.

Tests that need real data look for the ``shared/data`` folder beside the repository root (or
``$CNNKIT_SHARED_DATA``) and skip when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import inspect
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from cnnkit.bench._dataset_specs import DATASET_SPECS
from cnnkit.bench.data import cifar, folder, mini, mnist, paths, splits, synthetic

BENCH_DIR = Path(__file__).resolve().parents[1]
EMBEDDED = BENCH_DIR / "src" / "cnnkit" / "bench" / "data" / "embedded"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FACTORY_KEYWORDS = ("split", "root", "download", "augment", "val_fraction", "split_seed")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets an empty cache and no ``CNNKIT_DATA`` from the caller's environment."""
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNKIT_DATA", raising=False)


@pytest.fixture
def shared_data() -> Path:
    """The read-only shared data folder beside the repository root (or ``$CNNKIT_SHARED_DATA``)."""
    env = os.environ.get("CNNKIT_SHARED_DATA")
    path = Path(env) if env else (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set CNNKIT_SHARED_DATA)")
    return path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IREAD | stat.S_IEXEC if p.is_dir() else stat.S_IREAD)


def _make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IRWXU)


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """Copy ``<src>/<name>/raw/*.gz`` into a fresh root and make that root read-only."""
    roots: list[Path] = []

    def make(src: Path, name: str) -> Path:
        root = tmp_path / f"ro-{name}"
        raw = root / name / "raw"
        raw.mkdir(parents=True)
        for gz in sorted((src / name / "raw").glob("*.gz")):
            shutil.copyfile(gz, raw / gz.name)
        _make_read_only(root)
        roots.append(root)
        return root

    yield make
    for root in roots:
        _make_writable(root)


def _items(dataset: Any, indices: list[int]) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices])


def _transform_types(dataset: splits.SplitDataset) -> list[type]:
    return [type(t) for t in dataset.base.transform.transforms]  # type: ignore[attr-defined]


def _load_script() -> ModuleType:
    path = BENCH_DIR / "scripts" / "make_embedded_subset.py"
    spec = importlib.util.spec_from_file_location("make_embedded_subset", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ splits


def test_stratified_split_is_exact_disjoint_stratified_and_seeded() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 7, size=1003)
    train, val = splits.stratified_split(targets, val_fraction=0.1, seed=3)
    assert len(val) == 100 and len(train) == 903
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(1003))
    counts, val_counts = Counter(targets.tolist()), Counter(targets[val].tolist())
    assert all(abs(val_counts[c] - counts[c] * 0.1) <= 1 for c in counts)
    again, _ = splits.stratified_split(targets, val_fraction=0.1, seed=3)
    other, _ = splits.stratified_split(targets, val_fraction=0.1, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        synthetic.synthetic(split="train", val_fraction=fraction)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="train_full"):
        mini.fashion_mnist_mini(split="validation")


def test_augmentation_only_on_training_splits() -> None:
    assert splits.use_augmentation("train", None, default=True)
    assert splits.use_augmentation("train_full", True, default=False)
    assert not splits.use_augmentation("train", False, default=True)
    assert not splits.use_augmentation("val", True, default=True)
    assert not splits.use_augmentation("test", True, default=True)


# ------------------------------------------------------------------------------------ fashion_mnist_mini


def test_mini_sizes_shapes_and_labels() -> None:
    sizes = {"train": 3600, "val": 400, "test": 1000, "train_full": 4000}
    for split, size in sizes.items():
        ds = mini.fashion_mnist_mini(split=split)
        assert len(ds) == size
        image, label = ds[len(ds) - 1]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert isinstance(label, int)
        assert sorted(set(ds.targets)) == list(range(10)), split
        assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top"


def test_mini_train_and_val_are_disjoint_by_index_and_by_pixels() -> None:
    train, val = mini.fashion_mnist_mini(split="train"), mini.fashion_mnist_mini(split="val")
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    pixels = mini.load_embedded()["x_train"]
    hashes = {
        name: {hashlib.sha1(pixels[i].tobytes()).hexdigest() for i in ds.indices}
        for name, ds in (("train", train), ("val", val))
    }
    assert not hashes["train"] & hashes["val"]
    assert Counter(val.targets) == dict.fromkeys(range(10), 40)  # stratified


def test_mini_file_is_small_and_licensed() -> None:
    npz = EMBEDDED / mini.EMBEDDED_FILE
    assert npz.stat().st_size <= 3 * 1024 * 1024
    licence = (EMBEDDED / "LICENSE-fashion-mnist.txt").read_text(encoding="utf-8")
    assert "MIT" in licence and "Zalando SE" in licence
    assert "make_embedded_subset.py" in (EMBEDDED / "README.md").read_text(encoding="utf-8")
    arrays = mini.load_embedded()
    assert arrays["x_train"].shape == (4000, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert np.bincount(arrays["y_test"]).tolist() == [100] * 10


def test_mini_is_deterministic_across_loads() -> None:
    first = _items(mini.fashion_mnist_mini(split="train"), list(range(0, 3600, 97)))
    mini.load_embedded.cache_clear()
    second = _items(mini.fashion_mnist_mini(split="train"), list(range(0, 3600, 97)))
    assert torch.equal(first, second)
    assert (
        mini.fashion_mnist_mini(split="val", split_seed=1).indices.tolist()
        != mini.fashion_mnist_mini(split="val").indices.tolist()
    )


def test_mini_is_normalized() -> None:
    batch = _items(mini.fashion_mnist_mini(split="train"), list(range(0, 3600, 7)))
    assert abs(float(batch.mean())) < 0.05
    assert abs(float(batch.std()) - 1.0) < 0.05


def test_mini_augmentation_follows_augment_and_never_touches_val() -> None:
    assert T.RandomCrop not in _transform_types(mini.fashion_mnist_mini(split="train"))
    assert T.RandomCrop in _transform_types(mini.fashion_mnist_mini(split="train", augment=True))
    assert T.RandomCrop not in _transform_types(mini.fashion_mnist_mini(split="val", augment=True))


def test_mini_equals_the_official_images_and_the_script_reproduces_it(shared_data: Path) -> None:
    arrays = mini.load_embedded()
    real_train = mnist.fashion_mnist(split="train_full", root=shared_data)
    real_test = mnist.fashion_mnist(split="test", root=shared_data)
    ours_train, ours_test = mini.fashion_mnist_mini(split="train_full"), mini.fashion_mnist_mini(split="test")
    for ours, real, index in (
        (ours_train, real_train, arrays["index_train"]),
        (ours_test, real_test, arrays["index_test"]),
    ):
        for i in (0, 123, len(ours) - 1):
            image, label = ours[i]
            real_image, real_label = real[int(index[i])]
            assert torch.equal(image, real_image) and label == real_label
    rebuilt = _load_script().build_arrays(
        shared_data / "FashionMNIST" / "raw", train_per_class=400, test_per_class=100, seed=0
    )
    assert sorted(rebuilt) == sorted(arrays)
    assert all(np.array_equal(rebuilt[name], arrays[name]) for name in arrays)


# ---------------------------------------------------------------------- real MNIST / Fashion-MNIST (shared)


@pytest.mark.parametrize(("name", "factory"), [("MNIST", mnist.mnist), ("FashionMNIST", mnist.fashion_mnist)])
def test_real_idx_datasets_from_a_read_only_root(
    name: str,
    factory: Callable[..., splits.SplitDataset],
    shared_data: Path,
    read_only_copy: Callable[[Path, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    root = read_only_copy(shared_data, name)
    before = _snapshot(root)
    monkeypatch.setenv("CNNKIT_DATA", str(root))  # the root comes from the environment here
    test = factory(split="test")
    train, val = factory(split="train"), factory(split="val")
    assert (len(test), len(train), len(val)) == (10000, 54000, 6000)
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert len(set(train.indices.tolist()) | set(val.indices.tolist())) == 60000
    image, label = val[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 10
    assert sorted(set(val.targets)) == list(range(10))
    assert _snapshot(root) == before, "the data root was written to"


def test_corrupt_gz_is_reported_not_downloaded(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz, _ in tv_datasets.MNIST.resources:
        with gzip.open(raw / gz, "wb") as f:
            f.write(b"not mnist")
    with pytest.raises(paths.DataNotFoundError, match=r"corrupt.*--download"):
        mnist.mnist(split="test", root=tmp_path / "data")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("writable", [True, False])
def test_download_only_when_asked_and_into_the_cache_for_read_only_roots(
    writable: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def fake_download(self: Any) -> None:  # stands in for the network: writes tiny idx files
        calls.append(self.root)
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", 20), ("t10k", 10)):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28), dtype=np.uint8))
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)

    monkeypatch.setattr(tv_datasets.MNIST, "download", fake_download)
    monkeypatch.setattr(mnist, "is_writable", lambda path: writable)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(paths.DataNotFoundError):
        mnist.mnist(split="test", root=root)
    assert calls == []
    assert len(mnist.mnist(split="test", root=root, download=True)) == 10
    expected = root if writable else paths.cache_dir() / "torchvision"
    assert calls == [str(expected)]
    assert (expected / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert any(root.iterdir()) == writable


# ------------------------------------------------------------------------------- cifar10_jpeg (shared)


@pytest.fixture
def _fast_temporary_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary cache, on tmpfs (``/dev/shm``) when it has room: creating the 60000 files of the CIFAR-10
    tree is file-system bound and took 6-40 s on a busy disk, under a second on tmpfs. Deleted afterwards."""
    shm = Path("/dev/shm")
    use_shm = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3
    cache = Path(tempfile.mkdtemp(prefix="cnnkit-test-cache-", dir=shm if use_shm else None))
    monkeypatch.setenv("CNNKIT_CACHE", str(cache))
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.usefixtures("_fast_temporary_cache")
def test_cifar10_jpeg_extracts_once(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(shared_data)
    train = folder.cifar10_jpeg(split="train", root=shared_data)
    extracted = sorted((paths.cache_dir() / "extracted").iterdir())
    assert len(extracted) == 1, extracted  # no temporary folder left behind
    marker = extracted[0] / paths.EXTRACTED_MARKER
    stamp = marker.stat().st_mtime_ns

    def no_extraction(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the archive was extracted again")

    monkeypatch.setattr(paths, "_safe_extract", no_extraction)
    val = folder.cifar10_jpeg(split="val", root=shared_data)
    test = folder.cifar10_jpeg(split="test", root=shared_data)
    assert marker.stat().st_mtime_ns == stamp
    assert (len(train), len(val), len(test)) == (45000, 5000, 10000)
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert train.classes == sorted(CIFAR10_CLASSES) == CIFAR10_CLASSES == test.classes
    assert Counter(val.targets) == dict.fromkeys(range(10), 500)
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    assert T.RandomCrop in _transform_types(train) and T.RandomCrop not in _transform_types(val)
    assert _snapshot(shared_data) == before


def test_extract_once_is_safe_under_concurrency(tmp_path: Path) -> None:
    src = tmp_path / "src" / "tree"
    src.mkdir(parents=True)
    for i in range(50):
        (src / f"{i}.txt").write_text(str(i))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="tree")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(paths.extract_once(archive))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert sorted(p.name for p in (results[0] / "tree").iterdir()) == sorted(f"{i}.txt" for i in range(50))
    assert [p.name for p in results[0].parent.iterdir()] == [results[0].name]


def test_extract_once_refuses_members_outside_the_target(tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises(ValueError, match="unsafe member"):
        paths.extract_once(archive)
    assert not (paths.cache_dir() / "escaped.txt").exists()
    assert [p.name for p in (paths.cache_dir() / "extracted").iterdir()] == []  # temporary folder removed


# ------------------------------------------------------------------------------------ stand-in datasets


def _write_png_tree(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (20, 24)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split_dir, classes in layout.items():
        for cls, count in classes.items():
            (root / split_dir / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split_dir / cls / f"{i:03d}.png")


def test_imagefolder_on_a_tiny_tree(tmp_path: Path) -> None:
    _write_png_tree(
        tmp_path / "data" / "tiny", {"train": {"ant": 10, "bee": 10, "cat": 10}, "val": {"bee": 2, "cat": 3}}
    )
    kwargs: dict[str, Any] = {"root": tmp_path / "data", "subdir": "tiny", "image_size": 16}
    train, val = folder.imagefolder(split="train", **kwargs), folder.imagefolder(split="val", **kwargs)
    test = folder.imagefolder(split="test", **kwargs)
    assert (len(train), len(val), len(test)) == (27, 3, 5)
    assert Counter(val.targets) == {0: 1, 1: 1, 2: 1}
    assert test.classes == ["ant", "bee", "cat"] and sorted(test.targets) == [1, 1, 2, 2, 2]  # train's labels
    for ds in (train, val, test):
        image, _ = ds[0]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert T.RandomResizedCrop in _transform_types(train)
    assert T.CenterCrop in _transform_types(val) and T.RandomResizedCrop not in _transform_types(val)
    assert T.CenterCrop in _transform_types(folder.imagefolder(split="train", augment=False, **kwargs))


def test_imagefolder_prefers_test_over_val(tmp_path: Path) -> None:
    _write_png_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1}, "test": {"a": 1, "b": 1}}, (8, 8))
    assert len(folder.imagefolder(split="test", root=tmp_path, image_size=8)) == 2


def _write_fake_cifar(root: Path, cls: Any, *, n_train: int, n_test: int, num_classes: int) -> None:
    """Pickled batches in torchvision's layout with random images (md5 checks are patched by the test)."""
    base = root / cls.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    files = [(name, n_train // len(cls.train_list)) for name, _ in cls.train_list]
    for name, n in [*files, (cls.test_list[0][0], n_test)]:
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            label_key: [i % num_classes for i in range(n)],
        }
        (base / name).write_bytes(pickle.dumps(batch))
    meta = {cls.meta["key"]: [f"c{i}" for i in range(num_classes)]}
    (base / cls.meta["filename"]).write_bytes(pickle.dumps(meta))


@pytest.mark.parametrize(("factory", "num_classes"), [(cifar.cifar10, 10), (cifar.cifar100, 100)])
def test_cifar_pickles_on_a_stand_in(
    factory: Callable[..., splits.SplitDataset],
    num_classes: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exists(path: str, md5: str | None = None) -> bool:
        return os.path.isfile(path)

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", exists)
    tv_class = tv_datasets.CIFAR10 if num_classes == 10 else tv_datasets.CIFAR100
    _write_fake_cifar(tmp_path, tv_class, n_train=1000, n_test=200, num_classes=num_classes)
    train, val = factory(split="train", root=tmp_path), factory(split="val", root=tmp_path)
    test = factory(split="test", root=tmp_path)
    assert (len(train), len(val), len(test)) == (900, 100, 200)
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert train.num_classes == num_classes
    image, label = val[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert T.RandomCrop in _transform_types(train) and T.RandomHorizontalFlip in _transform_types(train)
    assert T.RandomCrop not in _transform_types(val) and T.RandomCrop not in _transform_types(test)


# -------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable() -> None:
    ds = synthetic.synthetic(split="train_full", size=200, shape=(3, 8, 8), num_classes=4)
    again = synthetic.synthetic(split="train_full", size=200, shape=(3, 8, 8), num_classes=4)
    x = _items(ds, list(range(200)))
    assert torch.equal(x, _items(again, list(range(200)))) and ds.targets == again.targets
    y = torch.tensor(ds.targets)
    assert Counter(ds.targets) == dict.fromkeys(range(4), 50)
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)
    assert float(torch.cdist(means, means).fill_diagonal_(1e9).min()) > 5.0  # classes differ
    test = synthetic.synthetic(split="test", size=200, shape=(3, 8, 8), num_classes=4)
    assert not torch.equal(_items(test, [0, 1]), x[:2])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_synthetic_splits() -> None:
    train, val = synthetic.synthetic(split="train"), synthetic.synthetic(split="val")
    assert (len(train), len(val), len(synthetic.synthetic(split="test"))) == (230, 26, 256)
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert train[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------- missing data


def test_missing_data_root_names_the_flag_and_the_variable() -> None:
    with pytest.raises(FileNotFoundError, match=r"--data-root.*CNNKIT_DATA"):
        mnist.mnist(split="train")
    with pytest.raises(paths.DataNotFoundError, match="CNNKIT_DATA"):
        paths.resolve_data_root(None)


def test_data_root_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "env"))
    assert paths.resolve_data_root(None) == tmp_path / "env"
    assert paths.resolve_data_root(tmp_path / "arg") == tmp_path / "arg"


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("CNNKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "cnnkit"


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (mnist.mnist, r"MNIST/raw.*--download"),
        (mnist.fashion_mnist, r"FashionMNIST/raw.*--download"),
        (cifar.cifar10, r"cifar-10-batches-py.*--download"),
        (cifar.cifar100, r"cifar-100-python.*--download"),
        (folder.cifar10_jpeg, r"cifar10-jpeg\.tar\.gz"),
        (folder.imagefolder, r"train/ and val/"),
    ],
)
def test_missing_files_name_the_path_and_the_fix(
    factory: Callable[..., Any], expected: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=expected) as info:
        factory(split="test", root=empty)
    assert str(empty) in str(info.value)
    assert "--data-root" in str(info.value) or "--download" in str(info.value)
    assert list(empty.iterdir()) == []


# ------------------------------------------------------------------------------------------------ specs


def test_specs_are_unique_and_their_targets_load() -> None:
    names = [spec.name for spec in DATASET_SPECS]
    assert len(names) == len(set(names))
    assert set(names) >= {
        "fashion_mnist_mini",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "cifar10_jpeg",
        "imagefolder",
        "synthetic",
    }
    for spec in DATASET_SPECS:
        factory = spec.load()
        params = inspect.signature(factory).parameters
        for keyword in FACTORY_KEYWORDS:
            assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (spec.name, keyword)
        assert spec.input_shape is not None and len(spec.input_shape) == 3
        assert spec.paper or spec.name == "synthetic"


@pytest.mark.parametrize("name", ["fashion_mnist_mini", "synthetic"])
def test_offline_specs_match_their_data(name: str) -> None:
    spec = next(s for s in DATASET_SPECS if s.name == name)
    ds = spec.load()(split="test")
    assert tuple(ds[0][0].shape) == spec.input_shape
    assert ds.num_classes == spec.num_classes


def test_importing_the_specs_does_not_import_torch() -> None:
    code = (
        "import sys, cnnkit.bench._dataset_specs as m; assert m.DATASET_SPECS; "
        "heavy = [n for n in ('torch', 'torchvision') if n in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
