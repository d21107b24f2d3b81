"""Dynamic sparse training, SET and RigL (METHODS.md §13): layer densities against the official ERK code
re-implemented here, the drop/grow rule against hand-written references (dense gradients from a baked copy),
constant density over 500 steps, zero-initialised growth with reset optimizer state, schedules, bad input
and interspace support."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import get_weight_mask, keep_masks, masked_modules
from cnnkit.core.testing import TinyVGG, check_method_contract, method_factory
from cnnkit.pruning.dst import (
    SET,
    DynamicSparseTraining,
    RigL,
    cosine_drop_fraction,
    grow_and_drop,
    layer_keep_counts,
)
from cnnkit.pruning.interspace import InterspaceConv2d, to_interspace

SHAPE = (2, 4, 4)
CLASSES = 3


class SmallNet(nn.Module):
    """conv(2→6, 3×3) → ReLU → conv(6→8, 3×3) → ReLU → linear(128→16) → ReLU → linear(16→3); no BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        out: Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return out


def _net(seed: int = 0, dtype: torch.dtype = torch.float32) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet().to(dtype)


def _batch(step: int, dtype: torch.dtype = torch.float32, size: int = 8) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return (
        torch.randn((size, *SHAPE), generator=gen).to(dtype),
        torch.randint(0, CLASSES, (size,), generator=gen),
    )


def _setup(
    method: DynamicSparseTraining,
    *,
    total_steps: int,
    total_epochs: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    adam: bool = False,
) -> tuple[nn.Module, MethodRunner, torch.optim.Optimizer]:
    ctx = Context(
        example_input=_batch(0, dtype)[0], seed=seed, total_steps=total_steps, total_epochs=total_epochs
    )
    runner = MethodRunner(method, ctx)
    model = runner.apply(_net(seed, dtype))
    groups = runner.param_groups(model, weight_decay=5e-4)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(groups, lr=1e-2) if adam else torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    )
    runner.set_optimizer(opt)
    return model, runner, opt


def _counts(model: nn.Module) -> dict[str, int]:
    return {n: int(k.sum()) for n, k in keep_masks(model).items()}


def _original(model: nn.Module, name: str) -> Tensor:
    module = model.get_submodule(name)
    original: Tensor = module.parametrizations.weight.original  # type: ignore[union-attr]
    return original


# --------------------------------------------------------------------------------------------- densities


def _official_erk(shapes: dict[str, tuple[int, ...]], sparsity: float) -> dict[str, int]:
    """``sparse_utils.get_sparsities_erdos_renyi`` of google-research/rigl (include_kernel, power 1), with
    the official per-layer rounding ``n_ones = n − ⌊sparsity_l·n⌋``."""
    dense: set[str] = set()
    while True:
        divisor = rhs = 0.0
        raw = {}
        for name, shape in shapes.items():
            n_param = math.prod(shape)
            n_zeros = math.floor(n_param * sparsity)
            if name in dense:
                rhs -= n_zeros
            else:
                rhs += n_param - n_zeros
                raw[name] = sum(shape) / math.prod(shape)
                divisor += raw[name] * n_param
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps > 1:
            dense |= {n for n, r in raw.items() if r == max_prob}
        else:
            break
    out = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        layer_sparsity = 0.0 if name in dense else 1.0 - eps * raw[name]
        out[name] = n - math.floor(layer_sparsity * n)
    return out


SHAPES = {
    "conv1": (16, 3, 3, 3),
    "conv2": (32, 16, 3, 3),
    "conv3": (64, 32, 3, 3),
    "short": (64, 32, 1, 1),
    "fc": (10, 64),
}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_erk_matches_the_official_code_and_hits_the_global_target_exactly(sparsity: float) -> None:
    counts = layer_keep_counts(SHAPES, sparsity, "erk")
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(counts.values()) == math.ceil(round((1 - sparsity) * total, 9))
    reference = _official_erk(SHAPES, sparsity)
    for name in SHAPES:
        # the official code floors each layer's zero count: at most a few weights apart
        assert abs(counts[name] - reference[name]) <= len(SHAPES) + 1, (name, counts, reference)
        assert (counts[name] == math.prod(SHAPES[name])) == (reference[name] == math.prod(SHAPES[name]))


