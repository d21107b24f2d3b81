"""Spectral Fourier Dropout (METHODS.md §4): pruning and dropout in the DCT domain, placement, errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.fft
import torch
import torchvision
from torch import nn

from cnnkit.core.config import ConfigError
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.sites import Inserted
from cnnkit.core.testing import TinyResNet, TinyVGG, check_method_contract, make_context
from cnnkit.regularizers import _dct
from cnnkit.regularizers.sfd import SFD, SpectralFourierDropout, Variant, num_pruned, spectral_fourier_dropout

VARIANTS: list[Variant] = ["1d", "2d"]


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _coeffs(x: torch.Tensor, variant: Variant) -> np.ndarray:
    """Reference coefficients from SciPy, shape (B, C, n)."""
    a = x.detach().double().numpy()
    if variant == "1d":
        return np.asarray(scipy.fft.dct(a.reshape(*a.shape[:2], -1), type=2, norm="ortho", axis=-1))
    return np.asarray(scipy.fft.dctn(a, type=2, norm="ortho", axes=(-2, -1))).reshape(*a.shape[:2], -1)


# -- identity cases ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_p0_eta0_is_identity_in_train_mode(variant: Variant) -> None:
    x = _x(4, 3, 7, 7, dtype=torch.float32)
    layer = SpectralFourierDropout(0.0, 0.0, variant).train()
    torch.testing.assert_close(layer(x), x, rtol=0, atol=0)
    # the functional form always transforms: DCT then inverse DCT
    y = spectral_fourier_dropout(x, 0.0, 0.0, variant)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_is_exactly_identity(variant: Variant) -> None:
    x = _x(4, 3, 5, 9, dtype=torch.float32)
    layer = SpectralFourierDropout(0.4, 0.3, variant).eval()
    assert layer(x) is x
    assert not torch.allclose(layer.train()(x), x)  # the same layer does act in training mode


# -- pruning -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(7, 7), (4, 4), (5, 8)])
def test_exactly_the_weakest_floor_eta_n_coefficients_are_zeroed(
    variant: Variant, shape: tuple[int, int]
) -> None:
    eta = 0.3
    x = _x(4, 3, *shape)
    n = shape[0] * shape[1]
    k = math.floor(eta * n)
    assert num_pruned(eta, n) == k > 0
    y = spectral_fourier_dropout(x, 0.0, eta, variant)
    before, after = _coeffs(x, variant), _coeffs(y, variant)
    weakest = np.argsort(np.abs(before), axis=-1)[..., :k]
    zeroed = np.zeros(before.shape, dtype=bool)
    np.put_along_axis(zeroed, weakest, True, axis=-1)
    np.testing.assert_allclose(after[zeroed], 0.0, atol=1e-12)  # the k weakest are gone ...
    np.testing.assert_allclose(after[~zeroed], before[~zeroed], atol=1e-12)  # ... the rest untouched
    assert ((np.abs(after) < 1e-12).sum(-1) == k).all()


def test_pruning_count_rounds_down_and_tolerates_float_error() -> None:
    assert num_pruned(0.1, 49) == 4  # 4.9 → 4
    assert num_pruned(0.29, 100) == 29  # 0.29·100 = 28.999999999999996 in floating point
    assert num_pruned(0.05, 16) == 0  # 0.8 → nothing pruned
    assert num_pruned(0.99, 1) == 0


def test_batch_channel_scope_ranks_over_the_batch() -> None:
    eta, x = 0.25, _x(4, 3, 4, 4)
    y = spectral_fourier_dropout(x, 0.0, eta, "2d", quantile_scope="batch_channel")
    before, after = _coeffs(x, "2d"), _coeffs(y, "2d")
    per_channel = np.abs(before).transpose(1, 0, 2).reshape(3, -1)
    k = math.floor(eta * per_channel.shape[1])
    threshold = np.sort(per_channel, axis=-1)[:, k - 1]
    zero_count = (np.abs(after) < 1e-12).transpose(1, 0, 2).reshape(3, -1).sum(-1)
    assert (zero_count == k).all()
    kept = np.abs(before) > threshold[None, :, None]
    np.testing.assert_allclose(after[kept], before[kept], atol=1e-12)
    # samples of one channel lose different numbers of coefficients (not k per sample)
    assert len(set((np.abs(after) < 1e-12).sum(-1).ravel().tolist())) > 1


# -- dropout -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_kept_coefficients_are_scaled_by_inverse_keep_rate_with_a_seeded_mask(variant: Variant) -> None:
    p, x = 0.3, _x(4, 3, 7, 7)
    y = spectral_fourier_dropout(x, p, 0.0, variant, generator=torch.Generator().manual_seed(5))
    before, after = _coeffs(x, variant), _coeffs(y, variant)
    mask = torch.empty(before.shape, dtype=torch.float64).bernoulli_(
        1 - p, generator=torch.Generator().manual_seed(5)
    )
    np.testing.assert_allclose(after, before * mask.numpy() / (1 - p), atol=1e-12)
    assert 0.15 < 1 - mask.mean().item() < 0.45
    again = spectral_fourier_dropout(x, p, 0.0, variant, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, y)


def test_rescale_false_and_batch_mask_granularity() -> None:
    p, x = 0.5, _x(4, 3, 6, 6)
    y = spectral_fourier_dropout(x, p, 0.0, "2d", rescale=False, mask_granularity="batch")
    before, after = _coeffs(x, "2d"), _coeffs(y, "2d")
    ratio = np.where(np.abs(before) > 1e-9, after / before, 1.0)
    assert np.isin(np.round(ratio, 9), [0.0, 1.0]).all()
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1, :1], ratio.shape), atol=1e-9)  # one mask
    assert 0 < (np.abs(after) < 1e-12).sum() < after.size


def test_pruning_and_dropout_combine() -> None:
    p, eta, x = 0.5, 0.25, _x(2, 2, 8, 8)
    y = spectral_fourier_dropout(x, p, eta, "2d", generator=torch.Generator().manual_seed(0))
    before, after = _coeffs(x, "2d"), _coeffs(y, "2d")
    ratio = after / before
    assert np.isin(np.round(ratio, 9), [0.0, 2.0]).all()
    weakest = np.argsort(np.abs(before), axis=-1)[..., :16]
    assert np.allclose(np.take_along_axis(after, weakest, axis=-1), 0.0)


def test_unbiased_without_pruning_monte_carlo() -> None:
    torch.manual_seed(0)
    x = _x(1, 1, 8, 8, dtype=torch.float32).expand(20000, 1, 8, 8)
    y = spectral_fourier_dropout(x, 0.2, 0.0, "2d")
    assert (y.mean(0) - x[0]).abs().max() < 0.03
    assert (y[0] - x[0]).abs().max() > 0.05  # each draw is noisy


# -- dtypes, autograd ----------------------------------------------------------------------------------
def test_autocast_bfloat16_keeps_dtype_and_is_finite() -> None:
    layer = SpectralFourierDropout(0.2, 0.1, "2d").train()
    x = _x(2, 3, 7, 7, dtype=torch.float32).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_with_fixed_mask(variant: Variant) -> None:
    x = _x(2, 2, 3, 5).requires_grad_()

    def fn(t: torch.Tensor) -> torch.Tensor:
        return spectral_fourier_dropout(t, 0.3, 0.2, variant, generator=torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


# -- the method ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_contract(variant: Variant) -> None:
    check_method_contract(lambda: SFD(**SFD.contract_config, variant=variant))


def _layers(model: nn.Module) -> list[Inserted]:
    return [
        m for m in model.modules() if isinstance(m, Inserted) and isinstance(m.added, SpectralFourierDropout)
    ]


def test_defaults_are_the_papers() -> None:
    cfg = SFD.Config()
    assert (cfg.variant, cfg.p, cfg.eta, cfg.stages) == ("2d", 0.2, 0.1, (4,))
    assert (cfg.position, cfg.quantile_scope, cfg.rescale, cfg.norm) == (
        "auto",
        "sample_channel",
        True,
        "ortho",
    )
    assert cfg.mask_granularity == "coefficient"


def test_placement_2d_before_every_conv_of_the_stage_including_shortcuts() -> None:
    method = SFD(p=0.1, variant="2d", stages=(3,))
    model = method.apply(TinyResNet(), make_context())
    layers = _layers(model)
    assert len(layers) == 3 and all(
        w.position == "before" and isinstance(w.original, nn.Conv2d) for w in layers
    )
    assert method.stats(model) == {"sites": 3.0}
    assert all(not isinstance(m, Inserted) for m in model.get_submodule("layer2").modules())
    no_shortcut = SFD(variant="2d", stages=(3,), include_shortcuts=False).apply(TinyResNet(), make_context())
    assert len(_layers(no_shortcut)) == 2


def test_placement_1d_after_convs_at_low_resolution_before_at_high() -> None:
    low = SFD(variant="1d", stages=(3,)).apply(TinyResNet(), make_context())
    assert [w.position for w in _layers(low)] == ["after"] * 3
    ctx = make_context()
    ctx.example_input = torch.zeros(1, 3, 224, 224)
    high = SFD(variant="1d").apply(torchvision.models.resnet18(), ctx)
    layers = _layers(high)
    assert len(layers) == 5 and all(w.position == "before" for w in layers)  # 4 convs + downsample conv
    forced = SFD(variant="1d", stages=(3,), position="before").apply(TinyResNet(), make_context())
    assert [w.position for w in _layers(forced)] == ["before"] * 3


def test_vgg_and_export_removes_layers() -> None:
    method = SFD(stages=(2, 3))
    model = method.apply(TinyVGG(), make_context())
    assert method.stats(model) == {"sites": 2.0}
    exported = method.export(model)
    assert not _layers(exported) and method.stats(exported) == {"sites": 0.0}


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"p": 1.0}, "p", "0.0 <= p < 1.0"),
        ({"p": -0.1}, "p", "0.0 <= p < 1.0"),
        ({"eta": 1.0}, "eta", "0.0 <= eta < 1.0"),
        ({"variant": "3d"}, "variant", "'1d', '2d'"),
        ({"stages": (0,)}, "stages", "1-based"),
        ({"stages": ()}, "stages", "at least 1"),
    ],
)
def test_bad_config_names_the_field_and_allowed_values(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        SFD(**overrides)
    assert allowed in str(info.value)


def test_missing_stage_is_not_applicable_and_names_the_range() -> None:
    with pytest.raises(MethodNotApplicableError, match=r"stages.*1\.\.3"):
        SFD().apply(TinyResNet(), make_context())  # default stage 4; the tiny ResNet has 3


def test_layer_rejects_bad_rates_and_shapes() -> None:
    with pytest.raises(ValueError, match="p=1.0"):
        SpectralFourierDropout(1.0, 0.0)
    with pytest.raises(ValueError, match="eta=-0.5"):
        spectral_fourier_dropout(torch.zeros(1, 1, 2, 2), 0.1, -0.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        spectral_fourier_dropout(torch.zeros(2, 4), 0.1, 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_pruning_matches_cpu(variant: Variant) -> None:
    x = _x(4, 8, 7, 7, dtype=torch.float32)
    y_cpu = spectral_fourier_dropout(x, 0.0, 0.3, variant)
    y_gpu = spectral_fourier_dropout(x.cuda(), 0.0, 0.3, variant)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_a_forward_under_inference_mode_does_not_break_later_training(variant: Variant) -> None:
    _dct._matrix.cache_clear()
    _dct._kron.cache_clear()
    with torch.inference_mode():
        SpectralFourierDropout(0.2, 0.1, variant).train()(torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    SpectralFourierDropout(0.2, 0.1, variant).train()(x).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None


@pytest.mark.parametrize(("variant", "size"), [("1d", (30, 31)), ("2d", (2, 600))])  # H·W or W > 512: FFT
def test_empty_batch_on_the_fft_path_gives_an_empty_output(variant: Variant, size: tuple[int, int]) -> None:
    x = torch.randn(0, 3, *size, requires_grad=True)
    y = SpectralFourierDropout(0.2, 0.1, variant).train()(x)  # was: "MKL FFT error: ... Inconsistent ..."
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and x.grad.shape == x.shape
