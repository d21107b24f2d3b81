"""Interspace Pruning (METHODS.md §12): the basis, the function at init, gradients against finite
differences, IP with a frozen identity basis = standard pruning, exact export, scores on Λ, stats, bad input
and the method contract under ``interspace=True``."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cnnkit.core.config import ConfigError
from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import apply_mask, get_mask
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.testing import (
    TinyResNet,
    TinyVGG,
    check_method_contract,
    make_context,
    method_factory,
    registered_method_names,
    seeded_batch,
)
from cnnkit.pruning.interspace import (
    InterspaceConv2d,
    dct_matrix,
    factored_forward,
    from_interspace,
    idle_basis_params,
    initial_basis,
    interspace_modules,
    interspace_param_groups,
    prepare_interspace,
    spatial_weight,
    to_interspace,
)
from cnnkit.pruning.scores import SNIP, Magnitude, SynFlow

# The contract under IP for the pruners with their own code path (random, magnitude and GraSP share SNIP's
# ScoredPruner path, SET shares RigL's; every pruner runs under IP in test_drt.py).
_OWN_PATH = {"snip", "synflow", "rigl", "imp", "cops", "freezenet"}
PRUNERS = [n for n in registered_method_names(distribution="cnnkit-pruning", kind="pruner") if n in _OWN_PATH]


def _seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _out(model: nn.Module, x: Tensor, train: bool = False) -> Tensor:
    model.train(train)
    if train:
        return model(x)
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------------------------- basis


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_dct_matrix_equals_scipy_and_the_basis_is_orthonormal(k: int) -> None:
    reference = scipy.fft.dct(np.eye(k), norm="ortho", axis=0)
    np.testing.assert_allclose(dct_matrix(k).numpy(), reference, rtol=0, atol=1e-14)
    f0 = initial_basis((k, k), "dct")
    assert f0.shape == (k * k, k * k)
    torch.testing.assert_close(f0 @ f0.T, torch.eye(k * k, dtype=torch.float64), rtol=0, atol=1e-12)
    # row (a, b) is the separable filter C[a] ⊗ C[b] laid out row-major like a K×K filter
    c = torch.from_numpy(reference)
    a, b = 1, k - 1
    torch.testing.assert_close(f0[a * k + b].view(k, k), torch.outer(c[a], c[b]), rtol=0, atol=1e-14)
    assert torch.equal(initial_basis((k, k), "identity"), torch.eye(k * k, dtype=torch.float64))


def test_initial_coefficients_reproduce_the_filters_in_float64() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3).double()
    w0 = conv.weight.detach().clone()
    InterspaceConv2d.convert(conv)
    lam, f = conv.weight.detach(), conv.basis.detach()
    torch.testing.assert_close(lam.view(6, 4, 9), w0.view(6, 4, 9) @ f.T, rtol=0, atol=1e-15)
    torch.testing.assert_close(spatial_weight(lam, f), w0, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(spatial_weight(lam, f), w0, rtol=0, atol=1e-12)


def test_orthonormal_basis_keeps_the_coefficient_variance() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    std = float(conv.weight.detach().std())
    InterspaceConv2d.convert(conv)
    assert float(conv.weight.detach().std()) == pytest.approx(std, rel=0.02)
    assert not torch.allclose(conv.weight, conv.basis.new_zeros(()))


# --------------------------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("make", [TinyResNet, TinyVGG])
def test_initial_outputs_equal_the_standard_model(make: Callable[[], nn.Module]) -> None:
    sp = _seeded(make)
    ip = copy.deepcopy(sp)
    names = to_interspace(ip)
    x = seeded_batch()[0]
    expected = {n for n, m in sp.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert set(names) == expected and names
    assert all(isinstance(ip.get_submodule(n), InterspaceConv2d) for n in names)
    pointwise = [m for m in ip.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert not any(isinstance(m, InterspaceConv2d) for m in pointwise)
    assert len(pointwise) == (2 if make is TinyResNet else 0)
    torch.testing.assert_close(_out(ip, x), _out(sp, x), rtol=0, atol=1e-5)  # eval, no grad
    torch.testing.assert_close(_out(ip, x, train=True), _out(sp, x, train=True), rtol=0, atol=1e-5)


def test_conversion_keeps_module_and_parameter_objects() -> None:
    model = _seeded(TinyVGG)
    conv = model.features[0]
    weight, bias = conv.weight, conv.bias
    to_interspace(model, train_basis=False)
    assert model.features[0] is conv and conv.weight is weight and conv.bias is bias
    assert not conv.basis.requires_grad
    assert to_interspace(model) == []  # already converted: nothing new, no error


def test_non_square_kernel_is_converted_with_a_separable_basis() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, (3, 1)), nn.Conv2d(3, 3, (1, 2)), nn.Conv2d(3, 2, 1))
    x = torch.randn(2, 2, 6, 6)
    before = _out(model, x)
    assert to_interspace(model) == ["0", "1"]
    assert model[0].basis.shape == (3, 3) and model[1].basis.shape == (2, 2)
    torch.testing.assert_close(model[0].basis.detach(), dct_matrix(3).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(_out(model, x), before, rtol=0, atol=1e-5)


def test_reset_parameters_gives_the_spatial_filters_of_a_plain_conv() -> None:
    plain = nn.Conv2d(3, 5, 3)
    ip = InterspaceConv2d(3, 5, 3)
    torch.manual_seed(3)
    plain.reset_parameters()
    torch.manual_seed(3)
    ip.reset_parameters()
    with torch.no_grad():
        torch.testing.assert_close(spatial_weight(ip.weight, ip.basis), plain.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ip.basis.detach(), initial_basis((3, 3)).float(), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- gradients


def _masked_ip_conv(seed: int = 0) -> tuple[InterspaceConv2d, Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    InterspaceConv2d.convert(conv)
    with torch.no_grad():
        conv.basis.add_(0.1 * torch.randn_like(conv.basis))  # a general (non-orthonormal) basis
    mask = torch.rand(conv.weight.shape) > 0.4
    apply_mask(conv, mask)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    target = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    return cast_ip(conv), mask, x, target


def cast_ip(module: nn.Module) -> InterspaceConv2d:
    assert isinstance(module, InterspaceConv2d)
    return module


def _loss(conv: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return ((conv(x) - target) ** 2).sum() / 7.0


def _finite_difference(fn: Callable[[], Tensor], tensor: Tensor, eps: float = 1e-6) -> Tensor:
    grad = torch.zeros_like(tensor)
    flat, g = tensor.detach().view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = float(flat[i])
            flat[i] = old + eps
            up = float(fn())
            flat[i] = old - eps
            down = float(fn())
            flat[i] = old
            g[i] = (up - down) / (2 * eps)
    return grad


def test_gradients_equal_finite_differences_and_the_closed_forms() -> None:
    conv, mask, x, target = _masked_ip_conv()
    lam_raw = conv.parametrizations.weight.original
    _loss(conv, x, target).backward()
    d_lam, d_f = lam_raw.grad.clone(), conv.basis.grad.clone()

    def fd_loss() -> Tensor:
        return _loss(conv, x, target)

    fd_lam = _finite_difference(fd_loss, lam_raw) * mask  # masked entries: the gradient hook zeroes them
    fd_f = _finite_difference(fd_loss, conv.basis)
    torch.testing.assert_close(d_lam, fd_lam, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(d_f, fd_f, rtol=1e-6, atol=1e-8)
    # closed forms (METHODS.md §12b), with G = dL/dW from a plain conv on the reconstructed W
    w = spatial_weight(conv.weight, conv.basis).detach().requires_grad_(True)
    ((F.conv2d(x, w, conv.bias.detach(), padding=1) - target) ** 2).sum().div(7.0).backward()
    g = w.grad.view(3, 2, 9)
    m_lam = conv.weight.detach().view(3, 2, 9)
    torch.testing.assert_close(d_lam.view(3, 2, 9), mask.view(3, 2, 9) * (g @ conv.basis.detach().T))
    torch.testing.assert_close(d_f, torch.einsum("oin,oim->nm", m_lam, g))


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_depthwise_plus_sparse_pointwise_path_equals_the_dense_reconstruction(
    stride: int, padding: int, dilation: int
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation).double()
    InterspaceConv2d.convert(conv)
    with torch.no_grad():
        conv.basis.add_(0.1 * torch.randn_like(conv.basis))
        conv.weight.mul_(torch.rand(conv.weight.shape, dtype=torch.float64) > 0.7)  # sparse Λ
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(factored_forward(conv, x), conv(x), rtol=0, atol=1e-12)
    grouped = InterspaceConv2d(4, 4, 3, groups=2)
    with pytest.raises(NotImplementedError, match="groups=1"):
        factored_forward(grouped, torch.randn(1, 4, 5, 5))


# --------------------------------------------------------------------------------------------- SP equivalence


def _train(method: Method, model: nn.Module, steps: int = 4, seed: int = 0) -> nn.Module:
    runner = MethodRunner(method, make_context(seed=seed, total_steps=steps))
    model = runner.apply(model)
    groups = runner.param_groups(model, weight_decay=5e-4)
    runner.set_optimizer(torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True))
    for step in range(steps):
        x, y = seeded_batch(seed=seed + 100 + step)
        runner.train_step(model, x, y)
    return model


@pytest.mark.parametrize("method", [SNIP, Magnitude])
def test_identity_basis_frozen_reproduces_standard_pruning_step_for_step(method: type[Method]) -> None:
    sp = _train(method(sparsity=0.8), _seeded(TinyResNet))
    ip_method = method(sparsity=0.8, interspace=True, basis_init="identity", train_basis=False)
    ip = _train(ip_method, _seeded(TinyResNet))
    for (name, a), (_, b) in zip(sp.named_modules(), ip.named_modules(), strict=True):
        if isinstance(a, nn.Conv2d | nn.Linear):
            assert torch.equal(get_mask(a), get_mask(b)), name
            assert torch.equal(a.weight, b.weight), name
    x = seeded_batch(seed=7)[0]
    assert torch.equal(_out(ip, x), _out(sp, x))
    assert ip_method.stats(ip)["trained_params"] == Magnitude().stats(sp)["trained_params"]


def test_dct_basis_is_trained_without_weight_decay_and_changes_the_function_space() -> None:
    method = SNIP(sparsity=0.8, interspace=True)
    model = method.apply(_seeded(TinyVGG), make_context())
    groups = method.param_groups(model)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(m.basis) for _, m in interspace_modules(model)}
    bases = [m.basis.detach().clone() for _, m in interspace_modules(model)]
    model = _train(SNIP(sparsity=0.8, interspace=True), _seeded(TinyVGG), steps=2)
    moved = [not torch.equal(m.basis, b) for (_, m), b in zip(interspace_modules(model), bases, strict=True)]
    assert all(moved)
    # the coefficients are sparse; every filter with a kept coefficient is spatially dense
    conv = interspace_modules(model)[1][1]
    assert float((conv.weight == 0).float().mean()) > 0.3
    alive = conv.weight.detach().flatten(2).ne(0).any(-1)
    with torch.no_grad():
        w = spatial_weight(conv.weight, conv.basis).flatten(2)
    assert bool(w[alive].ne(0).all()) and bool(w[~alive].eq(0).all())
    assert interspace_param_groups(model, SNIP(interspace=False).config) == []


# --------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("make", [TinyResNet, TinyVGG])
def test_export_gives_plain_convs_and_is_exact(make: Callable[[], nn.Module]) -> None:
    method = SNIP(sparsity=0.9, interspace=True)
    model = _train(method, _seeded(make), steps=2)
    x = seeded_batch(seed=5)[0]
    before = _out(model, x)
    deployed = SNIP(sparsity=0.9, interspace=True).export(copy.deepcopy(model))
    assert not any(isinstance(m, InterspaceConv2d) for m in deployed.modules())
    assert all(type(m) is nn.Conv2d for m in deployed.modules() if isinstance(m, nn.Conv2d))
    assert not any("basis" in n for n, _ in deployed.named_parameters())
    assert torch.equal(_out(deployed, x), before)
    # a plain model loads the exported weights
    plain = _seeded(make, seed=1)
    plain.load_state_dict(deployed.state_dict())
    assert torch.equal(_out(plain, x), before)


def test_from_interspace_refuses_masked_coefficients() -> None:
    model = SNIP(sparsity=0.5, interspace=True).apply(_seeded(TinyVGG), make_context())
    with pytest.raises(ValueError, match="bake the masks"):
        from_interspace(model)


# --------------------------------------------------------------------------------------------- scores on Λ


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.point = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(torch.relu(self.point(torch.relu(self.conv(x)))).flatten(1))
        return out


def _hand_snip(plain: nn.Module, lam: Tensor, basis: Tensor, ctx_batches: list) -> dict[str, Tensor]:
    """|Λ ⊙ ∂L/∂Λ| (and |θ ⊙ ∂L/∂θ| for the spatial layers) through functional_call on the plain model."""
    lam = lam.clone().requires_grad_(True)
    point = plain.point.weight.detach().clone().requires_grad_(True)
    fc = plain.fc.weight.detach().clone().requires_grad_(True)
    grads = [torch.zeros_like(t) for t in (lam, point, fc)]
    for x, y in ctx_batches:
        w = (lam.view(4, 3, 9) @ basis).view(4, 3, 3, 3)
        params = {"conv.weight": w, "point.weight": point, "fc.weight": fc}
        loss = F.cross_entropy(functional_call(plain, params, (x,)), y)
        for acc, g in zip(grads, torch.autograd.grad(loss, [lam, point, fc]), strict=True):
            acc += g
    return {
        "conv": (lam.detach() * grads[0]).abs(),
        "point": (point.detach() * grads[1]).abs(),
        "fc": (fc.detach() * grads[2]).abs(),
    }


def test_snip_under_interspace_scores_the_coefficients() -> None:
    plain = _seeded(_ConvNet)
    model = copy.deepcopy(plain)
    ctx = make_context()
    method = SNIP(sparsity=0.7, interspace=True, normalize="none", batches=2)
    prepare_interspace(model, method.config)
    lam, basis = model.conv.weight.detach().clone(), model.conv.basis.detach().clone()
    scores = method.compute_scores(model, ctx)
    expected = _hand_snip(plain, lam, basis, list(ctx.batches))
    for name in ("conv", "point", "fc"):
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(
        scores["conv"], _hand_snip(plain, plain.conv.weight.detach(), torch.eye(9), list(ctx.batches))["conv"]
    )


@pytest.mark.parametrize("mode", ["lambda_and_basis", "lambda_only"])
def test_synflow_under_interspace_takes_abs_as_configured(mode: str) -> None:
    plain = _seeded(_ConvNet).double()
    model = _seeded(_ConvNet)
    method = SynFlow(sparsity=0.5, interspace=True, rounds=1, normalize="none", synflow_abs=mode)
    prepare_interspace(model, method.config)
    lam = model.conv.weight.detach().double().abs().requires_grad_(True)
    basis = model.conv.basis.detach().double()
    basis = basis.abs() if mode == "lambda_and_basis" else basis
    absolute = {n: t.detach().abs() for n, t in plain.named_parameters()}
    point, fc = (absolute[k].requires_grad_(True) for k in ("point.weight", "fc.weight"))
    params = {**absolute, "conv.weight": (lam.view(4, 3, 9) @ basis).view(4, 3, 3, 3)}
    params.update({"point.weight": point, "fc.weight": fc})
    plain.eval()
    r = functional_call(plain, params, (torch.ones(1, 3, 16, 16, dtype=torch.float64),)).sum()
    g_lam, g_point, g_fc = torch.autograd.grad(r, [lam, point, fc])
    scores = method.compute_scores(model, make_context())
    torch.testing.assert_close(scores["conv"], (lam * g_lam).abs().detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(scores["fc"], (fc * g_fc).abs().detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(scores["point"], (point * g_point).abs().detach(), rtol=1e-10, atol=0)


def test_magnitude_under_interspace_keeps_the_largest_coefficients() -> None:
    model = _seeded(_ConvNet)
    lam = (model.conv.weight.detach().double().view(4, 27 // 9 * 1, 9) @ initial_basis((3, 3)).T).float()
    method = Magnitude(sparsity=0.6, interspace=True, include=("conv",), exclude=("point",))
    model = method.apply(model, make_context())
    kept = get_mask(model.conv).bool()
    assert int(kept.sum()) == 44  # ⌈0.4·108⌉
    threshold = lam.abs().view(-1).sort(descending=True).values[43]
    assert torch.equal(kept.view(4, 3, 9), lam.abs() >= threshold)


# --------------------------------------------------------------------------------------------- stats


def test_stats_report_the_basis_with_and_without() -> None:
    method = SNIP(sparsity=0.9, interspace=True)
    model = method.apply(_seeded(TinyResNet), make_context())
    stats = method.stats(model)
    n_bases = sum(1 for m in model.modules() if isinstance(m, InterspaceConv2d))
    assert n_bases == 7 and stats["basis_params"] == 81.0 * n_bases
    kept, maskable, nb = stats["kept"], stats["maskable"], stats["basis_params"]
    assert stats["sparsity"] == pytest.approx(1 - kept / maskable)
    assert stats["sparsity_with_basis"] == pytest.approx(1 - (kept + nb) / (maskable + nb))
    sp_method = SNIP(sparsity=0.9)
    sp_stats = sp_method.stats(sp_method.apply(_seeded(TinyResNet), make_context()))
    assert stats["kept"] == sp_stats["kept"]  # Λ's non-zero budget equals SP's
    idle = idle_basis_params(model)
    assert stats["trained_params"] == sp_stats["trained_params"] + nb - idle
    assert stats["dense_params"] == sp_stats["dense_params"] + nb
    assert sp_stats["basis_params"] == 0.0 and "sparsity_with_basis" not in sp_stats
    frozen = SNIP(sparsity=0.9, interspace=True, train_basis=False)
    assert (
        frozen.stats(frozen.apply(_seeded(TinyResNet), make_context()))["trained_params"]
        == (sp_stats["trained_params"])
    )


def test_basis_rows_without_kept_coefficients_are_idle() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 3))
    to_interspace(model)
    assert idle_basis_params(model) == 0
    mask = torch.ones(3, 2, 9, dtype=torch.bool)
    mask[:, :, [0, 4]] = False  # rows 0 and 4 of the first basis lose every coefficient
    apply_mask(model[0], mask.view(3, 2, 3, 3))
    assert idle_basis_params(model) == 2 * 9
    x = torch.randn(2, 2, 7, 7)
    model(x).square().sum().backward()
    dead = model[0].basis.grad.abs().sum(dim=1) == 0
    assert dead.tolist() == [i in (0, 4) for i in range(9)]
    model[0].basis.requires_grad_(False)  # a frozen basis is not counted as trained at all
    assert idle_basis_params(model) == 0


# --------------------------------------------------------------------------------------------- bad input


def test_model_without_spatial_convs_gives_a_clear_error() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(MethodNotApplicableError, match="K > 1"):
        SNIP(interspace=True).apply(mlp, make_context())
    pointwise = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(MethodNotApplicableError, match="1×1 convs"):
        to_interspace(pointwise)
    SNIP(interspace=False).apply(pointwise, make_context())  # fine without interspace


def test_bad_config_names_the_field_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"basis_init.*'dct', 'identity'"):
        SNIP(interspace=True, basis_init="haar")
    with pytest.raises(ConfigError, match=r"synflow_abs.*'lambda_and_basis', 'lambda_only'"):
        SynFlow(synflow_abs="basis")
    with pytest.raises(ValueError, match="basis_init must be one of"):
        to_interspace(_seeded(TinyVGG), basis_init="haar")  # type: ignore[arg-type]


def test_already_masked_convs_cannot_be_converted() -> None:
    model = _seeded(TinyVGG)
    apply_mask(model.features[0], torch.ones_like(model.features[0].weight))
    with pytest.raises(ValueError, match="already parametrized"):
        to_interspace(model)


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.slow
@pytest.mark.parametrize("name", PRUNERS)
def test_method_contract_under_interspace(name: str) -> None:
    check_method_contract(method_factory(name, interspace=True), {"tiny_resnet": TinyResNet})