def test_erk_hand_computed_case_makes_the_small_layer_dense() -> None:
    # raw densities: a (4, 2): 6/8 = 0.75, b (8, 8): 16/64 = 0.25; N = 72, K = 36.
    # eps = 36/(0.75·8 + 0.25·64) = 1.636..., 0.75·eps > 1 → a dense (8); then eps = 28/16, b keeps 28.
    assert layer_keep_counts({"a": (4, 2), "b": (8, 8)}, 0.5, "erk") == {"a": 8, "b": 28}
    # ER ignores the kernel dims: (2, 2, 3, 3) and (2, 2) have the same raw density 1
    er = layer_keep_counts({"a": (2, 2, 3, 3), "b": (2, 2)}, 0.5, "er")
    assert er == {"a": 18, "b": 2}


def test_uniform_keeps_the_ceiling_per_layer_and_the_first_layer_dense() -> None:
    counts = layer_keep_counts(SHAPES, 0.9, "uniform")
    assert counts["conv1"] == 16 * 27
    for name in list(SHAPES)[1:]:
        assert counts[name] == math.ceil(round(0.1 * math.prod(SHAPES[name]), 9))
    assert layer_keep_counts(SHAPES, 0.9, "uniform", dense_first_layer=False)["conv1"] == 44


def test_erk_at_a_tiny_sparsity_makes_layers_dense_one_by_one() -> None:
    total = sum(math.prod(s) for s in SHAPES.values())
    counts = layer_keep_counts(SHAPES, 1e-4, "erk")  # K = N - 1... ⌈(1 - 1e-4)·N⌉
    assert sum(counts.values()) == math.ceil(round((1 - 1e-4) * total, 9))
    assert all(counts[n] <= math.prod(s) for n, s in SHAPES.items())
    assert sum(counts[n] == math.prod(s) for n, s in SHAPES.items()) >= len(SHAPES) - 1


# --------------------------------------------------------------------------------------------- update rule


def test_grow_and_drop_hand_example() -> None:
    keep = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    mag = torch.tensor([0.5, 0.1, 0.3, 0.0, 0.0, 0.0, 0.2, 0.0])
    grow = torch.tensor([9.0, 9.0, 0.0, 5.0, 1.0, 3.0, 0.0, 2.0])
    new, dropped, grown = grow_and_drop(keep, mag, grow, 0.5)  # d = ⌊0.5·4⌋ = 2
    assert new.tolist() == [True, False, True, True, False, True, False, False]
    assert torch.nonzero(dropped).flatten().tolist() == [1, 6]
    assert torch.nonzero(grown).flatten().tolist() == [3, 5]
    # official variant: a just-dropped weight (index 1, score 9) may be regrown -- it is then not "grown"
    new, dropped, grown = grow_and_drop(keep, mag, grow, 0.5, regrow_dropped=True)
    assert new.tolist() == [True, True, True, True, False, False, False, False]
    assert torch.nonzero(dropped).flatten().tolist() == [6]
    assert torch.nonzero(grown).flatten().tolist() == [3]


def test_grow_and_drop_caps_the_update_at_the_inactive_count() -> None:
    keep = torch.ones(10, dtype=torch.bool)
    keep[7] = False
    new, dropped, grown = grow_and_drop(keep, torch.arange(10.0), torch.zeros(10), 0.3)  # ⌊2.7⌋ = 2 → 1
    assert int(new.sum()) == 9 and int(dropped.sum()) == 1 and int(grown.sum()) == 1
    assert bool(dropped[0]) and bool(grown[7])


