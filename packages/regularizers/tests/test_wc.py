"""Weight Compander (METHODS.md §6): reparametrization, inverse init, weight decay, export, contract."""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from cnnkit.core.config import ConfigError
from cnnkit.core.cost import count_params
from cnnkit.core.masks import apply_mask
from cnnkit.core.method import MethodNotApplicableError, build_param_groups
from cnnkit.core.testing import TINY_MODELS, check_method_contract, make_context, seeded_batch
from cnnkit.regularizers.wc import WC, Compander, compander_layers


def _model(name: str = "tiny_resnet", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TINY_MODELS[name]().eval()


def _applied(method: WC, name: str = "tiny_resnet") -> tuple[nn.Module, nn.Module]:
    plain = _model(name)
    return plain, method.apply(_model(name), make_context())


def _raw(module: nn.Module) -> Tensor:
    return cast(Tensor, module.parametrizations["weight"].original)


def _train(model: nn.Module, method: WC, steps: int, lr: float = 0.05) -> None:
    groups = build_param_groups(model, method, weight_decay=5e-4)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    ctx = make_context()
    model.train()
    for step in range(steps):
        x, y = seeded_batch(seed=step)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + method.extra_loss(model, ctx)
        loss.backward()
        method.after_backward(ctx)
        optimizer.step()
        method.after_step(ctx)
    model.eval()


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
@pytest.mark.parametrize("overrides", [{}, {"learnable": True}, {"function": "erf"}, {"function": "arsinh"}])
def test_output_unchanged_right_after_apply(model_name: str, overrides: dict[str, Any]) -> None:
    plain, wc_model = _applied(WC(**overrides), model_name)
    x = seeded_batch(seed=3)[0]
    with torch.no_grad():
        torch.testing.assert_close(wc_model(x), plain(x), rtol=0, atol=1e-6)


def test_every_conv_and_linear_weight_is_reparametrized_and_nothing_else() -> None:
    plain, model = _applied(WC())
    names = [name for name, _, _ in compander_layers(model)]
    expected = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert names == expected  # first conv, shortcut convs and the classifier included
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            assert set(module.parametrizations) == {"weight"}, name  # biases untouched
        assert not (isinstance(module, nn.BatchNorm2d) and parametrize.is_parametrized(module))


def test_inverse_init_reproduces_the_weights() -> None:
    w0 = (torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.47
    compander = Compander(0.5, 1.0, w0)
    v0 = compander.right_inverse(w0)
    torch.testing.assert_close(v0, 1.0 * torch.tan(w0 / 0.5))
    assert (compander(v0) - w0).abs().max() <= 1e-7


def test_psi_closed_form_and_derivative_at_zero() -> None:
    a, b = 0.6, 0.7
    compander = Compander(a, b, torch.zeros(()))
    v = torch.linspace(-3, 3, 101, requires_grad=True)
    w = compander(v)
    torch.testing.assert_close(w, a * torch.atan(v / b))
    (grad,) = torch.autograd.grad(w.sum(), v)
    torch.testing.assert_close(grad, a / (b * (1 + (v.detach() / b) ** 2)))
    torch.testing.assert_close(compander.derivative(torch.zeros(())), torch.tensor(a / b))
    assert bool((w.abs() < a * math.pi / 2).all())


@pytest.mark.parametrize("function", ["arctan", "erf", "arsinh"])
@pytest.mark.parametrize("learnable", [False, True])
def test_gradcheck_float64(function: str, learnable: bool) -> None:
    like = torch.zeros((), dtype=torch.float64)
    compander = Compander(0.6, 0.7, like, function=function, learnable=learnable)  # type: ignore[arg-type]
    v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(compander, (v,))
    if learnable:  # the gradient w.r.t. the per-layer a, b as well

        def of_scales(a: Tensor, b: Tensor) -> Tensor:
            return cast(Tensor, functional_call(compander, {"a": a, "b": b}, (v,)))

        scales = (
            compander.a.detach().clone().requires_grad_(),
            compander.b.detach().clone().requires_grad_(),
        )
        assert torch.autograd.gradcheck(of_scales, scales)


def _grads_after_backward(method: WC, model: nn.Module, old_formulation: bool) -> dict[str, Tensor]:
    """Gradients of one step's task loss plus WC's decay: added by ``after_backward`` (the method), or
    (``old_formulation``) by autograd of ``(λ/2)·Σ‖Ψ(v)‖²`` added to the loss, as WC did before."""
    x, y = seeded_batch()
    model.train()
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    if old_formulation:
        lam = method.config.weight_decay
        weights = [cast(Tensor, m.weight) for _, m, _ in compander_layers(model)]
        loss = loss + 0.5 * lam * sum(w.square().sum() for w in weights)
    loss.backward()
    if not old_formulation:
        ctx = make_context()
        ctx.model = model
        method.after_backward(ctx)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fixed_variant_decays_psi_not_v() -> None:
    lam, a, b = 1e-3, 0.6, 0.7
    method = WC(weight_decay=lam)
    model = method.apply(_model(), make_context())
    groups = build_param_groups(model, method, weight_decay=5e-4)
    raw = {id(_raw(m)) for _, m, _ in compander_layers(model)}
    (wc_group,) = groups[1:]
    assert wc_group["weight_decay"] == 0.0
    assert {id(p) for p in wc_group["params"]} == raw
    assert not raw & {id(p) for p in groups[0]["params"]}  # biases and BN stay in the default group
    assert method.extra_loss(model, make_context()) == 0.0  # the decay goes to v.grad in after_backward
    # after_backward adds λ·Ψ(v)·Ψ′(v) = a/b · 1/(1+(v/b)²) · λw to v.grad: the gradient autograd gives
    # when (λ/2)·Σ‖Ψ(v)‖² is part of the loss
    ours = _grads_after_backward(method, model, old_formulation=False)
    reference = _grads_after_backward(method, model, old_formulation=True)
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-9)
    # and the closed form, against the task-loss gradient alone
    task = _grads_after_backward(WC(weight_decay=0.0), model, old_formulation=False)
    for name, module, _ in compander_layers(model):
        key = f"{name}.parametrizations.weight.original" if name else "parametrizations.weight.original"
        v = _raw(module).detach()
        w = a * torch.atan(v / b)
        expected = a / b / (1 + (v / b) ** 2) * lam * w
        # float32: the difference of two gradients loses ~1e-8 to cancellation
        torch.testing.assert_close(ours[key] - task[key], expected, rtol=1e-4, atol=5e-8)
    decay = method.decay_loss(model)
    assert isinstance(decay, Tensor)
    vs = [_raw(m) for _, m, _ in compander_layers(model)]
    for v, grad in zip(vs, torch.autograd.grad(decay, vs), strict=True):
        v = v.detach()
        torch.testing.assert_close(grad, a / b / (1 + (v / b) ** 2) * lam * a * torch.atan(v / b))


@pytest.mark.parametrize(
    "overrides",
    [{"function": "erf"}, {"function": "arsinh"}, {"learnable": True, "weight_decay_on": "psi"}],
)
def test_decay_gradient_equals_the_old_formulation(overrides: dict[str, Any]) -> None:
    method = WC(weight_decay=1e-2, **overrides)
    model = method.apply(_model(), make_context())
    ours = _grads_after_backward(method, model, old_formulation=False)
    reference = _grads_after_backward(method, model, old_formulation=True)
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-9)


