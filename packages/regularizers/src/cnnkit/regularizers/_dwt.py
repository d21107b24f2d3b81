"""Discrete wavelet transforms in torch that reproduce PyWavelets, batched and differentiable.

Filters come from PyWavelets (``pywt.Wavelet(name)``); the transforms are strided convolutions, built
once per (wavelet, dtype, device) and cached, so they run on CPU and CUDA under autograd:

- :func:`dwt1d` / :func:`idwt1d`: the multilevel 1-D transform along the last axis, equal to
  ``pywt.wavedec`` / ``pywt.waverec`` (details are returned *finest first*: ``[cD1, cD2, ..., cDJ]``).
- :func:`dwt2d` / :func:`idwt2d`: the one-level 2-D transform over the last two axes, equal to
  ``pywt.dwt2`` / ``pywt.idwt2``, with the four bands stacked on a new axis in the order
  ``(cA, cH, cV, cD)`` = (LL, LH, HL, HH). All four 2-D filters run in one convolution.

Three PyWavelets signal-extension modes are supported: ``"zero"``, ``"symmetric"`` (half-sample
symmetric) and ``"periodization"`` (odd lengths are first extended by their last sample, as PyWavelets
does). For ``zero``/``symmetric`` an odd length reconstructs one sample too long; the inverses crop
to the requested length, as ``pywt.waverec`` crops between levels.

:func:`band_projections` gives, for small maps, the dense matrices of "keep only one detail band"
(``IDWT ∘ select band ∘ DWT``), computed from the conv transforms above. Spectral Wavelet Dropout on a
map of N = H·W values is then one GEMM instead of a dozen small convolutions. For larger maps two
structured forms of the same linear maps cost O(N) instead of O(N²):

- :func:`axis_projection`: the one-level high-band projection along one axis (n×n). The 2-D transform is
  separable, so the 2-D band projections are products of these per axis (:func:`band_projections` with
  ``"2d"`` = P_H ⊗ P_L, P_L ⊗ P_H, P_H ⊗ P_H, and P_L = I − P_H), any mode.
- :func:`polyphase_kernels` (mode ``"zero"``): the zero-mode J-level projections are the restriction of
  an infinite operator that commutes with shifts by P = 2^J (zero padding keeps every non-zero
  coefficient, and what the inverse crops lies beyond the signal). Split a signal into P polyphase
  channels (x[j·P + c] → channel c, position j): each projection is then a P→P-channel ``conv1d`` with
  2T + 1 taps, T ≤ ⌈(L − 1)(P − 1)/P⌉ (the band's half-width over P; outer taps that are all zero are
  dropped: db3 at J = 3 needs 9 taps). Built from the dense projections of a reference length and
  checked against them (and against an odd length, for the crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import pywt
import torch
import torch.nn.functional as F

__all__ = [
    "AUTO_MATMUL_MAX_N",
    "DENSE_MAX_N",
    "MODES",
    "Mode",
    "axis_projection",
    "band_projections",
    "check_wavelet",
    "coeff_length",
    "dwt1d",
    "dwt2d",
    "filter_length",
    "idwt1d",
    "idwt2d",
    "polyphase_kernels",
]

Mode = Literal["zero", "symmetric", "periodization"]
MODES: tuple[str, ...] = ("zero", "symmetric", "periodization")

AUTO_MATMUL_MAX_N = 1024
"""Largest map size N = H·W for which SWD's ``impl="auto"`` uses a matrix form rather than the conv
transform when no structured form applies (dense projections ≤ 4 MiB each)."""

DENSE_MAX_N = {"1d": 256, "2d": 64}
"""Largest N = H·W for which SWD's ``impl="auto"`` uses the dense (N×N) projections; above it the
structured forms (:func:`polyphase_kernels` for 1-D in mode ``"zero"``, :func:`axis_projection` for 2-D).
Measured on a shared 2-core CPU (1 thread, forward+inverse with and without backward,
``benchmarks/dwt_speed.py``): the dense GEMM is the fastest up to 8×8 and on par with the structured 1-D
form at 16×16 (2-D: 2-3× slower there); at 32×32 it costs 4 GFLOP per 2048 maps and is 5-8× slower than
the structured forms, which are >= 1.5× faster than pytorch_wavelets at every size benchmarked."""

_CPU = torch.device("cpu")


def check_wavelet(name: str) -> str:
    """Return ``name`` if it is a discrete PyWavelets wavelet, else raise ``ValueError`` naming some."""
    allowed = pywt.wavelist(kind="discrete")
    if name not in allowed:
        raise ValueError(
            f"unknown wavelet {name!r}; expected a discrete PyWavelets wavelet such as 'db3', 'haar', "
            f"'db4', 'sym4', 'coif1', 'bior2.2' (pywt.wavelist(kind='discrete') lists all {len(allowed)})"
        )
    return name


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(repr(m) for m in MODES)}")


# ---------------------------------------------------------------------------------------------------------
# Filters and sizes


@lru_cache(maxsize=16)
def _bank(wavelet: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(analysis, synthesis) filters, float64 CPU, each (2, L) as (low, high). Analysis filters are
    reversed, because torch convolutions are cross-correlations."""
    w = pywt.Wavelet(check_wavelet(wavelet))
    with torch.inference_mode(False):  # float64 CPU filters are views of these: no inference tensors
        dec = torch.tensor([w.dec_lo, w.dec_hi], dtype=torch.float64).flip(-1)
        rec = torch.tensor([w.rec_lo, w.rec_hi], dtype=torch.float64)
        return dec, rec