def test_cosine_drop_fraction_closed_form() -> None:
    assert cosine_drop_fraction(0.3, 0, 750) == pytest.approx(0.3)
    assert cosine_drop_fraction(0.3, 375, 750) == pytest.approx(0.15)
    assert cosine_drop_fraction(0.3, 750, 750) == pytest.approx(0.0)
    assert cosine_drop_fraction(0.3, 900, 750) == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "make",
    [
        lambda: RigL(sparsity=0.8, delta_t=5),
        lambda: SET(sparsity=0.8, schedule="rigl", delta_t=5, exclude=()),
        lambda: RigL(sparsity=0.7, delta_t=7, distribution="uniform", regrow_dropped=True),
    ],
    ids=["rigl", "set", "rigl-uniform-regrow"],
)
def test_per_layer_density_is_exactly_constant_over_500_steps(
    make: Callable[[], DynamicSparseTraining],
) -> None:
    method = make()
    model, runner, _ = _setup(method, total_steps=500)
    initial = _counts(model)
    assert sum(initial.values()) >= 1
    changes = 0
    previous = keep_masks(model)
    for step in range(500):
        runner.train_step(model, *_batch(step))
        assert _counts(model) == initial, f"density changed at step {step + 1}"
        keeps = keep_masks(model)
        changes += sum(int((keeps[n] != previous[n]).sum()) for n in keeps)
        previous = keeps
    assert method.stats(model)["updates"] == len(
        [s for s in range(1, 501) if s % method.config.delta_t == 0 and s < 375]
    )
    assert changes > 0, "the topology never changed"


def _manual_step(runner: MethodRunner, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor):
    """One step with the lifecycle events; returns what the update sees: masks and raw weights after the
    optimizer step (before ``after_step``)."""
    runner.before_step(x, y)
    opt.zero_grad(set_to_none=True)
    loss = runner.loss(model, model(x), y)
    loss.backward()
    runner.after_backward()
    opt.step()
    seen = {n: (keep_masks(model)[n], _original(model, n).detach().clone()) for n in keep_masks(model)}
    runner.after_step()
    return seen


