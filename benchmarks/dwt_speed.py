"""Speed and agreement of our torch DWT (``cnnkit.regularizers._dwt``) vs pytorch_wavelets and ptwt.

What is measured, for the transforms of Spectral Wavelet Dropout (SWD, METHODS.md §3b): db3, mode ``"zero"``,

- **1-D**: the 3-level DWT of each channel's flattened map, (B, C, H·W), and its inverse;
- **2-D**: the 1-level 2-D DWT of each channel, (B, C, H, W), and its inverse;

on random float32 maps shaped like the CIFAR ResNet-18 stages, (32, 64, 32, 32), (32, 128, 16, 16),
(128, 256, 8, 8), (128, 512, 4, 4) (stages 1-4; batch 32 for the large maps, to keep the run short), and an
odd size, (32, 256, 7, 7). Each timed call is one SWD step with a fixed mask: forward transform, detail
bands scaled by (1, 0, 1)/(1 - p) with p = 0.1, inverse transform, crop to the input size. Contenders:

- **conv**: our ``dwt1d``/``idwt1d`` and ``dwt2d``/``idwt2d`` (strided convolutions, all bands of a level
  in one kernel);
- **matmul**: SWD's ``impl="matmul"``: ``x @ (I + Σ_k w_k Q_k)`` with the dense (N×N) band projections
  ``band_projections(...)``; assembling the operator (one ``addmm``) is part of the timed call;
- **struct**: SWD's ``impl="structured"``, the same operator in O(N) form: 1-D one polyphase ``conv1d``
  (``polyphase_kernels``), 2-D the separable per-axis projections (``axis_projection``); assembling the
  kernel is part of the timed call;
- **pytorch_wavelets**: ``DWT1DForward(J=3)``/``DWT1DInverse``, ``DWTForward(J=1)``/``DWTInverse``;
- **ptwt**: ``ptwt.wavedec``/``ptwt.waverec`` and ``ptwt.wavedec2``/``ptwt.waverec2``.

SWD's ``impl="auto"`` takes ``matmul`` for N = H·W <= ``DENSE_MAX_N`` (1-D 256, 2-D 64) and ``struct``
above; the ``path`` column names it (``SpectralWaveletDropout.path``).

Checks, before timing, on the first 16 samples: each library's coefficients equal ours (conv) after matching
the band order (pytorch_wavelets: ``(yl, yh)`` finest first, 2-D ``yh[0][:, :, k]`` = (cH, cV, cD); ptwt:
``[cA_J, cD_J, ..., cD_1]``, 2-D ``(cA, (cH, cV, cD))``): column ``|Δcoeff|``. Every contender's output with
the detail bands scaled by (0.5, 0, 2) equals ours (conv), and with all scales 1 every contender gives its
input back: column ``|Δout|``, the larger of the two. Tolerance 1e-5 (max absolute difference).

Timing: torch.utils.benchmark's clock (``torch.utils.benchmark.utils.timer.timer``, which synchronises
CUDA); after one warm-up call each, the contenders are interleaved ``--repeats`` times (so drift in machine
load is shared), each measurement ``--min-time`` seconds or one call, and the median per-call time is
reported. Two settings: ``fwd+inv`` under ``torch.no_grad()``, and ``+backward``: forward+inverse, then
``torch.autograd.grad`` of the output with respect to the input (training). ``auto×`` is pytorch_wavelets'
time over the time of the path SWD takes, ``conv×`` the same for the conv path. A row passes when
``auto×`` >= 1.5 and both differences are <= 1e-5; the last line is the summary. A note warns when one
contender's measurements differ by more than 1.5x.

The comparison libraries are not dependencies of cnnkit; install them into the workspace venv or a separate
environment (from the repository root)::

    uv pip install --python .venv/bin/python pytorch-wavelets ptwt "setuptools<81"
    .venv/bin/python benchmarks/dwt_speed.py [--repeats 5] [--threads N] [--device cpu|cuda]

(pytorch_wavelets 1.3 imports ``pkg_resources``, which setuptools >= 81 no longer ships.) A missing library
is reported with this hint and its column is skipped. On a busy shared CPU use ``--threads 1``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pywt
import torch
from _machine import (  # benchmarks/_machine.py (the script's folder is on sys.path)
    cpu_model,
    describe_machine,
    load_average,
)
from torch.utils.benchmark.utils.timer import timer as clock

from cnnkit.regularizers import _dwt
from cnnkit.regularizers.swd import SpectralWaveletDropout

WAVELET = "db3"
MODE = "zero"
LEVELS_1D = 3
P = 0.1
MASK = (1.0, 0.0, 1.0)  # kept / dropped detail bands (finest first; 2-D: cH, cV, cD)
CHECK_SCALE = (0.5, 0.0, 2.0)  # distinct per band, so that a band-order mistake shows in |Δout|
SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (32, 64, 32, 32),
    (32, 128, 16, 16),
    (128, 256, 8, 8),
    (128, 512, 4, 4),
    (32, 256, 7, 7),
)
TOL = 1e-5
CHECK_BATCH = 16  # samples of each batch that the equality checks use (all of them are timed)
GOAL = 1.5
NOISY = 1.5  # slowest / fastest measurement of one contender above which the run is called noisy
INSTALL = (
    'uv pip install --python <bench-venv>/bin/python pytorch-wavelets ptwt "setuptools<81"'
    "  (see this script's docstring)"
)

Roundtrip = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Coeffs = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass
class Contender:
    """A forward+inverse implementation: ``roundtrip(x, scale)`` and, for libraries, ``coeffs(x)`` in our
    layout (1-D: ``[cA_J, cD_1, ..., cD_J]``; 2-D: one ``(..., 4, h, w)`` tensor)."""

    name: str
    roundtrip: Roundtrip
    coeffs: Coeffs | None = None


@dataclass
class Row:
    variant: str
    shape: tuple[int, ...]
    setting: str
    ms: dict[str, float]
    d_coeff: float | None = None  # None: no library to compare coefficients with
    d_out: float = 0.0
    spread: float = 1.0


# ---------------------------------------------------------------------------------------------------------
# Contenders


def ours_conv(variant: str) -> Contender:
    if variant == "1d":

        def roundtrip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            approx, details = _dwt.dwt1d(x.reshape(b, c, h * w), WAVELET, LEVELS_1D, MODE)
            details = [d * scale[i] for i, d in enumerate(details)]
            return _dwt.idwt1d(approx, details, WAVELET, MODE, length=h * w).reshape(b, c, h, w)

        def coeffs(x: torch.Tensor) -> list[torch.Tensor]:
            approx, details = _dwt.dwt1d(x.flatten(2), WAVELET, LEVELS_1D, MODE)
            return [approx, *details]

        return Contender("conv", roundtrip, coeffs)

    def roundtrip2(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        full = torch.cat([scale.new_ones(1), scale])
        coeffs = _dwt.dwt2d(x, WAVELET, MODE) * full[:, None, None]
        return _dwt.idwt2d(coeffs, WAVELET, MODE, size=(x.shape[-2], x.shape[-1]))

    return Contender("conv", roundtrip2, lambda x: [_dwt.dwt2d(x, WAVELET, MODE)])


def ours_swd(variant: str, impl: str) -> Contender:
    """SWD's matrix paths (``impl`` = ``"matmul"``: dense; ``"structured"``: O(N)) with a batch mask:
    the layer's own code, with the band weights w_k = scale_k − 1 given directly."""
    layer = SpectralWaveletDropout(P, variant, wavelet=WAVELET, mode=MODE, impl=impl)
    apply = layer._matmul if impl == "matmul" else getattr(layer, f"_structured_{variant}")

    def roundtrip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = apply(x, scale - 1.0)
        return out

    return Contender("matmul" if impl == "matmul" else "struct", roundtrip)


