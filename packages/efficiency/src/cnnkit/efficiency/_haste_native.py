"""HASTE's native per-image kernel: ``_haste_native.c``, built on first use with the system C compiler.

The per-image fast path's bucketing, input merge and filter merge are a dozen small PyTorch ops per layer
and image; at batch 1 on CIFAR-sized maps their dispatch costs as much as the reduced conv saves. The C
kernel does them in one pass over the layer's weight rows (``benchmarks/haste_layer.py`` times both).

Nothing happens at import. :func:`native_kernel` compiles the source once per machine into the cache folder
(``$CNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnkit``, else ``~/.cache/cnnkit``; the file name holds a hash
of the source, the compiler, its flags and the CPU, since it is built with ``-march=native``; a changed
source rebuilds), loads it with ``ctypes`` and
checks it against PyTorch on a small input before the first use. The compiler is ``$CC``, else Python's
configured one, else ``cc``. ``CNNKIT_HASTE_NATIVE=0`` turns the kernel off (``kernel="auto"`` then uses
PyTorch ops; ``kernel="native"`` raises).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from cnnkit.efficiency._haste_kernels import scratch

__all__ = ["NativeKernelUnavailable", "native_kernel", "native_unavailable_reason"]

_SOURCE = Path(__file__).with_name("_haste_native.c")
_FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off")
_TUNE = ("-march=native",)  # the row sums at this CPU's vector width; dropped if the compiler refuses it
_LOCK = threading.Lock()
_state: dict[str, object] = {}  # "kernel": the loaded kernel, or "reason": why there is none

MergeImage = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], int]


class NativeKernelUnavailable(RuntimeError):
    """HASTE's native kernel could not be built or loaded (the message says why)."""


def native_kernel() -> MergeImage | None:
    """The loaded kernel (built on the first call), or ``None`` if it cannot be had on this machine.

    The kernel is ``merge_image(codes, x, weight_rows, means, merged) -> b``: ``codes`` ``(C,)`` int64,
    ``x`` ``(C, HW)``, ``weight_rows`` ``(C, R)``, ``means`` and ``merged`` ``(C·HW,)`` and ``(C·R,)``
    float32 outputs (their first ``b`` rows are written), all contiguous and on the CPU.
    """
    if "kernel" not in _state and "reason" not in _state:
        with _LOCK:
            if "kernel" not in _state and "reason" not in _state:
                _load()
    return _state.get("kernel")  # type: ignore[return-value]


def native_unavailable_reason() -> str | None:
    """Why :func:`native_kernel` gives ``None`` (it tries to build first), or ``None`` if it is available."""
    native_kernel()
    reason = _state.get("reason")
    return None if reason is None else str(reason)


def _load() -> None:
    try:
        kernel = _bind(ctypes.CDLL(str(_build())))
        _self_check(kernel)
        _state["kernel"] = kernel
    except NativeKernelUnavailable as err:
        _state["reason"] = str(err)
    except OSError as err:
        _state["reason"] = f"the compiled kernel could not be loaded: {err}"


