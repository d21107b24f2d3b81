"""Spectral Batch Normalization (METHODS.md §5): Algorithm 1 against a NumPy closed form, running statistics,
AMP, placement and the method contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnkit.core.config import ConfigError
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.sites import Inserted
from cnnkit.core.testing import TinyResNet, TinyVGG, check_method_contract, make_context
from cnnkit.regularizers.sbn import SBN, FoldedSpectralBatchNorm2d, SpectralBatchNorm2d, UnbiasedN

EPS = 1e-5
SIZES = [(7, 7), (7, 8), (8, 8), (5, 3)]


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layer(c: int, **kwargs: Any) -> SpectralBatchNorm2d:
    """A float64 layer (``impl="closed_form"`` unless given)."""
    return SpectralBatchNorm2d(c, dtype=torch.float64, **kwargs)


# -- NumPy reference (independent of torch) -------------------------------------------------------------
def _batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.fft.rfft2(x)  # numpy's default norm is "backward"
    mean = spectrum.mean(axis=(0, 2, 3))
    var = (np.abs(spectrum - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    return mean, var


def _closed_form(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """METHODS.md §5b: y = (γ/s)·x + Re(z)·δ₀₀ + Im(z)·J, s = √(σ² + ε), z = β − γµ/s, J = irfft2(i·1)."""
    h, w = x.shape[-2:]
    s = np.sqrt(var + EPS)
    z = beta - gamma * mean / s
    delta = np.zeros((h, w))
    delta[0, 0] = 1.0
    j = np.fft.irfft2(1j * np.ones((h, w // 2 + 1)), s=(h, w))
    per_c = (slice(None), None, None)
    return np.asarray((gamma / s)[per_c] * x + z.real[per_c] * delta + z.imag[per_c] * j)


# -- Algorithm 1 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_train_output_equals_closed_form_with_fresh_statistics(size: tuple[int, int]) -> None:
    x = _x(4, 3, *size) + 0.3  # a non-zero mean, so the offsets matter
    y = _layer(3).train()(x)
    mean, var = _batch_stats(x.numpy())
    expected = _closed_form(x.numpy(), mean, var, np.ones(3), np.zeros(3))
    assert y.shape == x.shape
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_closed_form_with_affine_parameters() -> None:
    x = _x(3, 4, 6, 7, seed=1)
    layer = _layer(4).train()
    gamma, beta = np.array([0.5, 2.0, -1.0, 1.5]), np.array([0.1, -0.3, 0.0, 2.0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
    mean, var = _batch_stats(x.numpy())
    np.testing.assert_allclose(
        layer(x).detach().numpy(), _closed_form(x.numpy(), mean, var, gamma, beta), rtol=0, atol=1e-12
    )


def test_shrinks_maps_by_about_sqrt_hw() -> None:
    x = _x(16, 2, 7, 7)
    y = _layer(2).train()(x)
    ratio = (x.std() / y.std()).item()
    assert 0.8 * 7 < ratio < 1.2 * 7


@pytest.mark.parametrize("size", SIZES)
def test_odd_sizes_keep_their_shape_and_fold_matches(size: tuple[int, int]) -> None:
    layer = SpectralBatchNorm2d(3)
    x = _x(4, 3, *size, dtype=torch.float32)
    for _ in range(2):
        layer.train()(x)
    assert layer(x).shape == x.shape
    layer.eval()
    torch.testing.assert_close(layer.fold()(x), layer(x), rtol=1e-5, atol=1e-6)


# -- running statistics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["count", "paper"])
def test_running_statistics_after_one_and_two_steps(rule: UnbiasedN) -> None:
    b, c, h, w = 4, 3, 7, 6
    layer = _layer(c, momentum=0.1, unbiased_n=rule)
    assert torch.equal(layer.running_mean, torch.zeros(c, 2, dtype=torch.float64))
    assert torch.equal(layer.running_var, torch.ones(c, dtype=torch.float64))
    n = b * h * (w // 2 + 1) if rule == "count" else c * h * w / 2
    rm, rv = np.zeros(c, dtype=complex), np.ones(c)
    for step in range(2):
        x = _x(b, c, h, w, seed=10 + step) + step
        layer.train()(x)
        mean, var = _batch_stats(x.numpy())
        rm = 0.1 * mean + 0.9 * rm
        rv = 0.1 * var * n / (n - 1) + 0.9 * rv
        np.testing.assert_allclose(layer.running_mean[:, 0].numpy(), rm.real, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.running_mean[:, 1].numpy(), rm.imag, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.running_var.numpy(), rv, rtol=1e-12)


def test_eval_uses_running_statistics_and_is_per_sample() -> None:
    layer = _layer(3)
    for step in range(3):
        layer.train()(_x(8, 3, 5, 5, seed=step) * 2 + 1)
    layer.eval()
    x = _x(4, 3, 5, 5, seed=99)
    before = (layer.running_mean.clone(), layer.running_var.clone())
    y = layer(x)
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    mean = layer.running_mean[:, 0].numpy() + 1j * layer.running_mean[:, 1].numpy()
    expected = _closed_form(x.numpy(), mean, layer.running_var.numpy(), np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x[:1]), y[:1])  # no batch statistics in eval mode


@pytest.mark.parametrize("impl", ["closed_form", "fft"])
def test_gradcheck_train_mode(impl: str) -> None:
    layer = _layer(2, impl=impl)
    x = _x(3, 2, 3, 5).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


# -- AMP ---------------------------------------------------------------------------------------------------
class _FftDtypes(TorchFunctionMode):
    """Records the dtype of every tensor passed to a torch.fft function."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if getattr(func, "__module__", "") == "torch._C._fft" or "fft" in getattr(func, "__name__", ""):
            self.seen += [(func.__name__, a.dtype) for a in args if isinstance(a, torch.Tensor)]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layer_type", ["sbn", "fft", "folded"])