_MODULES: dict[str, Any] = {}


def _import(name: str) -> Any:
    """The module, or None after printing how to install it (once per name)."""
    if name not in _MODULES:
        try:
            with warnings.catch_warnings():  # pytorch_wavelets: "pkg_resources is deprecated"
                warnings.simplefilter("ignore")
                _MODULES[name] = importlib.import_module(name)
        except Exception as exc:  # ImportError, or pkg_resources missing under setuptools >= 81
            print(
                f"{name} unavailable ({type(exc).__name__}: {exc}); its column is skipped. Install: {INSTALL}"
            )
            _MODULES[name] = None
    return _MODULES[name]


def pytorch_wavelets_contender(variant: str, device: torch.device) -> Contender | None:
    pw = _import("pytorch_wavelets")
    if pw is None:
        return None
    if variant == "1d":
        fwd = pw.DWT1DForward(J=LEVELS_1D, wave=WAVELET, mode=MODE).to(device)
        inv = pw.DWT1DInverse(wave=WAVELET, mode=MODE).to(device)

        def roundtrip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            yl, yh = fwd(x.reshape(b, c, h * w))
            y: torch.Tensor = inv((yl, [d * scale[i] for i, d in enumerate(yh)]))
            return y[..., : h * w].reshape(b, c, h, w)

        def coeffs(x: torch.Tensor) -> list[torch.Tensor]:
            yl, yh = fwd(x.flatten(2))
            return [yl, *yh]

        return Contender("pytorch_wavelets", roundtrip, coeffs)

    fwd2 = pw.DWTForward(J=1, wave=WAVELET, mode=MODE).to(device)
    inv2 = pw.DWTInverse(wave=WAVELET, mode=MODE).to(device)

    def roundtrip2(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        yl, yh = fwd2(x)
        y: torch.Tensor = inv2((yl, [yh[0] * scale[:, None, None]]))
        return y[..., : x.shape[-2], : x.shape[-1]]

    def coeffs2(x: torch.Tensor) -> list[torch.Tensor]:
        yl, yh = fwd2(x)
        return [torch.cat([yl.unsqueeze(2), yh[0]], dim=2)]

    return Contender("pytorch_wavelets", roundtrip2, coeffs2)


def ptwt_contender(variant: str) -> Contender | None:
    ptwt = _import("ptwt")
    if ptwt is None:
        return None
    wavelet = pywt.Wavelet(WAVELET)  # an object, not a name: ptwt would build one per call
    if variant == "1d":

        def roundtrip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            cs = ptwt.wavedec(x.reshape(b, c, h * w), wavelet, mode=MODE, level=LEVELS_1D)
            details = [d * scale[LEVELS_1D - 1 - i] for i, d in enumerate(cs[1:])]  # coarsest first
            y: torch.Tensor = ptwt.waverec([cs[0], *details], wavelet)
            return y[..., : h * w].reshape(b, c, h, w)

        def coeffs(x: torch.Tensor) -> list[torch.Tensor]:
            cs = ptwt.wavedec(x.flatten(2), wavelet, mode=MODE, level=LEVELS_1D)
            return [cs[0], *cs[:0:-1]]

        return Contender("ptwt", roundtrip, coeffs)

    WaveletDetailTuple2d = ptwt.constants.WaveletDetailTuple2d

    def roundtrip2(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        approx, details = ptwt.wavedec2(x, wavelet, mode=MODE, level=1)
        scaled = WaveletDetailTuple2d(*(d * scale[k] for k, d in enumerate(details)))
        y: torch.Tensor = ptwt.waverec2((approx, scaled), wavelet)
        return y[..., : x.shape[-2], : x.shape[-1]]

    def coeffs2(x: torch.Tensor) -> list[torch.Tensor]:
        approx, details = ptwt.wavedec2(x, wavelet, mode=MODE, level=1)
        return [torch.stack([approx, *details], dim=2)]

    return Contender("ptwt", roundtrip2, coeffs2)


def contenders(variant: str, device: torch.device) -> list[Contender]:
    libs = [pytorch_wavelets_contender(variant, device), ptwt_contender(variant)]
    ours = [ours_conv(variant), ours_swd(variant, "matmul"), ours_swd(variant, "structured")]
    return [*ours, *(c for c in libs if c is not None)]


# ---------------------------------------------------------------------------------------------------------
# Checks and timing


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b, strict=True)):
        shapes = [tuple(t.shape) for t in a], [tuple(t.shape) for t in b]
        raise AssertionError(f"coefficient layouts differ: {shapes[0]} vs {shapes[1]}")
    return max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))


