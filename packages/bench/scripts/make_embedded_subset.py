"""Build ``fashion_mnist_mini.npz``, the small real Fashion-MNIST subset shipped inside cnnkit-bench.

Reads the four original idx files (``*-idx?-ubyte.gz``) of Fashion-MNIST, draws a class-balanced, seeded
sample of the official training set and of the official test set, and writes the images (uint8) with
their labels and their indices in the official files to a deterministic (byte-for-byte reproducible) npz.

Usage (from the repository root)::

    python packages/bench/scripts/make_embedded_subset.py \
        --raw-dir ../shared/data/FashionMNIST/raw \
        --out packages/bench/src/cnnkit/bench/data/embedded/fashion_mnist_mini.npz

Only the standard library and numpy are needed. Fashion-MNIST is MIT-licensed, © 2017 Zalando SE.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_RAW_DIR = REPO_ROOT.parent / "shared" / "data" / "FashionMNIST" / "raw"
DEFAULT_OUT = REPO_ROOT / "packages/bench/src/cnnkit/bench/data/embedded/fashion_mnist_mini.npz"
NUM_CLASSES = 10
# Fixed zip timestamp: the archive depends only on the arrays (reproducible builds).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def read_idx(path: Path) -> np.ndarray:
    """Decode a gzipped idx file (unsigned-byte data, big-endian dimension header)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_part(raw_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of ``prefix`` in {``train``, ``t10k``}."""
    images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{raw_dir}: {prefix} has {len(images)} images but {len(labels)} labels")
    return images, labels


def balanced_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class, drawn without replacement."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(picks)).astype(np.int32)


def build_arrays(
    raw_dir: Path, *, train_per_class: int, test_per_class: int, seed: int
) -> dict[str, np.ndarray]:
    """The arrays stored in the npz (train part drawn first, then test part, from one generator)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for part, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images, labels = load_part(raw_dir, prefix)
        index = balanced_sample(labels, per_class, rng)
        arrays[f"x_{part}"] = np.ascontiguousarray(images[index])
        arrays[f"y_{part}"] = labels[index].astype(np.uint8)
        arrays[f"index_{part}"] = index
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-compatible npz with fixed timestamps and order (byte-for-byte reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints the output's size and SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, default=DEFAULT_RAW_DIR, help="folder of the 4 idx .gz files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="npz file to write")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = build_arrays(
        args.raw_dir, train_per_class=args.train_per_class, test_per_class=args.test_per_class, seed=args.seed
    )
    write_npz(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    for name in sorted(arrays):
        print(f"  {name}: {arrays[name].shape} {arrays[name].dtype}")


if __name__ == "__main__":
    main()