def test_autocast_bfloat16_computes_in_float32(layer_type: str) -> None:
    sbn = SpectralBatchNorm2d(4, impl="fft" if layer_type == "fft" else "closed_form")
    sbn.train()(_x(8, 4, 7, 7, dtype=torch.float32))
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), sbn.eval().fold() if layer_type == "folded" else sbn
    )
    model.train(layer_type != "folded")
    x = _x(8, 3, 7, 7, dtype=torch.float32)
    spy = _FftDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), spy:
        conv_out = model[1](model[0](x))
        y = model[2](conv_out)
        y_bf16 = model[2](conv_out.to(torch.bfloat16))
    if layer_type == "fft":
        assert {name for name, _ in spy.seen} >= {"fft_rfft2", "fft_irfft2"}
    assert all(dtype in (torch.float32, torch.complex64) for _, dtype in spy.seen), spy.seen
    assert y.dtype == conv_out.dtype and y_bf16.dtype == torch.bfloat16
    # float32 inside: the same values as without autocast (the training-mode calls see other batches, so
    # compare in eval mode, where the layer is a fixed function)
    model[2].eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = model[2](conv_out.detach().to(torch.bfloat16))
    y_plain = model[2](conv_out.detach().to(torch.bfloat16).float())
    torch.testing.assert_close(y_auto, y_plain.to(torch.bfloat16), rtol=0, atol=0)
    assert torch.isfinite(y).all() and torch.isfinite(y_bf16.float()).all()


# -- the two implementations -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
@pytest.mark.parametrize("size", [*SIZES, (1, 1), (2, 2), (4, 1), (1, 6)])
def test_closed_form_impl_equals_fft_impl(norm: str, size: tuple[int, int]) -> None:
    """impl="closed_form" (reductions, no FFT) and impl="fft" (Algorithm 1): outputs, input gradients,
    parameter gradients, running statistics, eval mode and the folded layer, in float64."""
    layers = [_layer(3, fft_norm=norm, impl=impl) for impl in ("closed_form", "fft")]
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.3, 2.0]))
    x = (_x(4, 3, *size, seed=3) * 1.5 + 0.4).requires_grad_()
    grad_out = _x(4, 3, *size, seed=4)
    results = []
    for layer in layers:
        y = layer.train()(x)
        grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad_out)
        results.append((y, *grads, layer.running_mean, layer.running_var, layer.eval()(x), layer.fold()(x)))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_float32_closed_form_matches_the_float64_reference() -> None:
    x = _x(16, 4, 8, 8, seed=5) * 2.0 + 0.7
    reference = _layer(4, impl="fft").train()(x)
    y = SpectralBatchNorm2d(4).train()(x.float())
    torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=1e-5)


# -- the method ----------------------------------------------------------------------------------------------
def _sbn_wrappers(model: nn.Module) -> list[Inserted]:
    return [
        m for m in model.modules() if isinstance(m, Inserted) and isinstance(m.added, SpectralBatchNorm2d)
    ]