def _dense_gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Independent reference: ``∂L/∂w`` of every masked layer's effective weight, from a plain (unmasked)
    twin holding the effective weights (a twin, not a baked deep copy: removing a parametrization from a
    deep copy also removes it from the original's shared parametrized class)."""
    twin = SmallNet().to(next(model.parameters()).dtype)
    if isinstance(model.get_submodule("conv1"), InterspaceConv2d):
        to_interspace(twin)
    with torch.no_grad():
        for name, module in twin.named_children():
            source = model.get_submodule(name)
            module.weight.copy_(source.weight)
            module.bias.copy_(source.bias)
            if isinstance(module, InterspaceConv2d):
                module.basis.copy_(source.basis)
    nn.functional.cross_entropy(twin(x), y).backward()
    return {n: m.weight.grad.detach().clone() for n, m in twin.named_children()}  # type: ignore[union-attr]


@pytest.mark.parametrize("interspace", [False, True], ids=["sp", "interspace"])
def test_rigl_drops_smallest_magnitudes_and_grows_largest_dense_gradients(interspace: bool) -> None:
    dt, total = 3, 40
    method = RigL(sparsity=0.75, delta_t=dt, interspace=interspace)
    model, runner, opt = _setup(method, total_steps=total, dtype=torch.float64)
    if interspace:
        assert isinstance(model.get_submodule("conv1"), InterspaceConv2d)
    t_end = 0.75 * total
    checked = 0
    for step in range(1, 13):
        x, y = _batch(step, torch.float64)
        before = keep_masks(model)
        reference = _dense_gradients(model, x, y) if step % dt == 0 else None
        seen = _manual_step(runner, model, opt, x, y)
        after = keep_masks(model)
        if reference is None:
            assert all(torch.equal(after[n], before[n]) for n in after), f"mask changed at step {step}"
            continue
        fraction = 0.15 * (1 + math.cos(math.pi * step / t_end))
        for name, (keep, theta) in seen.items():
            n_active, n = int(keep.sum()), keep.numel()
            d = min(math.floor(fraction * n_active), n - n_active)
            dropped = keep & ~after[name]
            grown = after[name] & ~keep
            assert int(dropped.sum()) == int(grown.sum()) == d, name
            # reference drop: the d smallest |θ| among the active (ties: lower index), after the opt step
            mag = torch.where(keep, theta.abs(), torch.full_like(theta, math.inf)).flatten()
            ref_drop = torch.zeros(n, dtype=torch.bool)
            ref_drop[torch.sort(mag, stable=True).indices[:d]] = True
            assert torch.equal(dropped.flatten(), ref_drop), name
            # reference growth: the d largest dense |∂L/∂w| among the previously inactive
            g = torch.where(keep, torch.full_like(theta, -math.inf), reference[name].abs()).flatten()
            ref_grow = torch.zeros(n, dtype=torch.bool)
            ref_grow[torch.sort(g, descending=True, stable=True).indices[:d]] = True
            assert torch.equal(grown.flatten(), ref_grow), name
            checked += d
    assert checked > 0


def test_dense_gradient_hooks_exist_only_on_update_steps() -> None:
    method = RigL(sparsity=0.8, delta_t=4)
    model, runner, opt = _setup(method, total_steps=40)

    def armed() -> bool:
        hooks = []
        for _, module, _ in masked_modules(model):
            wm = get_weight_mask(module)
            assert wm is not None
            hooks.append(len(wm._forward_hooks) > 0)
        return any(hooks)

    for step in range(1, 9):
        runner.before_step()
        assert armed() == (step % 4 == 0), step
        x, y = _batch(step)
        opt.zero_grad()
        runner.loss(model, model(x), y).backward()
        opt.step()
        runner.after_step()
        assert not armed()


@pytest.mark.parametrize("adam", [False, True], ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("cls", [RigL, SET], ids=["rigl", "set"])
def test_grown_weights_start_at_zero_with_reset_optimizer_state(cls: type, adam: bool) -> None:
    method = cls(sparsity=0.8, delta_t=2, **({"schedule": "rigl", "exclude": ()} if cls is SET else {}))
    model, runner, opt = _setup(method, total_steps=20, adam=adam)
    grown_total = 0
    for step in range(1, 7):
        x, y = _batch(step)
        before = keep_masks(model)
        _manual_step(runner, model, opt, x, y)
        if step % 2:
            continue
        for name, keep in keep_masks(model).items():
            changed = keep != before[name]
            grown = keep & ~before[name]
            original = _original(model, name)
            assert torch.all(original[grown] == 0), name
            assert torch.all(model.get_submodule(name).weight[grown] == 0), name
            state = opt.state[original]
            buffers = [v for v in state.values() if isinstance(v, Tensor) and v.shape == original.shape]
            assert buffers, "the optimizer keeps no per-entry state"
            for buf in buffers:
                assert torch.all(buf[changed] == 0), name
            grown_total += int(grown.sum())
        # the next step trains the grown weights again
    assert grown_total > 0


def test_reset_momentum_false_keeps_the_state() -> None:
    method = RigL(sparsity=0.8, delta_t=2, reset_momentum=False, regrow_dropped=True)
    model, runner, opt = _setup(method, total_steps=20)
    for step in range(1, 3):
        before = keep_masks(model)
        _manual_step(runner, model, opt, *_batch(step))
    dropped_with_state = 0
    for name, keep in keep_masks(model).items():
        dropped = before[name] & ~keep
        buf = opt.state[_original(model, name)]["momentum_buffer"]
        dropped_with_state += int((buf[dropped] != 0).sum())
    assert dropped_with_state > 0  # with reset_momentum=True these are zeroed (test above)


def test_set_updates_after_every_epoch_but_the_last_and_is_seeded() -> None:
    def run(seed: int) -> tuple[list[dict[str, Tensor]], SET]:
        method = SET(sparsity=0.8)
        model, runner, _ = _setup(method, total_steps=12, total_epochs=3, seed=seed)
        history = [keep_masks(model)]
        for epoch in range(3):
            for step in range(4):
                runner.train_step(model, *_batch(epoch * 4 + step))
                assert all(
                    torch.equal(a, b)
                    for a, b in zip(keep_masks(model).values(), history[-1].values(), strict=True)
                )
            runner.end_epoch()
            history.append(keep_masks(model))
        assert "fc2" not in history[0]  # SET keeps the output layer dense
        return history, method

    history, method = run(0)
    changed = [any(not torch.equal(a[n], b[n]) for n in a) for a, b in itertools.pairwise(history)]
    assert changed == [True, True, False]
    assert method.state_dict()["updates"] == 2
    for a, b in itertools.pairwise(history[:3]):  # the two updates: exactly ⌊ζ·n_active⌋ replaced per layer
        for n in a:
            active = int(a[n].sum())
            assert int(b[n].sum()) == active
            assert int((a[n] & ~b[n]).sum()) == min(math.floor(0.3 * active), a[n].numel() - active)
    again, _ = run(0)
    other, _ = run(1)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(history, again, strict=True) for n in a)
    assert any(not torch.equal(a[n], b[n]) for a, b in zip(history[1:], other[1:], strict=True) for n in a)


def test_set_generator_state_survives_a_checkpoint(tmp_path) -> None:
    method = SET(sparsity=0.8, schedule="rigl", delta_t=2, exclude=())
    model, runner, _ = _setup(method, total_steps=20)
    for step in range(3):
        runner.train_step(model, *_batch(step))
    path = tmp_path / "state.pt"
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, path)
    blob = torch.load(path, weights_only=True)
    twin = SET(sparsity=0.8, schedule="rigl", delta_t=2, exclude=())
    model2, runner2, _ = _setup(twin, total_steps=20)
    model2.load_state_dict(blob["model"])
    twin.load_state_dict(blob["method"])
    runner2.ctx.step = runner.ctx.step
    expected = method.grow_scores("x", model, torch.zeros(5, 5, dtype=torch.bool))
    assert torch.equal(twin.grow_scores("x", model2, torch.zeros(5, 5, dtype=torch.bool)), expected)
    assert twin.stats(model2)["updates"] == method.stats(model)["updates"] == 1


