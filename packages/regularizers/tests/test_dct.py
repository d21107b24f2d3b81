"""The torch DCT (``cnnkit.regularizers._dct``) against SciPy, its inverse, and its gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.fft
import torch

from cnnkit.regularizers import _dct
from cnnkit.regularizers._dct import (
    AUTO_MATMUL_MAX_N,
    DENSE_2D_MAX,
    DctImpl,
    DctNorm,
    dct,
    dct_2d,
    dct_matrix,
    idct,
    idct_2d,
)

IMPLS: list[DctImpl] = ["matmul", "fft", "auto"]
NORMS: list[DctNorm] = ["ortho", "backward"]
# 2-D shapes covering the dense Kronecker path (H·W <= DENSE_2D_MAX) and the separable one.
SHAPES_2D = [(4, 4), (7, 7), (8, 8), (15, 7), (1, 5), (14, 14), (15, 15), (7, 49)]


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def test_shapes_cover_both_matrix_paths() -> None:
    assert any(h * w <= DENSE_2D_MAX for h, w in SHAPES_2D)
    assert any(h * w > DENSE_2D_MAX for h, w in SHAPES_2D)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("norm", NORMS)
def test_dct_1d_equals_scipy(norm: DctNorm, impl: DctImpl) -> None:
    for n in [1, 2, 7, 8, 15, 49, 64]:
        _check_1d(_rand(3, 2, n), norm, impl)


def _check_1d(x: np.ndarray, norm: DctNorm, impl: DctImpl) -> None:
    expected = scipy.fft.dct(x, type=2, norm=norm, axis=-1)
    got = dct(torch.from_numpy(x), norm, impl=impl)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    got32 = dct(torch.from_numpy(x).float(), norm, impl=impl)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=2e-6 * max(1.0, np.abs(expected).max()))
    back = idct(torch.from_numpy(expected), norm, impl=impl)
    np.testing.assert_allclose(back.numpy(), scipy.fft.idct(expected, type=2, norm=norm, axis=-1), atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("norm", NORMS)
def test_dct_2d_equals_scipy(norm: DctNorm, impl: DctImpl) -> None:
    for shape in SHAPES_2D:
        _check_2d(_rand(2, 3, *shape), norm, impl)


def _check_2d(x: np.ndarray, norm: DctNorm, impl: DctImpl) -> None:
    expected = scipy.fft.dctn(x, type=2, norm=norm, axes=(-2, -1))
    got = dct_2d(torch.from_numpy(x), norm, impl=impl)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12 * max(1.0, np.abs(expected).max()))
    got32 = dct_2d(torch.from_numpy(x).float(), norm, impl=impl)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=2e-6 * max(1.0, np.abs(expected).max()))
    back = idct_2d(torch.from_numpy(expected), norm, impl=impl)
    np.testing.assert_allclose(
        back.numpy(), scipy.fft.idctn(expected, type=2, norm=norm, axes=(-2, -1)), atol=1e-12
    )


def test_auto_switches_to_fft_for_long_signals_and_stays_exact() -> None:
    n = AUTO_MATMUL_MAX_N + 37
    x = _rand(2, n)
    np.testing.assert_allclose(
        dct(torch.from_numpy(x)).numpy(), scipy.fft.dct(x, type=2, norm="ortho"), rtol=0, atol=1e-11
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("norm", NORMS)
def test_inverse_of_forward_is_identity_float32(norm: DctNorm, impl: DctImpl) -> None:
    x = torch.randn(4, 5, 49, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(idct(dct(x, norm, impl=impl), norm, impl=impl), x, rtol=0, atol=1e-5)
    for shape in [(7, 7), (15, 15), (8, 3)]:
        x2 = torch.randn(4, 5, *shape, generator=torch.Generator().manual_seed(2))
        y2 = idct_2d(dct_2d(x2, norm, impl=impl), norm, impl=impl)
        torch.testing.assert_close(y2, x2, rtol=0, atol=1e-5)


def test_ortho_matrix_is_orthogonal_and_cached() -> None:
    d = dct_matrix(15, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(15, dtype=torch.float64), rtol=0, atol=1e-14)
    assert dct_matrix(15, dtype=torch.float64) is d
    torch.testing.assert_close(dct_matrix(15, inverse=True, dtype=torch.float64), d.T)


@pytest.mark.parametrize("impl", ["matmul", "fft"])
def test_gradcheck_float64(impl: DctImpl) -> None:
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(2, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    x2 = torch.randn(2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    x3 = torch.randn(1, 9, 15, dtype=torch.float64, generator=gen, requires_grad=True)  # separable path
    cases = [(dct, x1), (idct, x1), (dct_2d, x2), (idct_2d, x2), (dct_2d, x3), (idct_2d, x3)]
    for norm in NORMS:
        for fn, x in cases:
            assert torch.autograd.gradcheck(lambda t, f=fn, n=norm: f(t, n, impl=impl), (x,), fast_mode=True)


def test_bad_arguments_are_named() -> None:
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="norm='forward'"):
        dct(x, "forward")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl='cuda'"):
        dct(x, impl="cuda")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["matmul", "fft"])
def test_cuda_matches_cpu(impl: DctImpl) -> None:
    x = torch.randn(8, 16, 7, 9)
    for fn in (dct_2d, idct_2d):
        torch.testing.assert_close(fn(x.cuda(), impl=impl).cpu(), fn(x, impl=impl), rtol=1e-5, atol=1e-5)
    flat = x.flatten(2)
    torch.testing.assert_close(dct(flat.cuda(), impl=impl).cpu(), dct(flat, impl=impl), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrices_cached_under_inference_mode_still_work_with_autograd(dtype: torch.dtype) -> None:
    _dct._matrix.cache_clear()
    _dct._kron.cache_clear()
    shapes = [(4, 4), (14, 14)]  # the Kronecker and the separable 2-D path, and 1-D of length 16 and 196
    with torch.inference_mode():
        for h, w in shapes:
            idct_2d(dct_2d(torch.randn(2, h, w, dtype=dtype), impl="matmul"), impl="matmul")
            idct(dct(torch.randn(2, h * w, dtype=dtype), impl="matmul"), impl="matmul")
    for h, w in shapes:  # "Inference tensors cannot be saved for backward" when the cache held them
        x = torch.randn(2, h, w, dtype=dtype, requires_grad=True)
        idct_2d(dct_2d(x, impl="matmul"), impl="matmul").sum().backward()  # type: ignore[no-untyped-call]
        y = torch.randn(2, h * w, dtype=dtype, requires_grad=True)
        idct(dct(y, impl="matmul"), impl="matmul").sum().backward()  # type: ignore[no-untyped-call]
        assert x.grad is not None and y.grad is not None


@pytest.mark.parametrize("transform", [dct, idct, dct_2d, idct_2d])
def test_fft_of_an_empty_batch_is_empty(transform: Callable[..., torch.Tensor]) -> None:
    x = torch.randn(0, 3, 5, 600, dtype=torch.float64)  # torch's CPU FFT rejects empty batches
    assert transform(x, impl="fft").shape == x.shape
    assert transform(x, impl="auto").dtype == torch.float64
