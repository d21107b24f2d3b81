"""HASTE's native per-image kernel: the same output and buckets as the PyTorch ops, built once into the cache,
checked before use, and a clear error or a fallback when it cannot be had."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnkit.core import Context, create_method
from cnnkit.core.config import ConfigError
from cnnkit.efficiency import _haste_native
from cnnkit.efficiency._haste_native import NativeKernelUnavailable, native_kernel, native_unavailable_reason
from cnnkit.efficiency.haste import HASTEConv2d


def _forget_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(_haste_native, "_state", {})
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CNNKIT_HASTE_NATIVE", raising=False)
    return tmp_path / "native"


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Forget the loaded kernel and build into an empty cache folder (both restored afterwards)."""
    return _forget_kernel(monkeypatch, tmp_path)


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """:func:`fresh_state` where a kernel can be built (skipped elsewhere, failed on CI)."""
    _require_native()
    return _forget_kernel(monkeypatch, tmp_path)


def _require_native() -> None:
    reason = native_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):  # CI machines have a C compiler: a missing kernel there is a failure
        pytest.fail(f"HASTE's native kernel is unavailable on CI: {reason}")
    pytest.skip(f"HASTE's native kernel is unavailable here: {reason}")


def _layer(conv: nn.Conv2d, kernel: str, hyperplanes: int) -> HASTEConv2d:
    return HASTEConv2d(conv, hyperplanes=hyperplanes, patch=64, mode="compressed", kernel=kernel).eval()  # type: ignore[arg-type]


CASES = [
    # (in channels, out channels, map side, stride, L, batch): GEMM (< 64 output pixels) and oneDNN layouts,
    # a stride-2 conv that never reads the last row (the hash crops it), L = 64 (codes use the sign bit)
    (64, 32, 4, 1, 6, 1),
    (48, 24, 8, 1, 5, 3),
    (32, 16, 9, 2, 64, 2),
    (40, 56, 16, 1, 8, 2),
]


@pytest.mark.parametrize(("c", "o", "side", "stride", "planes", "batch"), CASES)
def test_native_and_torch_kernels_give_the_same_output_and_buckets(
    c: int, o: int, side: int, stride: int, planes: int, batch: int
) -> None:
    _require_native()
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, 3, stride=stride, padding=1, bias=True).eval()
    x = torch.relu(torch.randn(batch, c, side, side))
    x[:, 1::3] = x[:, 0::3][:, : x[:, 1::3].shape[1]]  # duplicated channels: real buckets at any L
    native, plain = _layer(conv, "native", planes), _layer(conv, "torch", planes)
    reference = HASTEConv2d(conv, hyperplanes=planes, patch=64).eval()
    with torch.no_grad():
        got, expected, simulated = native(x), plain(x), reference(x)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6), float((got - expected).abs().max())
    assert torch.allclose(got, simulated, rtol=1e-4, atol=1e-4)
    assert native.tally.bucket_fraction == plain.tally.bucket_fraction < native.tally.tiles
    assert native.tally.needed == plain.tally.needed


def test_native_kernel_groups_by_code_in_ascending_order() -> None:
    _require_native()
    merge = native_kernel()
    assert merge is not None
    codes = torch.tensor([5, -2, 5, 7, -2, -2], dtype=torch.int64)
    x = torch.arange(12, dtype=torch.float32).view(6, 2)
    rows = torch.arange(18, dtype=torch.float32).view(6, 3)
    means, merged = torch.full((12,), float("nan")), torch.full((18,), float("nan"))
    b = merge(codes, x, rows, means, merged)
    assert b == 3  # codes -2, 5, 7 in that order: channels {1, 4, 5}, {0, 2}, {3}
    expected_means = torch.stack([x[[1, 4, 5]].mean(0), x[[0, 2]].mean(0), x[3]])
    expected_merged = torch.stack([rows[[1, 4, 5]].sum(0), rows[[0, 2]].sum(0), rows[3]])
    assert torch.equal(means[:6].view(3, 2), expected_means)
    assert torch.equal(merged[:9].view(3, 3), expected_merged)


@pytest.mark.parametrize(("channels", "span"), [(300, 2**63 - 1), (2048, 2**20), (500, 3)])
def test_native_kernel_sorts_many_codes_of_either_sign(channels: int, span: int) -> None:
    # many buckets (large L, little merging) take the radix sort; few, the insertion sort
    _require_native()
    merge = native_kernel()
    assert merge is not None
    gen = torch.Generator().manual_seed(channels)
    codes = torch.randint(-span, span, (channels,), generator=gen)
    codes[::7] = codes[3]  # one large bucket among mostly single channels
    x, rows = torch.randn(channels, 4, generator=gen), torch.randn(channels, 6, generator=gen)
    means, merged = torch.empty(channels * 4), torch.empty(channels * 6)
    b = merge(codes, x, rows, means, merged)
    distinct, bucket = torch.unique(codes, sorted=True, return_inverse=True)
    assert b == len(distinct)
    expected = torch.zeros(b, 6, dtype=torch.float64).index_add_(0, bucket, rows.double())
    assert torch.allclose(merged[: b * 6].view(b, 6).double(), expected, atol=1e-5)
    sizes = torch.bincount(bucket).unsqueeze(1).double()
    expected_means = torch.zeros(b, 4, dtype=torch.float64).index_add_(0, bucket, x.double()) / sizes
    assert torch.allclose(means[: b * 4].view(b, 4).double(), expected_means, atol=1e-6)