def _compiler() -> list[str]:
    if os.environ.get("CNNKIT_HASTE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise NativeKernelUnavailable("turned off by CNNKIT_HASTE_NATIVE=0")
    configured = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    command = shlex.split(str(configured))
    for candidate in (command, ["cc"], ["gcc"], ["clang"]):
        if candidate and shutil.which(candidate[0]):
            return candidate
    raise NativeKernelUnavailable(
        f"no C compiler found (tried {command[0] if command else '$CC'}, cc, gcc, clang): install one, "
        "set CC, or use kernel='torch'"
    )


def _cache_dir() -> Path:
    root = os.environ.get("CNNKIT_CACHE_DIR")
    if root:
        return Path(root) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cnnkit" / "native"


def _cpu_fingerprint() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags where Linux lists them."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    wanted = ("model name", "flags", "features", "cpu model")
    seen = {line.split(":")[0].strip().lower(): line for line in lines if ":" in line}
    return "\n".join([platform.machine(), platform.processor(), *(seen.get(k, "") for k in wanted)])


def _build() -> Path:
    compiler = _compiler()
    command = " ".join(compiler + list(_FLAGS + _TUNE))
    parts = [_SOURCE.read_bytes(), command.encode(), _cpu_fingerprint().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    target = _cache_dir() / f"haste_native-{key}.so"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = target.parent
    except OSError:  # an unwritable cache folder: build into a private temporary one
        folder = Path(tempfile.mkdtemp(prefix="cnnkit-native-"))
        target = folder / target.name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    result = _compile(compiler, _FLAGS + _TUNE, tmp)
    if result.returncode != 0:
        result = _compile(compiler, _FLAGS, tmp)
    if result.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise NativeKernelUnavailable(
            f"compiling {_SOURCE.name} with {compiler[0]} failed: {' | '.join(detail)}"
        )
    os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target


def _compile(compiler: list[str], flags: tuple[str, ...], output: str) -> subprocess.CompletedProcess[str]:
    command = [*compiler, *flags, "-o", output, str(_SOURCE)]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(command, 1, "", str(err))


def _bind(lib: ctypes.CDLL) -> MergeImage:
    merge = lib.haste_merge_image
    merge.restype = ctypes.c_int64
    merge.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    merge.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    work_size = lib.haste_work_size
    work_size.restype = ctypes.c_int64
    work_size.argtypes = [ctypes.c_int64]

    def merge_image(codes: Tensor, x: Tensor, weight_rows: Tensor, means: Tensor, merged: Tensor) -> int:
        c, hw = x.shape
        r = weight_rows.shape[1]
        _check_operands(codes, x, weight_rows, means, merged)
        buf = scratch(int(work_size(c)), codes)  # the kernels' reused buffers: int64, its own key
        b = int(
            merge(
                codes.data_ptr(),
                c,
                x.data_ptr(),
                hw,
                weight_rows.data_ptr(),
                r,
                means.data_ptr(),
                merged.data_ptr(),
                buf.data_ptr(),
                buf.numel(),
            )
        )
        if b < 0:
            raise RuntimeError("HASTE native kernel: scratch too small (a bug)")
        return b

    return merge_image


def _check_operands(codes: Tensor, x: Tensor, weight_rows: Tensor, means: Tensor, merged: Tensor) -> None:
    """The kernel reads raw memory: refuse anything but what it was written for."""
    c, hw = x.shape
    r = weight_rows.shape[1]
    expected = (
        (codes, torch.int64, (c,)),
        (x, torch.float32, (c, hw)),
        (weight_rows, torch.float32, (c, r)),
    )
    for tensor, dtype, shape in expected:
        if tensor.dtype != dtype or tuple(tensor.shape) != shape or not tensor.is_contiguous():
            raise ValueError(
                f"HASTE native kernel: expected a contiguous {dtype} {shape}, got {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
        if tensor.device.type != "cpu":
            raise ValueError("HASTE native kernel: CPU tensors only")
    for out, numel in ((means, c * hw), (merged, c * r)):
        if (
            out.dtype != torch.float32
            or out.numel() < numel
            or not out.is_contiguous()
            or out.device.type != "cpu"
        ):
            raise ValueError(
                f"HASTE native kernel: output buffers must be contiguous float32 CPU tensors of "
                f">= {numel} elements"
            )


def _self_check(kernel: MergeImage) -> None:
    """Compare the kernel with PyTorch on a small input (a miscompiled kernel must not be used)."""
    gen = torch.Generator().manual_seed(0)
    c, hw, r = 80, 5, 11
    codes = torch.randint(-(2**62), 2**62, (c,), generator=gen)  # both signs: the radix sort's sign handling
    codes[1::2] = codes[0::2]  # 40 buckets of two channels: more than the insertion sort handles
    x = torch.randn(c, hw, generator=gen)
    rows = torch.randn(c, r, generator=gen)
    means, merged = torch.empty(c * hw), torch.empty(c * r)
    b = kernel(codes, x, rows, means, merged)
    distinct, bucket = torch.unique(codes, sorted=True, return_inverse=True)
    want_merged = torch.zeros(len(distinct), r).index_add_(0, bucket, rows)
    want_means = torch.zeros(len(distinct), hw).index_add_(0, bucket, x) / torch.bincount(bucket).unsqueeze(1)
    ok = b == len(distinct)
    ok = ok and torch.allclose(merged[: b * r].view(b, r), want_merged, atol=1e-5)
    ok = ok and torch.allclose(means[: b * hw].view(b, hw), want_means, atol=1e-6)
    if not ok:
        raise NativeKernelUnavailable("the compiled kernel failed its self-check against PyTorch")