@torch.no_grad()
def check(cands: list[Contender], x: torch.Tensor, scale: torch.Tensor) -> tuple[float | None, float]:
    """(max |Δcoeff| of the libraries vs ours, max |Δoutput| vs ours incl. reconstruction error)."""
    ref, *others = cands
    assert ref.coeffs is not None
    ref_coeffs, ref_out = ref.coeffs(x), ref.roundtrip(x, scale)
    ones = torch.ones_like(scale)
    d_coeff = max((max_diff(c.coeffs(x), ref_coeffs) for c in others if c.coeffs is not None), default=None)
    d_out = max(float((c.roundtrip(x, scale) - ref_out).abs().max()) for c in others)
    d_rec = max(float((c.roundtrip(x, ones) - x).abs().max()) for c in cands)
    return d_coeff, max(d_out, d_rec)


def task(c: Contender, x: torch.Tensor, scale: torch.Tensor, backward: bool) -> Callable[[], Any]:
    if not backward:

        def run() -> Any:
            with torch.no_grad():
                return c.roundtrip(x, scale)

        return run
    xg = x.detach().requires_grad_(True)
    grad_out = torch.randn_like(x)
    return lambda: torch.autograd.grad(c.roundtrip(xg, scale), xg, grad_out)


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls, on torch.utils.benchmark's clock (which synchronises
    CUDA). Its ``Timer.timeit`` is not used because it adds two warm-up calls to every measurement."""
    start = clock()
    for _ in range(number):
        fn()
    return (clock() - start) / number


def calls_per_measurement(fn: Callable[[], Any], min_time: float) -> int:
    fn()  # warm-up (check() has filled the caches: filters, projections)
    return max(1, round(min_time / max(per_call(fn, 1), 1e-9)))


def time_all(
    fns: dict[str, Callable[[], Any]], repeats: int, min_time: float
) -> tuple[dict[str, float], float]:
    """Median milliseconds per call, the contenders interleaved ``repeats`` times; and the largest ratio
    slowest / fastest measurement of one contender (a sign of competing load when well above 1)."""
    numbers = {name: calls_per_measurement(fn, min_time) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(per_call(fn, numbers[name]) * 1e3)
    spread = max(max(s) / min(s) for s in samples.values())
    return {name: statistics.median(s) for name, s in samples.items()}, spread


def measure(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows = []
    scale = torch.tensor(MASK, device=device) / (1 - P)
    gen = torch.Generator().manual_seed(0)
    for variant in ("1d", "2d"):
        cands = contenders(variant, device)
        for shape in SHAPES:
            x = torch.randn(shape, generator=gen).to(device)
            d_coeff, d_out = check(cands, x[:CHECK_BATCH], torch.tensor(CHECK_SCALE, device=device))
            for setting, backward in (("fwd+inv", False), ("+backward", True)):
                fns = {c.name: task(c, x, scale, backward) for c in cands}
                ms, spread = time_all(fns, args.repeats, args.min_time)
                rows.append(Row(variant, shape, setting, ms, d_coeff, d_out, spread))
                print_row(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------------------
# Report

HEADER = (
    f"{'variant':7} {'shape':16} {'setting':9} | {'conv ms':>8} {'matmul ms':>9} {'struct ms':>9}"
    f" {'pw ms':>8} {'ptwt ms':>8} | {'path':6} {'auto×':>6} {'conv×':>6}"
    f" | {'|Δcoeff|':>8} {'|Δout|':>8} | pass"
)
COLUMNS = (("conv", 8), ("matmul", 9), ("struct", 9), ("pytorch_wavelets", 8), ("ptwt", 8))


def auto_path(row: Row) -> str:
    """The contender that SWD's ``impl="auto"`` runs for this row."""
    layer = SpectralWaveletDropout(P, row.variant, wavelet=WAVELET, mode=MODE)
    path = layer.path(torch.empty(row.shape[-2:]).expand(1, 1, *row.shape[-2:]))
    return "struct" if path == "structured" else path


