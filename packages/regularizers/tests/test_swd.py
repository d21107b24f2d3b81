"""Spectral Wavelet Dropout: the layer against a PyWavelets reference, its masks, placement and contract."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import pytest
import pywt
import torch
from torch import nn

from cnnkit.core import ConfigError, MethodNotApplicableError
from cnnkit.core.sites import Inserted
from cnnkit.core.testing import TinyResNet, TinyVGG, check_method_contract, make_context
from cnnkit.regularizers import _dwt
from cnnkit.regularizers.swd import SWD, SpectralWaveletDropout

pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")

SIZES = [(8, 8), (7, 7), (4, 4), (5, 3)]
IMPLS = ["conv", "matmul", "structured"]


def _impls(variant: str, mode: str = "zero") -> list[str]:
    """The implementations that support ``variant`` and ``mode`` (1-D "structured" needs mode "zero")."""
    return [i for i in IMPLS if i != "structured" or variant == "2d" or mode == "zero"]


def _reference(x: torch.Tensor, scale: np.ndarray, variant: str, mode: str = "zero") -> np.ndarray:
    """PyWavelets: transform, multiply detail band i by ``scale[..., i]`` (broadcast to (B, C, 3)), invert."""
    arr = x.detach().double().numpy()
    b, c, h, w = arr.shape
    s = np.broadcast_to(scale, (b, c, 3))
    if variant == "1d":
        coeffs = pywt.wavedec(arr.reshape(b, c, h * w), "db3", mode=mode, level=3)  # [cA3, cD3, cD2, cD1]
        for i in range(3):
            coeffs[-1 - i] = coeffs[-1 - i] * s[..., i, None]
        out: np.ndarray = pywt.waverec(coeffs, "db3", mode=mode)[..., : h * w]
        return out.reshape(b, c, h, w)
    c_a, highs = pywt.dwt2(arr, "db3", mode=mode)
    highs = tuple(band * s[..., i, None, None] for i, band in enumerate(highs))
    image: np.ndarray = pywt.idwt2((c_a, highs), "db3", mode=mode)[..., :h, :w]
    return image


def _scale(keep: torch.Tensor, p: float) -> np.ndarray:
    return keep.double().numpy() / (1.0 - p)


# -- the layer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("size", SIZES)
def test_p0_train_mode_is_identity(variant: str, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    layer = SpectralWaveletDropout(0.0, variant).train()
    torch.testing.assert_close(layer(x), x, atol=1e-5, rtol=0)
    for impl in IMPLS:  # the full transform path with every band kept and scale 1
        layer.impl = impl
        y = layer.transform(x, torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_eval_mode_is_exactly_identity(variant: str) -> None:
    x = torch.randn(2, 3, 7, 7)
    layer = SpectralWaveletDropout(0.5, variant).eval()
    assert layer(x) is x


@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("mode", _dwt.MODES)
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (5, 3)])
def test_mask_drops_and_scales_bands_like_pywavelets(variant: str, mode: str, size: tuple[int, int]) -> None:
    p = 0.3
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for keep in ([True, False, True], [False, True, False], [False, False, False], [True, True, True]):
        mask = torch.tensor(keep)
        want = _reference(x, _scale(mask, p), variant, mode)
        for impl in _impls(variant, mode):
            layer = SpectralWaveletDropout(p, variant, mode=mode, impl=impl).train()
            np.testing.assert_allclose(layer.transform(x, mask).numpy(), want, atol=1e-10, err_msg=impl)


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_forward_uses_the_generator_mask(variant: str) -> None:
    p = 0.5
    x = torch.randn(2, 3, 8, 8)
    layer = SpectralWaveletDropout(p, variant, generator=torch.Generator().manual_seed(7)).train()
    y = layer(x)
    keep = layer.sample_keep(x, generator=torch.Generator().manual_seed(7))
    assert keep.shape == (3,)
    np.testing.assert_allclose(y.numpy(), _reference(x, _scale(keep, p), variant), atol=1e-5)
    torch.testing.assert_close(layer.sample_keep(x, torch.Generator().manual_seed(7)), keep)


def _band_coefficients(y: torch.Tensor, variant: str) -> list[torch.Tensor]:
    """Detail bands of ``y`` under the orthogonal periodization transform (even sizes): (B, C, ...)."""
    if variant == "1d":
        return _dwt.dwt1d(y.flatten(2), "db3", 3, "periodization")[1]
    coeffs = _dwt.dwt2d(y, "db3", "periodization")
    return [coeffs[:, :, i] for i in (1, 2, 3)]


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_in_the_wavelet_domain_dropped_bands_are_zero_and_kept_ones_scaled(variant: str) -> None:
    p = 0.25
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    layer = SpectralWaveletDropout(p, variant, mode="periodization").train()
    keep = torch.tensor([False, True, False])
    y = layer.transform(x, keep)
    before, after = _band_coefficients(x, variant), _band_coefficients(y, variant)
    for kept, band_x, band_y in zip(keep.tolist(), before, after, strict=True):
        if kept:
            torch.testing.assert_close(band_y, band_x / (1 - p), atol=1e-12, rtol=0)
        else:
            assert band_y.abs().max() < 1e-12
    if variant == "1d":  # the approximation band is untouched
        approx = _dwt.dwt1d(x.flatten(2), "db3", 3, "periodization")[0]
        torch.testing.assert_close(_dwt.dwt1d(y.flatten(2), "db3", 3, "periodization")[0], approx)


def _kept_pattern(x: torch.Tensor, y: torch.Tensor, variant: str) -> torch.Tensor:
    """(B, C, 3) booleans: which detail bands of each (sample, channel) survived, read off the output."""
    energy = torch.stack([band.flatten(2).abs().amax(-1) for band in _band_coefficients(y, variant)], -1)
    return energy > 1e-9


@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("granularity", ["batch", "sample", "sample_channel"])
def test_mask_granularity(variant: str, granularity: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8, 8, dtype=torch.float64)
    layer = SpectralWaveletDropout(0.5, variant, mode="periodization", mask_granularity=granularity).train()
    patterns = [_kept_pattern(x, layer(x), variant) for _ in range(4)]
    for pattern in patterns:
        same_channels = bool((pattern == pattern[:, :1]).all())
        same_samples = bool((pattern == pattern[:1]).all())
        assert same_channels == (granularity != "sample_channel")
        assert same_samples == (granularity == "batch")
    if granularity == "batch":  # one fresh mask per call
        assert len({tuple(p[0, 0].tolist()) for p in patterns}) > 1
    expected = {"batch": (3,), "sample": (16, 1, 3), "sample_channel": (16, 4, 3)}[granularity]
    assert layer.sample_keep(x).shape == expected


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_unbiased_exactly_over_all_batch_masks(variant: str) -> None:
    p = 0.2
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    layer = SpectralWaveletDropout(p, variant).train()
    mean = torch.zeros_like(x)
    for keep in itertools.product([False, True], repeat=3):
        prob = float(np.prod([1 - p if k else p for k in keep]))
        mean += prob * layer.transform(x, torch.tensor(keep))
    torch.testing.assert_close(mean, x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_monte_carlo_mean_and_drop_rate(variant: str) -> None:
    p = 0.2
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    layer = SpectralWaveletDropout(p, variant, mask_granularity="sample_channel").train()
    draws = layer(x.expand(20_000, 1, 8, 8))  # 20k independent masks in one call
    assert (draws.mean(0) - x[0]).abs().max() < 0.02
    drop_rate = (~layer.sample_keep(torch.empty(10_000, 1, 1, 1))).double().mean().item()
    assert abs(drop_rate - p) < 0.015
    per_call = SpectralWaveletDropout(p, variant)  # batch granularity: one 3-vector per call
    calls = torch.stack([per_call.sample_keep(x) for _ in range(3_000)])
    assert abs((~calls).double().mean().item() - p) < 0.02


def test_bands_option_restricts_dropping_to_the_level_3_band() -> None:
    p = 0.5
    layer = SpectralWaveletDropout(p, "1d", bands=(3,)).train()
    x = torch.randn(64, 2, 8, 8, dtype=torch.float64)
    keep = layer.sample_keep(x)
    assert keep[:2].all()
    for mask in ([True, True, False], [True, True, True]):
        y = layer.transform(x, torch.tensor(mask))
        scale = np.array([1.0, 1.0, mask[2] / (1 - p)])
        np.testing.assert_allclose(y.numpy(), _reference(x, scale, "1d"), atol=1e-10)


@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("granularity", ["batch", "sample", "sample_channel"])
@pytest.mark.parametrize("size", [(7, 7), (16, 16), (17, 9)])
@pytest.mark.parametrize("bands", [(1, 2, 3), (2,), (1, 3)])
def test_the_implementations_agree(
    variant: str, granularity: str, size: tuple[int, int], bands: tuple[int, ...]
) -> None:
    x = torch.randn(4, 3, *size, dtype=torch.float64)
    layer = SpectralWaveletDropout(0.3, variant, mask_granularity=granularity, bands=bands)
    keep = layer.sample_keep(x, torch.Generator().manual_seed(1))
    layer.impl = "conv"
    conv = layer.transform(x, keep)
    for impl in ("matmul", "structured"):
        layer.impl = impl
        torch.testing.assert_close(layer.transform(x, keep), conv, atol=1e-12, rtol=0, msg=impl)


@pytest.mark.parametrize("mode", _dwt.MODES)
def test_structured_2d_holds_in_every_mode_and_1d_only_in_zero_mode(mode: str) -> None:
    x = torch.randn(2, 3, 9, 12, dtype=torch.float64)
    keep = torch.tensor([True, False, True])
    conv = SpectralWaveletDropout(0.2, "2d", mode=mode, impl="conv").transform(x, keep)
    structured = SpectralWaveletDropout(0.2, "2d", mode=mode, impl="structured").transform(x, keep)
    torch.testing.assert_close(structured, conv, atol=1e-12, rtol=0)
    if mode != "zero":
        with pytest.raises(ValueError, match="impl='structured' with variant='1d' needs mode='zero'"):
            SpectralWaveletDropout(0.2, "1d", mode=mode, impl="structured")
        with pytest.raises(ConfigError, match="needs mode='zero'"):
            SWD(impl="structured", mode=mode)


def test_auto_picks_dense_for_small_maps_then_structured() -> None:
    def paths(variant: str, mode: str = "zero") -> list[str]:
        layer = SpectralWaveletDropout(0.1, variant, mode=mode)
        return [layer.path(torch.empty(1, 1, n, n)) for n in (4, 7, 8, 16, 17, 32, 33)]

    assert paths("1d") == ["matmul"] * 4 + ["structured"] * 3  # dense up to N = 256
    assert paths("2d") == ["matmul"] * 3 + ["structured"] * 4  # dense up to N = 64
    assert paths("2d", "symmetric") == paths("2d")
    assert paths("1d", "symmetric") == ["matmul"] * 6 + ["conv"]  # no 1-D structured form: N <= 1024
    assert _dwt.DENSE_MAX_N == {"1d": 256, "2d": 64}


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_channels_last_input(variant: str) -> None:
    x = torch.randn(2, 5, 8, 8)
    layer = SpectralWaveletDropout(0.3, variant)
    keep = torch.tensor([True, False, True])
    y = layer.transform(x.contiguous(memory_format=torch.channels_last), keep)
    torch.testing.assert_close(y, layer.transform(x, keep), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_with_a_fixed_mask(variant: str, impl: str) -> None:
    layer = SpectralWaveletDropout(0.3, variant, impl=impl, mask_granularity="sample")
    x = torch.randn(2, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[[True, False, True]], [[False, True, True]]])
    assert torch.autograd.gradcheck(lambda t: layer.transform(t, keep), (x,))
    batch_keep = torch.tensor(
        [True, False, True]
    )  # one mask for the batch: 1-D "structured" has its own backward
    assert torch.autograd.gradcheck(lambda t: layer.transform(t, batch_keep), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", ["1d", "2d"])
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_matches_cpu(variant: str, impl: str) -> None:
    x = torch.randn(4, 8, 7, 7)
    layer = SpectralWaveletDropout(0.3, variant, impl=impl, mask_granularity="sample")
    keep = layer.sample_keep(x)
    y = layer.transform(x.cuda(), keep.cuda())
    torch.testing.assert_close(y.cpu(), layer.transform(x, keep), atol=1e-5, rtol=1e-5)
    assert layer.train()(x.cuda()).device.type == "cuda"


# -- the method -----------------------------------------------------------------------------------------
def _inserted(model: nn.Module) -> dict[str, str]:
    """{qualified name of the wrapped module: position} for every inserted SWD layer."""
    return {
        name.replace(".original", ""): module.position
        for name, module in model.named_modules()
        if isinstance(module, Inserted) and isinstance(module.added, SpectralWaveletDropout)
    }


@pytest.mark.parametrize(("variant", "position"), [("1d", "after"), ("2d", "before")])
def test_placement_on_tiny_cifar_resnet(variant: str, position: str) -> None:
    method = SWD(variant=variant, stages=(3,))
    model = method.apply(TinyResNet(), make_context())
    assert _inserted(model) == {
        "layer3.0.conv1": position,
        "layer3.0.conv2": position,
        "layer3.0.shortcut.0": position,
    }
    assert method.stats(model) == {"sites": 3.0}
    layer = model.get_submodule("layer3.0.conv1.added")
    assert isinstance(layer, SpectralWaveletDropout)
    assert (layer.p, layer.variant, layer.wavelet, layer.mode) == (0.1, variant, "db3", "zero")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    model: nn.Module = torchvision.models.resnet18(num_classes=10)
    return model


@pytest.mark.parametrize(("variant", "position"), [("1d", "after"), ("2d", "before")])
def test_placement_on_torchvision_resnet18_defaults_to_module_4(
    resnet18: nn.Module, variant: str, position: str
) -> None:
    model = SWD(variant=variant).apply(copy.deepcopy(resnet18), make_context())
    names = ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2"]
    assert _inserted(model) == dict.fromkeys(names, position)
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_placement_options_on_resnet18(resnet18: nn.Module) -> None:
    ctx = make_context()
    without = SWD(include_shortcuts=False).apply(copy.deepcopy(resnet18), ctx)
    assert set(_inserted(without)) == {"layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
    imagenet = SWD(variant="1d", position="before", stages=(3, 4)).apply(copy.deepcopy(resnet18), ctx)
    assert len(_inserted(imagenet)) == 10
    assert set(_inserted(imagenet).values()) == {"before"}


def test_placement_on_tiny_vgg() -> None:
    model = SWD(stages=(3,)).apply(TinyVGG(), make_context())
    assert _inserted(model) == {"features.8": "after"}


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"p": 1.0}, "p", "p < 1"),
        ({"p": -0.1}, "p", "0.0 <= p"),
        ({"variant": "3d"}, "variant", "'1d', '2d'"),
        ({"wavelet": "db99"}, "wavelet", "'db3'"),
        ({"mode": "reflect"}, "mode", "'zero', 'symmetric', 'periodization'"),
        ({"bands": (4,)}, "bands", "1, 2, 3"),
        ({"bands": (3, 3)}, "bands", "distinct"),
        ({"mask_granularity": "pixel"}, "mask_granularity", "'batch', 'sample', 'sample_channel'"),
        ({"stages": ()}, "stages", "at least 1 item"),
        ({"nope": 1}, "nope", "allowed fields"),
    ],
)
def test_bad_config_names_field_and_allowed_values(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SWD(**overrides)
    message = str(info.value)
    assert f"- {field}" in message
    assert allowed in message


def test_a_stage_the_model_does_not_have() -> None:
    with pytest.raises(
        MethodNotApplicableError, match=r"stages=\[4\] out of range: this model has stages 1\.\.3"
    ):
        SWD().apply(TinyResNet(), make_context())


def test_layer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p=1.0 must satisfy 0 <= p < 1"):
        SpectralWaveletDropout(1.0)
    with pytest.raises(ValueError, match="unknown wavelet 'nope'"):
        SpectralWaveletDropout(0.1, wavelet="nope")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        SpectralWaveletDropout(0.1).train()(torch.randn(2, 16))


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_contract(variant: str) -> None:
    check_method_contract(lambda: SWD(**{**SWD.contract_config, "variant": variant}))


def test_contract_with_conv_impl_and_per_sample_masks() -> None:
    check_method_contract(
        lambda: SWD(**{**SWD.contract_config, "impl": "conv", "mask_granularity": "sample_channel"}),
        models={"tiny_resnet": TinyResNet},
    )


@pytest.mark.parametrize("variant", ["1d", "2d"])
def test_export_removes_every_swd_layer_and_keeps_outputs(variant: str) -> None:
    method = SWD(variant=variant, stages=(2, 3))
    model = method.apply(TinyResNet(), make_context())
    assert method.stats(model)["sites"] == 6.0
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        before = model(x)
        exported = method.export(model)
        after = exported(x)
    assert not any(isinstance(m, (SpectralWaveletDropout, Inserted)) for m in exported.modules())
    assert method.stats(exported) == {"sites": 0.0}
    assert torch.equal(before, after)
    assert set(exported.state_dict()) == set(TinyResNet().state_dict())


def test_auto_position_follows_the_papers_resolution_rule() -> None:
    from cnnkit.core import Context

    low, high = (
        Context(example_input=torch.zeros(1, 3, 32, 32)),
        Context(example_input=torch.zeros(1, 3, 224, 224)),
    )
    assert SWD(variant="1d").position(low) == "after"
    assert SWD(variant="1d").position(high) == "before"
    assert SWD(variant="2d").position(low) == "before"
    assert SWD(variant="1d", position="after").position(high) == "after"


def test_a_float64_conv_forward_under_inference_mode_does_not_break_later_training() -> None:
    _dwt._bank.cache_clear()
    _dwt._filters_1d.cache_clear()
    layer = SpectralWaveletDropout(0.3, "1d", impl="conv").train()
    with torch.inference_mode():
        layer(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()  # type: ignore[no-untyped-call]  # "Inference tensors cannot be saved ..."
    assert x.grad is not None


@pytest.mark.parametrize(
    ("variant", "impl", "mode", "size"),
    [
        ("1d", "conv", "zero", (4, 4)),
        ("1d", "auto", "symmetric", (40, 40)),  # auto picks the conv path here
        ("1d", "conv", "periodization", (5, 7)),
        ("1d", "matmul", "zero", (4, 4)),
        ("1d", "structured", "zero", (40, 40)),
        ("2d", "conv", "symmetric", (5, 7)),
        ("2d", "structured", "zero", (40, 40)),
    ],
)
def test_empty_batch_gives_an_empty_output(variant: str, impl: str, mode: str, size: tuple[int, int]) -> None:
    layer = SpectralWaveletDropout(0.3, variant, impl=impl, mode=mode, mask_granularity="sample").train()
    x = torch.randn(0, 3, *size, requires_grad=True)
    if impl == "auto":
        assert layer.path(x) == "conv"
    y = layer(x)  # the 1-D conv path failed: "cannot reshape tensor of 0 elements into shape [0, 3, -1]"
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and x.grad.shape == x.shape