def test_decay_gradient_on_a_masked_weight_equals_the_old_formulation() -> None:
    model = _model()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    apply_mask(conv, torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    method = WC(weight_decay=1e-2)
    model = method.apply(model, make_context())
    ours = _grads_after_backward(method, model, old_formulation=False)
    reference = _grads_after_backward(method, model, old_formulation=True)
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-9)


def test_learnable_variant_decays_v_and_trains_a_b_without_decay() -> None:
    lam = 2e-4
    method = WC(learnable=True, weight_decay=lam)
    assert (method.a, method.b) == (0.5, 1.0)
    model = method.apply(_model(), make_context())
    assert method.extra_loss(model, make_context()) == 0.0
    groups = build_param_groups(model, method, weight_decay=5e-4)
    v_group, ab_group = groups[1:]
    companders = [c for _, _, c in compander_layers(model)]
    assert v_group["weight_decay"] == lam
    assert {id(p) for p in v_group["params"]} == {id(_raw(m)) for _, m, _ in compander_layers(model)}
    assert ab_group["weight_decay"] == 0.0
    assert {id(p) for p in ab_group["params"]} == {id(p) for c in companders for p in (c.a, c.b)}
    x, y = seeded_batch()
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    for c in companders:
        assert (float(c.a.detach()), float(c.b.detach())) == (0.5, 1.0)
        assert c.a.grad is not None and c.a.grad.abs() > 0
        assert c.b.grad is not None and c.b.grad.abs() > 0