def filter_length(wavelet: str) -> int:
    """The length L of the wavelet's filters (6 for db3; always even in PyWavelets)."""
    return int(_bank(wavelet)[0].shape[-1])


@lru_cache(maxsize=64)
def _filters_1d(wavelet: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):
        dec, rec = _bank(wavelet)
        return dec.unsqueeze(1).to(dtype=dtype, device=device), rec.unsqueeze(1).to(
            dtype=dtype, device=device
        )


@lru_cache(maxsize=64)
def _filters_2d(wavelet: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 1, L, L) filters; band b = (first index along H, second along W): LL, HL→cH, LH→cV, HH."""
    pairs = ((0, 0), (1, 0), (0, 1), (1, 1))  # (H filter, W filter): cA, cH, cV, cD
    with torch.inference_mode(False):
        out = []
        for bank in _bank(wavelet):
            kernels = torch.stack([torch.outer(bank[i], bank[j]) for i, j in pairs])
            out.append(kernels.unsqueeze(1).to(dtype=dtype, device=device))
        return out[0], out[1]


def coeff_length(n: int, filter_len: int, mode: str) -> int:
    """Length of one level's coefficients for a signal of length ``n`` (``pywt.dwt_coeff_len``)."""
    _check_mode(mode)
    return (n + 1) // 2 if mode == "periodization" else (n + filter_len - 1) // 2


def _analysis_pad(filter_len: int, mode: str) -> tuple[int, int]:
    if mode == "periodization":
        return filter_len // 2 - 1, filter_len // 2 - 1
    return filter_len - 2, filter_len - 1


@lru_cache(maxsize=256)
def _extension_index(n: int, left: int, right: int, mode: str, device: torch.device) -> torch.Tensor:
    """Indices into a length-``n`` signal extended by ``left``/``right`` samples (symmetric or periodic).

    ``"periodization"`` extends an odd signal by its last sample first; ``"periodic"`` (used for
    coefficients in the inverse) wraps around as is.
    """
    with torch.inference_mode(False):
        i = torch.arange(-left, n + right + (n % 2 if mode == "periodization" else 0))
        if mode == "symmetric":
            j = i % (2 * n)
            j = torch.where(j >= n, 2 * n - 1 - j, j)
        elif mode == "periodization":
            j = (i % (n + n % 2)).clamp(max=n - 1)
        else:  # periodic
            j = i % n
        return j.to(device)


