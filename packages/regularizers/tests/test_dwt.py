"""The torch DWT (cnnkit.regularizers._dwt) against PyWavelets, the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from cnnkit.regularizers import _dwt
from cnnkit.regularizers._dwt import (
    MODES,
    axis_projection,
    band_projections,
    dwt1d,
    dwt2d,
    idwt1d,
    idwt2d,
    polyphase_kernels,
)

# pywt warns that 3 levels are "too high" for short signals; the coefficients are still well defined.
pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")

LENGTHS = [1, 5, 16, 49, 63, 64]
SIZES = [(7, 7), (8, 8), (5, 9), (1, 1), (16, 16)]
DTYPES = [(torch.float64, 1e-12), (torch.float32, 1e-5)]


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", LENGTHS)
def test_dwt1d_equals_wavedec(mode: str, n: int) -> None:
    x = _rand(2, 3, n)
    ref = pywt.wavedec(x, "db3", mode=mode, level=3)  # [cA3, cD3, cD2, cD1]
    for dtype, tol in DTYPES:
        approx, details = dwt1d(torch.tensor(x, dtype=dtype), "db3", level=3, mode=mode)
        assert approx.dtype == dtype
        np.testing.assert_allclose(approx.double().numpy(), ref[0], atol=tol, rtol=0)
        assert len(details) == 3
        for got, want in zip(details, ref[:0:-1], strict=True):  # finest first
            assert got.shape == want.shape
            np.testing.assert_allclose(got.double().numpy(), want, atol=tol, rtol=0)


@pytest.mark.parametrize(
    ("n", "lengths"),
    [(16, (6, 6, 7, 10)), (64, (12, 12, 19, 34)), (196, (28, 28, 52, 100)), (49, (10, 10, 16, 27))],
)
def test_band_lengths_as_tabulated(n: int, lengths: tuple[int, ...]) -> None:
    approx, (d1, d2, d3) = dwt1d(torch.zeros(1, n), "db3", level=3, mode="zero")
    assert (approx.shape[-1], d3.shape[-1], d2.shape[-1], d1.shape[-1]) == lengths
    assert _dwt.coeff_length(n, 6, "zero") == lengths[-1]
    assert _dwt.coeff_length(n, 6, "periodization") == (n + 1) // 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", LENGTHS)
def test_idwt1d_inverts_and_matches_waverec(mode: str, n: int) -> None:
    x = _rand(2, 3, n, seed=1)
    approx, details = dwt1d(torch.tensor(x), "db3", level=3, mode=mode)
    uncropped = idwt1d(approx, details, "db3", mode)
    ref = pywt.waverec(pywt.wavedec(x, "db3", mode=mode, level=3), "db3", mode=mode)
    np.testing.assert_allclose(uncropped.numpy(), ref, atol=1e-12, rtol=0)
    x32 = torch.tensor(x, dtype=torch.float32)
    back = idwt1d(*dwt1d(x32, "db3", level=3, mode=mode), "db3", mode, length=n)
    assert back.shape == x32.shape
    torch.testing.assert_close(back, x32, atol=1e-5, rtol=0)


def test_odd_length_reconstructs_one_sample_too_long_before_cropping() -> None:
    approx, details = dwt1d(torch.randn(1, 49), "db3", level=3, mode="zero")
    assert idwt1d(approx, details, "db3", "zero").shape[-1] == 50
    assert idwt2d(dwt2d(torch.randn(1, 7, 7)), "db3", "zero").shape[-2:] == (8, 8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_dwt2d_equals_dwt2_and_wavedec2(mode: str, size: tuple[int, int]) -> None:
    x = _rand(2, 3, *size, seed=2)
    c_a, (c_h, c_v, c_d) = pywt.dwt2(x, "db3", mode=mode)
    multi = pywt.wavedec2(x, "db3", mode=mode, level=1)
    for dtype, tol in DTYPES:
        coeffs = dwt2d(torch.tensor(x, dtype=dtype), "db3", mode=mode)
        assert coeffs.shape == (2, 3, 4, *c_a.shape[-2:])
        assert coeffs.dtype == dtype
        for band, want in enumerate((c_a, c_h, c_v, c_d)):  # (LL, LH, HL, HH)
            np.testing.assert_allclose(coeffs[:, :, band].double().numpy(), want, atol=tol, rtol=0)
        np.testing.assert_allclose(coeffs[:, :, 0].double().numpy(), multi[0], atol=tol, rtol=0)
        for band, want in enumerate(multi[1], start=1):
            np.testing.assert_allclose(coeffs[:, :, band].double().numpy(), want, atol=tol, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_idwt2d_inverts_and_matches_idwt2(mode: str, size: tuple[int, int]) -> None:
    x = _rand(2, 3, *size, seed=3)
    coeffs = dwt2d(torch.tensor(x), "db3", mode=mode)
    ref = pywt.idwt2(pywt.dwt2(x, "db3", mode=mode), "db3", mode=mode)
    np.testing.assert_allclose(idwt2d(coeffs, "db3", mode).numpy(), ref, atol=1e-12, rtol=0)
    x32 = torch.tensor(x, dtype=torch.float32)
    back = idwt2d(dwt2d(x32, "db3", mode), "db3", mode, size=size)
    assert back.shape == x32.shape
    torch.testing.assert_close(back, x32, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wavelet", ["haar", "sym4", "coif1", "bior2.2"])
@pytest.mark.parametrize("mode", MODES)
def test_other_wavelets_match_pywavelets(wavelet: str, mode: str) -> None:
    x = _rand(3, 49, seed=4)
    ref = pywt.wavedec(x, wavelet, mode=mode, level=3)
    approx, details = dwt1d(torch.tensor(x), wavelet, level=3, mode=mode)
    for got, want in zip([approx, *details[::-1]], ref, strict=True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(
        idwt1d(approx, details, wavelet, mode).numpy(), pywt.waverec(ref, wavelet, mode=mode), atol=1e-12
    )
    img = _rand(3, 7, 6, seed=5)
    c_a, highs = pywt.dwt2(img, wavelet, mode=mode)
    coeffs = dwt2d(torch.tensor(img), wavelet, mode)
    for band, want in enumerate((c_a, *highs)):
        np.testing.assert_allclose(coeffs[:, band].numpy(), want, atol=1e-12, rtol=0)


def test_batched_equals_one_at_a_time() -> None:
    x = torch.randn(4, 5, 7, 7, dtype=torch.float64)
    coeffs = dwt2d(x)
    approx, details = dwt1d(x.flatten(2), level=3)
    for b in range(4):
        for c in range(5):
            torch.testing.assert_close(coeffs[b, c], dwt2d(x[b, c]), atol=1e-14, rtol=0)
            single_a, single_d = dwt1d(x[b, c].flatten(), level=3)
            torch.testing.assert_close(approx[b, c], single_a, atol=1e-14, rtol=0)
            for got, want in zip(details, single_d, strict=True):
                torch.testing.assert_close(got[b, c], want, atol=1e-14, rtol=0)


def _all_bands(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, ...]:
    approx, details = dwt1d(x, "db3", 3, mode)
    return (approx, *details)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_1d(mode: str) -> None:
    x = torch.randn(2, 1, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _all_bands(t, mode), (x,))
    approx, details = dwt1d(x.detach(), "db3", 3, mode)
    leaves = [t.clone().requires_grad_(True) for t in (approx, *details)]
    assert torch.autograd.gradcheck(lambda a, *ds: idwt1d(a, ds, "db3", mode, length=13), tuple(leaves))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_2d(mode: str) -> None:
    x = torch.randn(2, 1, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt2d(t, "db3", mode), (x,))
    coeffs = dwt2d(x.detach(), "db3", mode).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: idwt2d(c, "db3", mode, size=(5, 7)), (coeffs,))


def test_filters_cached_per_wavelet_dtype_device() -> None:
    cpu = torch.device("cpu")
    first = _dwt._filters_2d("db3", torch.float32, cpu)
    assert _dwt._filters_2d("db3", torch.float32, cpu) is first
    assert _dwt._filters_2d("db3", torch.float64, cpu)[0].dtype == torch.float64
    assert first[0].shape == (4, 1, 6, 6)
    assert not first[0].requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_filled_under_inference_mode_still_works_with_autograd(dtype: torch.dtype) -> None:
    _dwt._bank.cache_clear()  # float64 CPU filters are views of the bank's tensors
    _dwt._filters_1d.cache_clear()
    _dwt._filters_2d.cache_clear()
    with torch.inference_mode():
        dwt1d(torch.randn(2, 16, dtype=dtype), level=3)
        dwt2d(torch.randn(2, 8, 8, dtype=dtype))
    x = torch.randn(2, 1, 8, 8, dtype=dtype, requires_grad=True)
    idwt2d(dwt2d(x)).sum().backward()  # type: ignore[no-untyped-call]  # fails on inference tensors
    a, ds = dwt1d(x.flatten(1), level=3)
    idwt1d(a, ds).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None


@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("mode", MODES)
def test_band_projections_keep_one_band(variant: str, mode: str) -> None:
    size = (7, 7)
    x = torch.randn(3, *size, dtype=torch.float64)
    level = 3 if variant == "1d" else 1
    proj = band_projections(variant, size, "db3", level, mode, (1, 2, 3), torch.float64, torch.device("cpu"))
    assert proj.shape == (3, 49, 49)
    flat = x.reshape(3, 49)
    if variant == "1d":
        approx, details = dwt1d(flat, "db3", 3, mode)
        only_approx = idwt1d(approx, [torch.zeros_like(d) for d in details], "db3", mode, length=49)
    else:
        coeffs = dwt2d(x, "db3", mode)
        kept = torch.zeros_like(coeffs)
        kept[:, 0] = coeffs[:, 0]
        only_approx = idwt2d(kept, "db3", mode, size=size).reshape(3, 49)
    # approximation part + every detail part = the signal (perfect reconstruction)
    total = only_approx + sum(flat @ proj[k] for k in range(3))
    torch.testing.assert_close(total, flat, atol=1e-12, rtol=0)
    assert all((flat @ proj[k]).abs().max() > 1e-3 for k in range(3))


@pytest.mark.parametrize(
    ("wavelet", "level"), [("db3", 3), ("db3", 1), ("haar", 2), ("sym4", 3), ("bior2.2", 2)]
)
@pytest.mark.parametrize("n", [1, 5, 8, 49, 64, 100, 257])
def test_polyphase_kernels_apply_the_zero_mode_projections(wavelet: str, level: int, n: int) -> None:
    """A polyphase conv1d with the kernels equals x @ Q_k, Q_k the dense projections built from the
    conv transform (which the tests above check against PyWavelets)."""
    bands = tuple(range(1, level + 1))
    kernels = polyphase_kernels(wavelet, level, bands, torch.float64, torch.device("cpu"))
    assert kernels is not None
    k, period, _, taps = kernels.shape
    assert (k, period, taps % 2) == (level, 2**level, 1)
    dense = band_projections("1d", (1, n), wavelet, level, "zero", bands, torch.float64, torch.device("cpu"))
    x = torch.randn(3, n, dtype=torch.float64)
    blocks = -(-n // period)
    padded = torch.nn.functional.pad(x, (0, blocks * period - n))
    phases = padded.view(3, blocks, period).transpose(1, 2)
    for i in range(k):
        y = torch.nn.functional.conv1d(phases, kernels[i], padding=taps // 2)
        y = y.transpose(1, 2).reshape(3, blocks * period)[:, :n]
        torch.testing.assert_close(y, x @ dense[i], atol=1e-12, rtol=0)


def test_polyphase_taps_of_db3_level_3() -> None:
    """The level-3 band reaches (L − 1)(2³ − 1) = 35 samples, at most ⌈35/8⌉ = 5 blocks each side; the
    outermost blocks turn out to be zero, so 9 taps remain, and none of them is zero."""
    kernels = polyphase_kernels("db3", 3, (1, 2, 3), torch.float64, torch.device("cpu"))
    assert kernels is not None and kernels.shape == (3, 8, 8, 9)
    assert kernels[..., [0, -1]].abs().max() > 1e-6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(7, 7), (6, 9), (1, 4)])
def test_axis_projections_factor_the_2d_projections(mode: str, size: tuple[int, int]) -> None:
    h, w = size
    cpu, f64 = torch.device("cpu"), torch.float64
    dense = band_projections("2d", size, "db3", 1, mode, (1, 2, 3), f64, cpu)
    high_h, high_w = axis_projection(h, "db3", mode, f64, cpu), axis_projection(w, "db3", mode, f64, cpu)
    low_h, low_w = torch.eye(h, dtype=f64) - high_h, torch.eye(w, dtype=f64) - high_w
    # x_flat @ kron(A, B) = (Aᵀ X B) flattened: cH = high along H, low along W; cV; cD
    for band, (a, b) in enumerate(((high_h, low_w), (low_h, high_w), (high_h, high_w))):
        torch.testing.assert_close(torch.kron(a, b), dense[band], atol=1e-12, rtol=0)


def test_unknown_wavelet_and_mode_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown wavelet 'db99'.*'db3'.*'haar'"):
        _dwt.check_wavelet("db99")
    with pytest.raises(ValueError, match="mode='reflect' is not one of 'zero', 'symmetric', 'periodization'"):
        dwt1d(torch.randn(8), mode="reflect")
    with pytest.raises(ValueError, match="level must be >= 1"):
        dwt1d(torch.randn(8), level=0)
    with pytest.raises(ValueError, match="length mismatch"):
        idwt1d(torch.randn(10), [torch.randn(4)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(mode: str) -> None:
    x = torch.randn(4, 8, 7, 7)
    coeffs = dwt2d(x, "db3", mode)
    cuda = dwt2d(x.cuda(), "db3", mode)
    torch.testing.assert_close(cuda.cpu(), coeffs, atol=1e-5, rtol=1e-5)
    back = idwt2d(cuda, "db3", mode, size=(7, 7))
    torch.testing.assert_close(back.cpu(), x, atol=1e-5, rtol=1e-5)
    approx, details = dwt1d(x.cuda().flatten(2), "db3", 3, mode)
    torch.testing.assert_close(
        idwt1d(approx, details, "db3", mode, length=49).cpu(), x.flatten(2), atol=1e-5, rtol=1e-5
    )