@pytest.mark.parametrize("export", ["keep_fft", "fold"])
def test_contract(export: str) -> None:
    check_method_contract(lambda: SBN(**SBN.contract_config, export=export))


def test_defaults_are_the_papers() -> None:
    cfg = SBN.Config()
    assert (cfg.stages, cfg.momentum, cfg.eps, cfg.include_shortcut_bn) == ((3, 4), 0.1, 1e-5, True)
    assert (cfg.fft_norm, cfg.unbiased_n, cfg.compute_dtype, cfg.export) == (
        "backward",
        "count",
        "float32",
        "keep_fft",
    )


def test_placement_after_each_bn_of_stages_3_and_4_of_resnet18() -> None:
    method = SBN()
    model = method.apply(torchvision.models.resnet18(), make_context())
    wrappers = _sbn_wrappers(model)
    assert len(wrappers) == 10  # 2 blocks × 2 BNs × 2 stages + the 2 downsample BNs
    assert all(w.position == "after" and isinstance(w.original, nn.BatchNorm2d) for w in wrappers)
    assert all(w.added.num_features == w.original.num_features for w in wrappers)
    assert method.stats(model) == {"sites": 10.0}
    assert not _sbn_wrappers(model.get_submodule("layer2")) and not _sbn_wrappers(
        model.get_submodule("layer1")
    )
    main_path_only = SBN(include_shortcut_bn=False).apply(torchvision.models.resnet18(), make_context())
    assert len(_sbn_wrappers(main_path_only)) == 8
    keys = model.state_dict().keys()
    assert "layer3.0.bn1.added.running_mean" in keys and "layer4.1.bn2.added.running_var" in keys
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_placement_on_tiny_models_via_contract_config() -> None:
    resnet = SBN(**SBN.contract_config).apply(TinyResNet(), make_context())
    assert len(_sbn_wrappers(resnet)) == 6  # stages 2 and 3: bn1, bn2 and the shortcut BN each
    vgg = SBN(**SBN.contract_config).apply(TinyVGG(), make_context())
    assert len(_sbn_wrappers(vgg)) == 2


def test_export_keeps_or_folds() -> None:
    model = SBN(stages=(3,)).apply(TinyResNet(), make_context())
    model.train()(torch.randn(8, 3, 16, 16))
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    kept = SBN(stages=(3,)).export(model)
    assert len(_sbn_wrappers(kept)) == 3
    folded = SBN(stages=(3,), export="fold").export(model)
    assert not _sbn_wrappers(folded)
    assert sum(isinstance(m, FoldedSpectralBatchNorm2d) for m in folded.modules()) == 3
    torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)


def test_missing_stages_are_not_applicable_and_name_the_range() -> None:
    with pytest.raises(MethodNotApplicableError, match=r"'stages'=\[3, 4\].*1\.\.3"):
        SBN().apply(TinyResNet(), make_context())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"momentum": 0.0}, "momentum"),
        ({"eps": -1.0}, "eps"),
        ({"stages": (0, 3)}, "stages"),
        ({"fft_norm": "x"}, "fft_norm"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SBN(**overrides)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_float16_matches_cpu() -> None:
    layer = SpectralBatchNorm2d(4)
    x = _x(8, 4, 7, 7, dtype=torch.float32)
    expected = layer.train()(x)
    gpu = SpectralBatchNorm2d(4).cuda().train()
    with torch.autocast("cuda", dtype=torch.float16):
        y = gpu(x.cuda().half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float().cpu(), expected, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("impl", ["closed_form", "fft"])
@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_behaves_like_batchnorm2d(impl: str, training: bool) -> None:
    layer = SpectralBatchNorm2d(3, impl=impl).train(training)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(2.0)
    x = torch.randn(0, 3, 8, 8, requires_grad=True)
    y = layer(x)  # was: ZeroDivisionError (closed form, training) or an MKL error (fft)
    assert y.shape == nn.BatchNorm2d(3).train(training)(x).shape == (0, 3, 8, 8)
    assert y.dtype == x.dtype
    y.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None and x.grad.shape == x.shape
    torch.testing.assert_close(layer.weight.grad, torch.zeros(3))
    torch.testing.assert_close(layer.running_mean, torch.full((3, 2), 0.5))  # unchanged, as in BatchNorm2d
    torch.testing.assert_close(layer.running_var, torch.full((3,), 2.0))