def test_native_kernel_refuses_operands_it_was_not_written_for() -> None:
    _require_native()
    merge = native_kernel()
    assert merge is not None
    codes, x, rows = torch.zeros(4, dtype=torch.int64), torch.zeros(4, 3), torch.zeros(4, 5)
    out_m, out_w = torch.zeros(12), torch.zeros(20)
    with pytest.raises(ValueError, match="contiguous"):
        merge(codes, torch.zeros(3, 4).t(), rows, out_m, out_w)
    with pytest.raises(ValueError, match="int64"):
        merge(codes.int(), x, rows, out_m, out_w)
    with pytest.raises(ValueError, match=">= 20 elements"):
        merge(codes, x, rows, out_m, torch.zeros(19))


def test_native_kernel_is_built_once_into_the_cache(
    fresh_native: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert native_kernel() is not None
    built = list(fresh_native.glob("haste_native-*.so"))
    assert len(built) == 1
    monkeypatch.setattr(_haste_native, "_state", {})

    def no_compiler(*args: object) -> None:
        raise AssertionError("compiled again although the cache holds the kernel")

    monkeypatch.setattr(_haste_native, "_compile", no_compiler)
    assert native_kernel() is not None  # loaded from the cache


def test_a_kernel_that_fails_its_self_check_is_not_used(
    fresh_native: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_bind = _haste_native._bind

    def off_by_one(lib: object) -> Callable[..., int]:
        merge = real_bind(lib)  # type: ignore[arg-type]

        def wrong(*operands: torch.Tensor) -> int:
            b = merge(*operands)
            operands[-1][0] += 1.0  # one wrong sum in the merged filters
            return b

        return wrong

    monkeypatch.setattr(_haste_native, "_bind", off_by_one)
    assert native_kernel() is None
    assert "self-check" in str(native_unavailable_reason())


def test_without_a_compiler_auto_falls_back_and_native_says_why(
    fresh_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_haste_native.shutil, "which", lambda name: None)
    assert native_kernel() is None
    assert "no C compiler found" in str(native_unavailable_reason())
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1).eval()
    x = torch.relu(torch.randn(2, 16, 6, 6))
    with torch.no_grad():
        fallback = _layer(conv, "auto", 4)(x)
        expected = HASTEConv2d(conv, hyperplanes=4, patch=64).eval()(x)
    assert torch.allclose(fallback, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(NativeKernelUnavailable, match=r"kernel='native'.*no C compiler.*auto, native, torch"):
        _layer(conv, "native", 4)
    with pytest.raises(NativeKernelUnavailable, match="no C compiler"):
        create_method("haste", kernel="native", mode="compressed", start_layer="0").apply(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), Context(example_input=torch.randn(2, 3, 8, 8))
        )


def test_a_source_that_does_not_compile_gives_the_compiler_message(
    fresh_native: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("int haste_merge_image( {\n")
    monkeypatch.setattr(_haste_native, "_SOURCE", broken)
    assert native_kernel() is None
    assert "compiling broken.c" in str(native_unavailable_reason())
    assert not list(fresh_native.glob("*.so"))  # no half-written file left in the cache


def test_turned_off_by_the_environment(fresh_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNKIT_HASTE_NATIVE", "0")
    assert native_kernel() is None
    assert "CNNKIT_HASTE_NATIVE=0" in str(native_unavailable_reason())


def test_autograd_through_the_fast_path_uses_the_torch_ops() -> None:
    # the kernel has no backward: with a graph to record, the layer takes the PyTorch ops, which have one
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 6, 3, padding=1).eval()
    x = torch.relu(torch.randn(2, 12, 5, 5)).requires_grad_()
    grads = []
    for kernel in ("auto", "torch"):
        x.grad = None
        _layer(conv, kernel, 3)(x).square().sum().backward()
        assert x.grad is not None
        grads.append(x.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6) and grads[0].abs().sum() > 0


def test_kernel_field_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="kernel"):
        create_method("haste", kernel="cuda")
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="kernel must be one of auto, native, torch"):
        HASTEConv2d(nn.Conv2d(4, 4, 3), kernel="fast")  # type: ignore[arg-type]