def speedup(row: Row, name: str) -> float | None:
    base = row.ms.get("pytorch_wavelets")
    return None if base is None else base / row.ms[name]


def passes(row: Row) -> bool | None:
    s = speedup(row, auto_path(row))
    return None if s is None else s >= GOAL and max(row.d_coeff or 0.0, row.d_out) <= TOL


def fmt(value: float | None, width: int, spec: str) -> str:
    return format("—" if value is None else format(value, spec), f">{width}")


def print_row(row: Row) -> None:
    ms = [fmt(row.ms.get(k), w, ".2f") for k, w in COLUMNS]
    ups = [fmt(speedup(row, name), 6, ".2f") for name in (auto_path(row), "conv")]
    ok = passes(row)
    mark = "—" if ok is None else ("yes" if ok else "NO")
    shape = "x".join(map(str, row.shape))
    print(
        f"{row.variant:7} {shape:16} {row.setting:9} | {' '.join(ms)} | {auto_path(row):6} {' '.join(ups)}"
        f" | {fmt(row.d_coeff, 8, '.1e')} {fmt(row.d_out, 8, '.1e')} | {mark}",
        flush=True,
    )


def machine(device: torch.device, threads: int) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return (
        f"device: {where} | torch threads: {threads} | torch {torch.__version__} | "
        f"python {platform.python_version()}\n{describe_machine(device)}"
    )


