"""Tests of cnnkit.core.masks: exactness under optimizers, both modes, state dicts, baking, errors."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from cnnkit.core.masks import (
    WeightMask,
    apply_mask,
    bake_masks,
    enforce_masks,
    get_mask,
    get_weight_mask,
    is_masked,
    keep_masks,
    mask_gradients,
    mask_optimizer_state,
    maskable_modules,
    masked_modules,
    restore_masks,
    set_mask,
)

MODES = ("prune", "freeze")


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def random_masks(model: nn.Module, density: float = 0.5, seed: int = 123) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: (torch.rand(m.weight.shape, generator=g) < density).float()
        for name, m in maskable_modules(model)
    }


def mask_model(model: nn.Module, masks: dict[str, torch.Tensor], mode: str) -> None:
    for name, mask in masks.items():
        apply_mask(model.get_submodule(name), mask, mode=mode)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {"sgd": sgd, "adamw": adamw}


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, *, enforce: bool) -> None:
    model.train()
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if enforce:
            enforce_masks(model)


def original(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


# ------------------------------------------------------------------------------------- exactness in training


@pytest.mark.parametrize("enforce", [False, True], ids=["hooks-only", "enforce"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", MODES)
def test_masked_entries_do_not_move(mode: str, opt_name: str, enforce: bool) -> None:
    model = small_cnn()
    masks = random_masks(model)
    mask_model(model, masks, mode)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    theta0 = {n: (torch.zeros_like(before[n]) if mode == "prune" else before[n]) for n in masks}
    opt = OPTIMIZERS[opt_name](list(model.parameters()))

    train(model, opt, steps=6, enforce=enforce)

    for n, mask in masks.items():
        module = model.get_submodule(n)
        after = module.weight.detach()
        off, on = mask == 0, mask == 1
        assert torch.equal(after[off], before[n][off]), n
        assert torch.equal(after[off], theta0[n][off]), n
        assert not torch.equal(after[on], before[n][on]), f"{n}: kept entries never changed"
        if enforce:
            assert torch.equal(original(module).detach()[off], theta0[n][off]), n
        if enforce and mode == "prune" and opt_name == "sgd":
            buf = opt.state[original(module)]["momentum_buffer"]
            assert torch.equal(buf[off], torch.zeros_like(buf[off])), n
            assert buf[on].abs().sum() > 0


def test_freeze_mode_keeps_nonzero_frozen_values() -> None:
    model = small_cnn()
    masks = random_masks(model, density=0.3)
    mask_model(model, masks, "freeze")
    conv = model[0]
    theta0 = conv.parametrizations.weight[0].frozen.clone()
    assert bool((theta0 != 0).all())
    train(model, sgd(list(model.parameters())), steps=5, enforce=True)
    off = masks["0"] == 0
    assert torch.equal(conv.weight.detach()[off], theta0[off])
    assert int(conv.weight.count_nonzero()) == conv.weight.numel()
    assert torch.equal(original(conv).detach()[off], theta0[off])


def test_prune_zeroes_masked_entries_at_once_and_keeps_parameter_identity() -> None:
    conv = small_cnn()[0]
    param = conv.weight
    mask = random_masks(nn.Sequential(conv))["0"]
    apply_mask(conv, mask)
    assert original(conv) is param
    assert torch.equal(param.detach()[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.equal(conv.weight.detach()[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_explicit_frozen_values_and_seed() -> None:
    conv = nn.Conv2d(2, 3, 3)
    mask = torch.zeros_like(conv.weight)
    mask[0] = 1
    theta0 = torch.full_like(conv.weight, 0.5)
    wm = apply_mask(conv, mask.bool(), mode="freeze", frozen=theta0, seed=7)
    assert wm.seed_value == 7 and wm.mode == "freeze"
    assert torch.equal(conv.weight.detach()[1:], theta0[1:])
    assert torch.equal(original(conv).detach()[1:], theta0[1:])
    assert "seed=7" in repr(wm) and "freeze" in repr(wm)
    assert get_mask(conv).dtype == conv.weight.dtype


def test_gradient_hook_masks_gradients_of_the_raw_tensor() -> None:
    conv = nn.Conv2d(2, 3, 3)
    mask = (torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    apply_mask(conv, mask)
    # a loss on the raw tensor bypasses the parametrization; only the hook masks this gradient
    (original(conv) ** 2 + original(conv)).sum().backward()
    grad = original(conv).grad
    assert grad is not None
    assert torch.equal(grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert bool((grad[mask == 1] != 0).all())


def test_mask_gradients_and_optimizer_state() -> None:
    model = small_cnn()
    masks = random_masks(model)
    mask_model(model, masks, "freeze")
    opt = sgd(list(model.parameters()))
    train(model, opt, steps=2, enforce=False)
    conv = model[0]
    off = masks["0"] == 0
    buf = opt.state[original(conv)]["momentum_buffer"]
    assert buf[off].abs().sum() > 0  # coupled weight decay of θ₀ reached the momentum in freeze mode
    mask_optimizer_state(opt, model)
    assert torch.equal(buf[off], torch.zeros_like(buf[off]))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    mask_gradients(model)
    grad = original(conv).grad
    assert grad is not None
    assert torch.equal(grad[off], torch.zeros_like(grad[off]))
    assert torch.equal(grad[~off], torch.ones_like(grad[~off]))


# ------------------------------------------------------------------------------------- lookup and topology


def test_lookup_helpers() -> None:
    model = small_cnn()
    assert not is_masked(model[0]) and get_mask(model[0]) is None and get_weight_mask(model[0]) is None
    masks = random_masks(model)
    mask_model(model, masks, "prune")
    assert [(n, t) for n, _, t in masked_modules(model)] == [("0", "weight"), ("5", "weight")]
    assert is_masked(model[5]) and not is_masked(model[5], "bias") and not is_masked(model[1])
    assert torch.equal(get_mask(model[5]), masks["5"])
    assert isinstance(get_weight_mask(model[0]), WeightMask)


@pytest.mark.parametrize("mode", MODES)
def test_set_mask_changes_topology_and_reimposes(mode: str) -> None:
    conv = small_cnn()[0]
    theta = conv.weight.detach().clone()
    first = torch.zeros_like(theta)
    first[:4] = 1
    apply_mask(conv, first, mode=mode)
    second = torch.zeros_like(theta)
    second[2:6] = 1
    set_mask(conv, second.bool())
    wm = get_weight_mask(conv)
    assert wm is not None and wm.mode == mode
    assert torch.equal(get_mask(conv), second)
    fixed = torch.zeros_like(theta) if mode == "prune" else theta
    w = conv.weight.detach()
    assert torch.equal(w[:2], fixed[:2])  # newly masked
    assert torch.equal(w[6:], fixed[6:])
    assert torch.equal(w[2:4], theta[2:4])  # kept throughout
    expected_new = torch.zeros_like(theta[4:6]) if mode == "prune" else theta[4:6]
    assert torch.equal(w[4:6], expected_new)  # newly kept: raw value (0 after pruning)


def test_set_mask_replaces_frozen_values() -> None:
    conv = nn.Linear(4, 3)
    apply_mask(conv, torch.zeros(3, 4), mode="freeze")
    set_mask(conv, torch.zeros(3, 4), frozen=torch.full((3, 4), 2.0), seed=3)
    assert torch.equal(conv.weight.detach(), torch.full((3, 4), 2.0))
    assert get_weight_mask(conv).seed_value == 3  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match=r"mode must be one of 'prune', 'freeze'; got 'drop'"):
        apply_mask(conv, torch.ones_like(conv.weight), mode="drop")
    with pytest.raises(ValueError, match=r"mask shape \(3, 2, 3\) must equal .* \(3, 2, 3, 3\)"):
        apply_mask(conv, torch.ones(3, 2, 3))
    with pytest.raises(ValueError, match="binary"):
        apply_mask(conv, torch.full_like(conv.weight, 0.5))
    with pytest.raises(ValueError, match="frozen"):
        apply_mask(conv, torch.ones_like(conv.weight), frozen=torch.zeros_like(conv.weight))
    with pytest.raises(ValueError, match="frozen shape"):
        apply_mask(conv, torch.ones_like(conv.weight), mode="freeze", frozen=torch.zeros(3))
    with pytest.raises(ValueError, match="no tensor named 'kernel'"):
        apply_mask(conv, torch.ones_like(conv.weight), name="kernel")
    assert not parametrize.is_parametrized(conv)
    apply_mask(conv, torch.ones_like(conv.weight))
    with pytest.raises(ValueError, match="already masked.*set_mask"):
        apply_mask(conv, torch.ones_like(conv.weight))
    with pytest.raises(ValueError, match="mask shape"):
        set_mask(conv, torch.ones(3))
    with pytest.raises(ValueError, match="not masked"):
        set_mask(nn.Linear(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="seed"):
        apply_mask(nn.Linear(2, 2), torch.ones(2, 2), seed=-3)


# ------------------------------------------------------------------------------------- persistence


def _trained_masked(mode: str) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    model = small_cnn(0)
    masks = random_masks(model)
    mask_model(model, masks, mode)
    train(model, sgd(list(model.parameters())), steps=2, enforce=True)
    return model.eval(), masks


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    x, _ = batch(99)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert [(n, t) for n, _, t in masked_modules(a)] == [(n, t) for n, _, t in masked_modules(b)]
    for n, m, t in masked_modules(a):
        assert torch.equal(get_mask(m, t), get_mask(b.get_submodule(n), t))
        wa, wb = get_weight_mask(m, t), get_weight_mask(b.get_submodule(n), t)
        assert wa is not None and wb is not None and wa.mode == wb.mode


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_with_masks_applied(mode: str) -> None:
    model, masks = _trained_masked(mode)
    fresh = small_cnn(1)
    mask_model(fresh, masks, mode)
    x, _ = batch(99)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(x), model(x))
    fresh.load_state_dict(model.state_dict())
    _assert_same(model, fresh)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_with_restore_masks(mode: str) -> None:
    model, _ = _trained_masked(mode)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = small_cnn(2).eval()
    assert restore_masks(fresh, state) == ["0.weight", "5.weight"]
    fresh.load_state_dict(state)
    _assert_same(model, fresh)
    assert restore_masks(fresh, state) == []  # already masked: left alone


def test_restore_masks_errors() -> None:
    model, _ = _trained_masked("freeze")
    state = model.state_dict()
    pruned = small_cnn(1)
    apply_mask(pruned[0], torch.ones_like(pruned[0].weight))
    with pytest.raises(ValueError, match="mode='prune'"):
        restore_masks(pruned, state)
    with pytest.raises(ValueError, match="lacks"):
        restore_masks(nn.Sequential(nn.Conv2d(3, 8, 3)), state)


def test_seed_survives_state_dict() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    apply_mask(a, torch.ones(2, 3), mode="freeze", seed=11)
    assert restore_masks(b, a.state_dict()) == ["weight"]
    b.load_state_dict(a.state_dict())
    assert get_weight_mask(b).seed_value == 11  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy(mode: str) -> None:
    model, masks = _trained_masked(mode)
    clone = copy.deepcopy(model)
    _assert_same(model, clone)
    assert original(clone[0]) is not original(model[0])
    set_mask(clone[0], torch.ones_like(masks["0"]))
    assert torch.equal(get_mask(model[0]), masks["0"])  # independent buffers
    # the copy's gradient hook comes back (deepcopy drops tensor hooks)
    clone2 = copy.deepcopy(model)
    clone2(batch(0)[0])
    (original(clone2[0]) ** 2).sum().backward()
    grad = original(clone2[0]).grad
    assert grad is not None
    assert torch.equal(grad[masks["0"] == 0], torch.zeros(int((masks["0"] == 0).sum())))
    before = clone2[0].weight.detach().clone()
    train(clone2, sgd(list(clone2.parameters())), steps=3, enforce=True)
    off = masks["0"] == 0
    assert torch.equal(clone2[0].weight.detach()[off], before[off])


# ------------------------------------------------------------------------------------- baking


@pytest.mark.parametrize("mode", MODES)
def test_bake_masks(mode: str) -> None:
    model, masks = _trained_masked(mode)
    x, _ = batch(99)
    with torch.no_grad():
        expected = model(x)
    param = original(model[0])
    assert bake_masks(model) is model
    assert type(model[0]) is nn.Conv2d and type(model[5]) is nn.Linear
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert list(masked_modules(model)) == []
    assert model[0].weight is param  # same Parameter object: optimizers stay valid
    assert set(model.state_dict()) == set(small_cnn().state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    for n, mask in masks.items():
        w = model.get_submodule(n).weight.detach()
        if mode == "prune":
            assert torch.equal(w == 0, mask == 0)
        else:
            assert int(w.count_nonzero()) == w.numel()
    # the gradient hook is gone with the mask
    (model[0].weight ** 2).sum().backward()
    grad = model[0].weight.grad
    assert grad is not None and bool((grad[masks["0"] == 0] != 0).any()) == (mode == "freeze")


@pytest.mark.parametrize("mode", MODES)
def test_baking_a_deep_copy_leaves_the_original_working(mode: str) -> None:
    model, _ = _trained_masked(mode)
    x, _ = batch(98)
    with torch.no_grad():
        expected = model(x)
    baked = bake_masks(copy.deepcopy(model))
    assert type(baked[0]) is nn.Conv2d
    assert parametrize.is_parametrized(model[0])
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # torch alone: "no attribute 'weight'" here
        assert torch.equal(baked(x), expected)


def test_bake_then_raw_gradients_unmasked() -> None:
    lin = nn.Linear(4, 3)
    apply_mask(lin, torch.zeros(3, 4), mode="freeze")
    bake_masks(lin)
    (lin.weight.sum()).backward()
    assert lin.weight.grad is not None
    assert torch.equal(lin.weight.grad, torch.ones(3, 4))


# ------------------------------------------------------------------------------------- selection


def test_maskable_modules() -> None:
    model = nn.Sequential(
        nn.Conv1d(1, 2, 3),
        nn.BatchNorm1d(2),
        nn.Sequential(nn.Conv2d(2, 2, 1), nn.ConvTranspose2d(2, 2, 1)),
        nn.Linear(2, 2),
        nn.Linear(2, 2),
    )
    names = [n for n, _ in maskable_modules(model)]
    assert names == ["0", "2.0", "2.1", "3", "4"]
    assert [n for n, _ in maskable_modules(model, include=("linear",))] == ["3", "4"]
    assert [n for n, _ in maskable_modules(model, include="conv")] == ["0", "2.0", "2.1"]
    assert [n for n, _ in maskable_modules(model, exclude=("first", "last"))] == ["2.0", "2.1", "3"]
    assert [n for n, _ in maskable_modules(model, exclude=["2.1"])] == ["0", "2.0", "3", "4"]
    with pytest.raises(ValueError, match=r"include must be a subset of 'conv', 'linear'"):
        maskable_modules(model, include=("conv", "bn"))
    with pytest.raises(ValueError, match="maskable modules"):
        maskable_modules(model, exclude=["1"])
    no_bias_free = nn.Linear(2, 2)
    apply_mask(no_bias_free, torch.ones(2, 2))
    assert [n for n, _ in maskable_modules(nn.Sequential(no_bias_free))] == ["0"]


@pytest.mark.parametrize("mode", MODES)
def test_assigning_the_weight_keeps_masked_entries(mode: str) -> None:
    lin = nn.Linear(4, 3)
    theta0 = lin.weight.detach().clone()
    mask = torch.zeros(3, 4)
    mask[0] = 1
    apply_mask(lin, mask, mode=mode)
    lin.weight = torch.full((3, 4), 7.0)  # e.g. rewinding to earlier values
    fixed = torch.zeros(2, 4) if mode == "prune" else theta0[1:]
    assert torch.equal(original(lin).detach()[0], torch.full((4,), 7.0))
    assert torch.equal(original(lin).detach()[1:], fixed)
    assert torch.equal(lin.weight.detach()[1:], fixed)


def test_keep_masks_copies_every_mask_as_bool_by_module_name() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    first = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]])
    apply_mask(model[0], first)
    apply_mask(model[2], torch.ones(2, 3), mode="freeze")
    apply_mask(model[2], torch.tensor([1.0, 0.0]), name="bias")
    masks = keep_masks(model)
    assert list(masks) == ["0", "2", "2.bias"]
    assert masks["0"].dtype == torch.bool and torch.equal(masks["0"], first.bool())
    assert bool(masks["2"].all()) and masks["2.bias"].tolist() == [True, False]
    masks["0"].fill_(False)  # a copy: the live mask is unchanged
    assert torch.equal(keep_masks(model)["0"], first.bool())