def _extend(x: torch.Tensor, dims: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Extend the last ``dims`` (1 or 2) axes of ``x`` by ``left``/``right`` samples each."""
    if mode == "zero":
        return F.pad(x, (left, right) * dims)
    last = _extension_index(x.shape[-1], left, right, mode, x.device)
    if dims == 1:
        return x[..., last]
    first = _extension_index(x.shape[-2], left, right, mode, x.device)
    return x[..., first[:, None], last]


# ---------------------------------------------------------------------------------------------------------
# One level, on (R, 1, n) / (R, 1, h, w) rows


_GROUPED_MIN_ROWS = 256


@lru_cache(maxsize=16)
def _grouped_analysis_1d(wavelet: str, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 1-D analysis filters repeated for ``rows`` groups: (2·rows, 1, L)."""
    with torch.inference_mode(False):
        return _filters_1d(wavelet, dtype, device)[0].repeat(rows, 1, 1)


def _analysis(x: torch.Tensor, dims: int, wavelet: str, mode: str) -> torch.Tensor:
    """(R, 1, *size) → (R, 2 or 4, *coefficient size): all bands of one level in one convolution.

    Many float32 1-D rows run as one depthwise convolution, (1, R, n) with R groups [choice, measured on
    CPU: for R ≥ 2048 rows a (R, 1, n) batch of single-channel strided convolutions was 2-20× slower in
    float32; in float64 and for few rows the batch was as fast or faster]."""
    length = filter_length(wavelet)
    left, right = _analysis_pad(length, mode)
    extended = _extend(x, dims, left, right, mode)
    if dims == 1:
        rows = extended.shape[0]
        if rows < _GROUPED_MIN_ROWS or x.dtype == torch.float64:
            return F.conv1d(extended, _filters_1d(wavelet, x.dtype, x.device)[0], stride=2)
        weight = _grouped_analysis_1d(wavelet, rows, x.dtype, x.device)
        out = F.conv1d(extended.reshape(1, rows, -1), weight, stride=2, groups=rows)
        return out.view(rows, 2, -1)
    return F.conv2d(extended, _filters_2d(wavelet, x.dtype, x.device)[0], stride=2)


def _synthesis(c: torch.Tensor, dims: int, wavelet: str, mode: str) -> torch.Tensor:
    """(R, 2 or 4, *coefficient size) → (R, 1, *size): the sum of all bands' synthesis in one convolution.

    ``zero``/``symmetric``: the "valid" part of the upsampled convolution (2m − L + 2 samples, as
    ``pywt.idwt``). ``periodization``: the coefficients are wrapped by ⌈L/4⌉ first (2m samples).
    """
    length = filter_length(wavelet)
    padding = length - 2
    if mode == "periodization":
        wrap = (length // 2 + 1) // 2
        c = _extend(c, dims, wrap, wrap, "periodic")
        padding = 2 * wrap + length // 2 - 1
    if dims == 1:
        return F.conv_transpose1d(c, _filters_1d(wavelet, c.dtype, c.device)[1], stride=2, padding=padding)
    return F.conv_transpose2d(c, _filters_2d(wavelet, c.dtype, c.device)[1], stride=2, padding=padding)


# ---------------------------------------------------------------------------------------------------------
# Public transforms


def dwt1d(
    x: torch.Tensor, wavelet: str = "db3", level: int = 1, mode: str = "zero"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multilevel 1-D DWT along the last axis of ``x`` (any leading axes).

    Returns ``(cA_J, [cD_1, ..., cD_J])``: the approximation and the details, finest (level 1) first;
    ``pywt.wavedec(x, wavelet, mode, level)`` returns the same bands as ``[cA_J, cD_J, ..., cD_1]``.
    """
    _check_mode(mode)
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"dwt1d needs a non-empty last axis, got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    approx = x.reshape(-1, 1, x.shape[-1])
    details: list[torch.Tensor] = []
    for _ in range(level):
        bands = _analysis(approx, 1, wavelet, mode)
        approx = bands[:, :1]
        details.append(bands[:, 1].reshape(*lead, bands.shape[-1]))  # explicit lengths: lead may hold a 0
    return approx.reshape(*lead, approx.shape[-1]), details


def idwt1d(
    approx: torch.Tensor,
    details: Sequence[torch.Tensor],
    wavelet: str = "db3",
    mode: str = "zero",
    length: int | None = None,
) -> torch.Tensor:
    """Inverse of :func:`dwt1d` (``details`` finest first), cropped to ``length`` if given.

    Between levels the reconstructed approximation is cropped to its detail band when it is one sample
    longer, as ``pywt.waverec`` does.
    """
    _check_mode(mode)
    lead = approx.shape[:-1]
    for detail in reversed(details):
        m = detail.shape[-1]
        if approx.shape[-1] == m + 1:
            approx = approx[..., :m]
        elif approx.shape[-1] != m:
            raise ValueError(f"coefficient length mismatch: approximation {approx.shape[-1]}, detail {m}")
        stacked = torch.stack([approx.reshape(-1, m), detail.reshape(-1, m)], dim=1)
        approx = _synthesis(stacked, 1, wavelet, mode)
        approx = approx.reshape(*lead, approx.shape[-1])
    return approx if length is None else approx[..., :length]


def dwt2d(x: torch.Tensor, wavelet: str = "db3", mode: str = "zero") -> torch.Tensor:
    """One-level 2-D DWT over the last two axes: ``(..., H, W)`` → ``(..., 4, h, w)``.

    The bands are ``(cA, cH, cV, cD)`` of ``pywt.dwt2(x, wavelet, mode)``, called (LL, LH, HL, HH) in
    the SWD paper.
    """
    _check_mode(mode)
    if x.dim() < 2 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"dwt2d needs non-empty last two axes, got shape {tuple(x.shape)}")
    lead = x.shape[:-2]
    bands = _analysis(x.reshape(-1, 1, *x.shape[-2:]), 2, wavelet, mode)
    return bands.reshape(*lead, *bands.shape[1:])


def idwt2d(
    coeffs: torch.Tensor, wavelet: str = "db3", mode: str = "zero", size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`dwt2d`: ``(..., 4, h, w)`` → ``(..., H, W)``, cropped to ``size`` if given."""
    _check_mode(mode)
    if coeffs.dim() < 3 or coeffs.shape[-3] != 4:
        raise ValueError(f"idwt2d needs (..., 4, h, w) coefficients, got shape {tuple(coeffs.shape)}")
    lead = coeffs.shape[:-3]
    out = _synthesis(coeffs.reshape(-1, *coeffs.shape[-3:]), 2, wavelet, mode)
    if size is not None:
        out = out[..., : size[0], : size[1]]
    return out.reshape(*lead, *out.shape[-2:])


# ---------------------------------------------------------------------------------------------------------
# Dense band projections (for small maps)


@lru_cache(maxsize=32)
def _projections64(
    variant: str, size: tuple[int, int], wavelet: str, level: int, mode: str, bands: tuple[int, ...]
) -> torch.Tensor:
    """(k, N, N) float64: row j of ``[i]`` is the map that keeps only detail band ``bands[i]`` of e_j."""
    h, w = size
    n = h * w
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n, dtype=torch.float64)
        out = []
        if variant == "1d":
            approx, details = dwt1d(eye, wavelet, level, mode)
            for band in bands:
                kept = [d if i == band - 1 else torch.zeros_like(d) for i, d in enumerate(details)]
                out.append(idwt1d(torch.zeros_like(approx), kept, wavelet, mode, length=n))
        else:
            coeffs = dwt2d(eye.view(n, h, w), wavelet, mode)
            for band in bands:
                only = torch.zeros_like(coeffs)
                only[:, band] = coeffs[:, band]
                out.append(idwt2d(only, wavelet, mode, size=size).reshape(n, n))
        return torch.stack(out)


@lru_cache(maxsize=64)
def band_projections(
    variant: str,
    size: tuple[int, int],
    wavelet: str,
    level: int,
    mode: str,
    bands: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Dense detail-band projections ``Q`` of shape (k, N, N), N = H·W, k = ``len(bands)``.

    For a map ``x`` flattened to ``(..., N)``, ``x @ Q[i]`` equals the inverse transform of ``x``'s
    coefficients with every band but detail band ``bands[i]`` zeroed (cropped to N), where the transform
    is the ``level``-level 1-D DWT of the flattened map (``variant="1d"``, bands are levels, 1 = finest)
    or the one-level 2-D DWT (``"2d"``, bands 1, 2, 3 = LH, HL, HH; ``level`` must be 1). Because the
    inverse of the full transform is the identity, ``x @ (I + Σ_i w_i Q[i])`` scales detail band
    ``bands[i]`` by ``1 + w_i``. Computed in float64 with the conv transforms; cached.
    """
    if variant not in ("1d", "2d") or (variant == "2d" and level != 1):
        raise ValueError(f"variant={variant!r} with level={level} is not supported ('1d', or '2d' with 1)")
    if not bands or any(not 1 <= b <= (level if variant == "1d" else 3) for b in bands):
        raise ValueError(f"bands={bands!r} must name detail bands 1..{level if variant == '1d' else 3}")
    _check_mode(mode)
    with torch.inference_mode(False):
        dense = _projections64(variant, size, wavelet, level, mode, bands)
        return dense.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------------
# Structured projections (for larger maps)


@lru_cache(maxsize=64)
def _axis_projection64(n: int, wavelet: str, mode: str) -> torch.Tensor:
    return _projections64("1d", (1, n), wavelet, 1, mode, (1,))[0]


@lru_cache(maxsize=64)
def axis_projection(
    n: int, wavelet: str, mode: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The one-level high-band projection P_H (n×n) along one axis: ``x @ P_H`` keeps only the detail band
    of a length-``n`` signal ``x`` (the inverse of its DWT with the approximation zeroed, cropped to n).

    The 2-D one-level projections are separable: for a map X (h×w), band cH is P_H(h)ᵀ·X·P_L(w), cV is
    P_L(h)ᵀ·X·P_H(w) and cD is P_H(h)ᵀ·X·P_H(w), with P_L = I − P_H. Computed in float64; cached.
    """
    _check_mode(mode)
    with torch.inference_mode(False):
        return _axis_projection64(n, check_wavelet(wavelet), mode).to(dtype=dtype, device=device)


def _polyphase_taps(wavelet: str, level: int) -> int:
    period: int = 2**level
    return -(-(filter_length(wavelet) - 1) * (period - 1) // period)


def _polyphase_dense(kernels: torch.Tensor, n: int) -> torch.Tensor:
    """The (k, n, n) dense operators (``x @ Q``) that :func:`polyphase_kernels`' conv applies."""
    k, period, _, taps = kernels.shape
    blocks = -(-n // period)
    eye = torch.eye(blocks * period, dtype=kernels.dtype).view(blocks * period, blocks, period)
    out = F.conv1d(eye.transpose(1, 2), kernels.reshape(k * period, period, taps), padding=taps // 2)
    dense = out.view(blocks * period, k, period, blocks).permute(1, 0, 3, 2).reshape(k, blocks * period, -1)
    return dense[:, :n, :n]


@lru_cache(maxsize=16)
def _polyphase64(wavelet: str, level: int, bands: tuple[int, ...]) -> torch.Tensor | None:
    period = 2**level
    half = _polyphase_taps(wavelet, level)
    blocks = 4 * half + 3
    dense = _projections64("1d", (1, blocks * period), wavelet, level, "zero", bands)
    mid = blocks // 2
    rows = dense[:, (mid - half) * period : (mid + half + 1) * period, mid * period : (mid + 1) * period]
    # kernel[k, out phase, in phase, tap t] = Q_k[(mid + t − half)·P + in phase, mid·P + out phase]
    kernels = rows.reshape(len(bands), 2 * half + 1, period, period).permute(0, 3, 2, 1).contiguous()
    while kernels.shape[-1] > 1 and float(kernels[..., [0, -1]].abs().max()) < 1e-15:
        kernels = kernels[..., 1:-1].contiguous()  # the bound on the band's width is not always tight
    for n in (blocks * period, blocks * period - period // 2 - 1):  # also an odd length (crops)
        reference = (
            dense if n == blocks * period else _projections64("1d", (1, n), wavelet, level, "zero", bands)
        )
        if not torch.allclose(_polyphase_dense(kernels, n), reference, rtol=0.0, atol=1e-12):
            return None
    return kernels


@lru_cache(maxsize=32)
def polyphase_kernels(
    wavelet: str, level: int, bands: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Zero-mode detail-band projections of the ``level``-level 1-D DWT as polyphase conv kernels.

    Shape (k, P, P, 2T + 1), P = 2**level, k = ``len(bands)``. For a signal x of any length n, zero-padded
    to a multiple of P and viewed as (P, n/P) (channel c holds x[c], x[P + c], ...),
    ``conv1d(phases, kernels[i], padding=T)`` viewed back and cropped to n equals ``x @ Q[i]`` with
    ``Q = band_projections("1d", ..., mode="zero")``. ``None`` when the wavelet's projections are not
    shift-invariant in this form (then use the dense or the conv path).
    """
    if level < 1 or not bands or any(not 1 <= b <= level for b in bands):
        raise ValueError(f"bands={bands!r} must name detail bands 1..{level} (level >= 1)")
    with torch.inference_mode(False):
        kernels = _polyphase64(check_wavelet(wavelet), level, bands)
        return None if kernels is None else kernels.to(dtype=dtype, device=device)