def summary(rows: list[Row]) -> str:
    judged = [r for r in rows if passes(r) is not None]
    if not judged:
        return "SUMMARY: pytorch_wavelets not installed; equality only: " + _deltas(rows)
    ok = sum(bool(passes(r)) for r in judged)
    conv_ok = sum((speedup(r, "conv") or 0) >= GOAL for r in judged)
    worst = min(judged, key=lambda r: speedup(r, auto_path(r)) or 0)
    verdict = "PASS" if ok == len(judged) else "FAIL"
    return (
        f"SUMMARY: {verdict}: {ok}/{len(judged)} rows >= {GOAL}x faster than pytorch_wavelets on SWD's path "
        f"(conv path alone: {conv_ok}/{len(judged)}); slowest {worst.variant} "
        f"{'x'.join(map(str, worst.shape))} {worst.setting} {speedup(worst, auto_path(worst)):.2f}x; "
        + _deltas(rows)
    )


def _deltas(rows: list[Row]) -> str:
    d_coeff = max((r.d_coeff for r in rows if r.d_coeff is not None), default=None)
    return (
        f"max |Δcoeff| {fmt(d_coeff, 0, '.1e')}, max |Δout| {max(r.d_out for r in rows):.1e} "
        f"(tolerance {TOL:.0e})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per contender")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement (approx.)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    device = torch.device(args.device)
    print(machine(device, args.threads))
    print(
        f"{WAVELET}, mode={MODE!r}, 1-D: {LEVELS_1D} levels over H·W, 2-D: 1 level; float32; "
        f"mask {MASK}/(1-{P}); {args.repeats} repeats"
    )
    for name in ("pytorch_wavelets", "ptwt"):
        _import(name)  # report a missing library before the table
    print(HEADER)
    rows = measure(args, device)
    spread = max(r.spread for r in rows)
    if spread > NOISY:
        hint = "more --repeats" if args.threads == 1 else "--threads 1"
        print(
            f"note: repeated measurements of one contender differ by up to {spread:.1f}x: the machine is "
            f"busy and the speedups are unreliable; use {hint}"
        )
    print(f"load average at the end: {load_average()}")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
