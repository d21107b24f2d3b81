"""Where data lives: the data root, the cache, and extracting archives into the cache once.

- The data root is the ``root`` argument, else the environment variable ``CNNKIT_DATA`` (CLI:
  ``--data-root``). Data roots are only ever read: anything that must be written (decompressed idx files,
  extracted archives, downloads into a read-only root) goes to the cache.
- The cache is ``CNNKIT_CACHE``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``.
- Archives are extracted into a fresh temporary folder beside their final place and renamed into place
  when complete, so concurrent threads or processes never see a half-extracted tree.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "EXTRACTED_MARKER",
    "DataNotFoundError",
    "cache_dir",
    "extract_once",
    "file_sha256",
    "is_writable",
    "resolve_data_root",
]

DATA_ENV = "CNNKIT_DATA"
CACHE_ENV = "CNNKIT_CACHE"
#: Written last into an extracted tree: its presence means the extraction completed.
EXTRACTED_MARKER = ".cnnkit-extracted"


class DataNotFoundError(FileNotFoundError):
    """Data files are missing; the message names the path looked at and how to fix it."""


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """The data root: ``root`` if given, else ``$CNNKIT_DATA``; raises :class:`DataNotFoundError` if neither.

    The path is returned expanded and absolute; whether it holds a given dataset is checked by its factory.
    """
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or None
    if root is None:
        raise DataNotFoundError(
            f"no data root given: pass root=PATH (CLI: --data-root PATH) or set the environment variable "
            f"{DATA_ENV}=PATH. The embedded dataset 'fashion_mnist_mini' needs no data root."
        )
    return Path(root).expanduser().absolute()


def cache_dir() -> Path:
    """The cache folder (created on demand by its users): ``$CNNKIT_CACHE``, else
    ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "cnnkit").absolute()


def is_writable(path: Path) -> bool:
    """Whether files can be created in ``path`` (or in its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's content; cached per (path, size, mtime)."""
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract the regular files and folders of ``archive`` into ``dest`` in one sequential pass.

    Links, devices and members with absolute paths or ``..`` are refused. Permissions, owners and times
    are not restored (faster than ``extractall`` and enough for data).
    """
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if Path(member.name).is_absolute() or ".." in parts or not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: refusing to extract unsafe member {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:  # cannot happen for a regular file
                raise ValueError(f"{archive}: cannot read member {member.name!r}")
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def extract_once(archive: Path, *, cache: Path | None = None) -> Path:
    """Extract a tar archive into ``<cache>/extracted/<stem>-<sha256[:16]>/`` unless already done there.

    Returns the folder holding the archive's members. The content hash in the name means an edited archive
    is extracted afresh, and copies of one archive at several paths share one extraction.
    """
    dest = (cache or cache_dir()) / "extracted" / f"{_archive_stem(archive)}-{file_sha256(archive)[:16]}"
    if (dest / EXTRACTED_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _safe_extract(archive, tmp)
        (tmp / EXTRACTED_MARKER).write_text(f"{archive}\n")
        try:
            os.rename(tmp, dest)
        except OSError:  # another thread or process renamed its complete copy first
            if not (dest / EXTRACTED_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