def test_softplus_positivity_keeps_effective_initial_values() -> None:
    compander = Compander(0.5, 1.0, torch.zeros(()), learnable=True, positivity="softplus")
    a, b = compander.scales()
    torch.testing.assert_close((a, b), (torch.tensor(0.5), torch.tensor(1.0)))


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
@pytest.mark.parametrize("learnable", [False, True])
def test_export_folds_to_plain_layers_with_equal_outputs(model_name: str, learnable: bool) -> None:
    plain = _model(model_name)
    method = WC(learnable=learnable)
    model = method.apply(_model(model_name), make_context())
    _train(model, method, steps=3)
    x = seeded_batch(seed=5)[0]
    with torch.no_grad():
        before = model(x)
        exported = method.export(model)
        after = exported(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    for name, module in exported.named_modules():
        assert not parametrize.is_parametrized(module), name
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert type(module) in (nn.Conv2d, nn.Linear)
    assert count_params(exported).total == count_params(plain).total
    assert set(exported.state_dict()) == set(plain.state_dict())


def test_exporting_a_deep_copy_leaves_the_original_working() -> None:
    method = WC()
    model = method.apply(_model(), make_context())
    x = seeded_batch(seed=5)[0]
    with torch.no_grad():
        before = model(x)
        exported = method.export(copy.deepcopy(model))
        torch.testing.assert_close(exported(x), before, rtol=0, atol=1e-6)
        after = model(x)  # torch's remove_parametrizations broke the original: "no attribute 'weight'"
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert all(parametrize.is_parametrized(m, "weight") for _, m, _ in compander_layers(model))


def test_weights_stay_bounded_under_a_large_learning_rate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    method = WC(a=0.5, b=0.5, weight_decay=0.0)
    model = method.apply(model, make_context())
    optimizer = torch.optim.SGD(build_param_groups(model, method), lr=50.0)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for _, module, _ in compander_layers(model):
        assert bool((module.weight.abs() < 0.5 * math.pi / 2).all())


def test_init_overflow_is_clamped_with_a_warning_or_an_error() -> None:
    def layer() -> nn.Linear:
        lin = nn.Linear(2, 2)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[0.1, 2.0], [-3.0, 0.2]]))
        return lin

    method = WC(a=0.5)
    with pytest.warns(UserWarning, match="2 initial weights"):
        model = method.apply(layer(), make_context())
    assert method.stats(model)["wc_init_clamped"] == 2.0
    assert torch.isfinite(model.parametrizations["weight"].original).all()
    torch.testing.assert_close(model.weight[0, 0], torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"weight.*raise `a`"):
        WC(a=0.5, on_init_overflow="error").apply(layer(), make_context())


def test_powerprop_rescale_scales_the_update_by_the_slope() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    method = WC(weight_decay=0.0, adaptive_optimizer="powerprop_rescale")
    model = method.apply(model, make_context())
    optimizer = torch.optim.SGD(build_param_groups(model, method), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    v = _raw(model)
    v0 = v.detach().clone()
    w = model.weight
    loss = nn.functional.cross_entropy(nn.functional.linear(x, w, model.bias), y)
    (grad_w,) = torch.autograd.grad(loss, w, retain_graph=True)
    slope = 0.6 / 0.7 / (1 + (v0 / 0.7) ** 2)
    loss.backward()
    method.after_backward(make_context())
    optimizer.step()
    method.after_step(make_context())
    torch.testing.assert_close(v.detach(), v0 - 0.1 * grad_w * slope)


def test_nested_on_a_pruned_weight_keeps_the_function() -> None:
    model = _model()
    x = seeded_batch(seed=1)[0]
    apply_mask(model.conv1, torch.rand_like(model.conv1.weight) > 0.5)
    with torch.no_grad():
        before = model(x)
        model = WC().apply(model, make_context())
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("field", ["a", "b"])
@pytest.mark.parametrize("value", [0.0, -0.5])
def test_non_positive_a_or_b_is_an_error_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"- {field}: .*greater than 0"):
        WC(**{field: value})


def test_other_bad_configs() -> None:
    with pytest.raises(ConfigError, match="weight_decay"):
        WC(weight_decay=-1.0)
    with pytest.raises(ConfigError, match="function"):
        WC(function="tanh")
    with pytest.raises(ConfigError, match="unknown field"):
        WC(alpha=1.0)


def test_not_applicable_without_conv_or_linear() -> None:
    with pytest.raises(MethodNotApplicableError):
        WC().apply(nn.Sequential(nn.ReLU()), make_context())


def test_applying_twice_is_an_error() -> None:
    model = WC().apply(_model(), make_context())
    with pytest.raises(ValueError, match="already reparametrized"):
        WC().apply(model, make_context())


@pytest.mark.parametrize("overrides", [{}, {"learnable": True}])
def test_contract(overrides: dict[str, Any]) -> None:
    check_method_contract(lambda: WC(**{**WC.contract_config, **overrides}))