def test_stats_report_density_and_the_survey_counts() -> None:
    method = RigL(sparsity=0.8, delta_t=2)
    model, runner, _ = _setup(method, total_steps=10)
    for step in range(4):
        runner.train_step(model, *_batch(step))
    stats = method.stats(model)
    maskable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    kept = sum(_counts(model).values())
    assert stats["maskable"] == maskable and stats["kept"] == kept
    assert stats["density"] == pytest.approx(math.ceil(round(0.2 * maskable, 9)) / maskable)
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert stats["trained_params"] == kept + biases
    assert stats["dense_params"] == maskable + biases
    assert stats["updates"] == 2 and stats["last_regrown"] > 0


def test_interspace_rigl_trains_exports_and_keeps_the_coefficient_budget() -> None:
    method = RigL(sparsity=0.8, delta_t=2, interspace=True)
    model, runner, _ = _setup(method, total_steps=20)
    counts = _counts(model)
    basis = model.get_submodule("conv2").basis.detach().clone()
    for step in range(6):
        runner.train_step(model, *_batch(step))
        assert _counts(model) == counts
    assert not torch.equal(model.get_submodule("conv2").basis, basis)  # the basis trains
    assert method.stats(model)["basis_params"] == 2 * 81
    x = _batch(99)[0]
    model.eval()
    with torch.no_grad():
        before = model(x)
        exported = method.export(copy.deepcopy(model))
        assert type(exported.get_submodule("conv2")) is nn.Conv2d
        torch.testing.assert_close(exported(x), before, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delta_t", 0),
        ("delta_t", -5),
        ("drop_fraction", 0.0),
        ("drop_fraction", 1.0),
        ("drop_fraction", 1.5),
        ("t_end", 0.0),
        ("t_end", 1.2),
        ("distribution", "random"),
        ("scope", "global"),
        ("sparsity", 1.0),
    ],
)
@pytest.mark.parametrize("cls", [RigL, SET])
def test_bad_config_is_a_clear_error_naming_the_field(cls: type, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        cls(**{field: value})


def test_a_context_without_total_steps_is_a_clear_error() -> None:
    ctx = Context(example_input=_batch(0)[0], seed=0)
    model = _net()
    with pytest.raises(ValueError, match=r"Context\.total_steps"):
        RigL().apply(model, ctx)
    assert not list(masked_modules(model)), "the model was changed before the error"
    SET(sparsity=0.5).apply(_net(), ctx)  # per-epoch SET with a constant fraction needs no total_steps


def test_rigl_without_a_backward_on_an_update_step_is_a_clear_error() -> None:
    method = RigL(sparsity=0.8, delta_t=1)
    _, runner, _ = _setup(method, total_steps=10)
    runner.before_step()
    with pytest.raises(RuntimeError, match="no dense gradient"):
        runner.after_step()


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_contract_holds_under_interspace(name: str) -> None:
    check_method_contract(method_factory(name, interspace=True), {"tiny_vgg": TinyVGG})
