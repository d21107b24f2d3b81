"""FreezeNet (cnnkit.pruning.freezenet): frozen entries never move, the compact checkpoint is exact and small,
the mask is SNIP's, FreezeNet-WD follows its closed form, and bad input gives clear errors."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from torch import Tensor, nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import get_weight_mask, masked_modules
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.testing import TinyResNet, TinyVGG, make_context, seeded_batch
from cnnkit.pruning.freezenet import (
    FreezeNet,
    compact_nbytes,
    compact_state,
    grad_scores,
    load_compact_state,
    pack_mask,
    regenerate,
    unpack_mask,
)
from cnnkit.pruning.scores import SNIP

STEPS = 20


def _optimizer(kind: str, params: Any) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3)
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)


def _train(
    method: FreezeNet, make_model: Callable[[], nn.Module], kind: str = "sgd", steps: int = STEPS
) -> tuple[nn.Module, Context]:
    ctx = make_context(seed=3)
    runner = MethodRunner(method, ctx)
    model = runner.apply(make_model())
    runner.set_optimizer(_optimizer(kind, runner.param_groups(model, weight_decay=5e-3)))
    for step in range(steps):
        runner.train_step(model, *seeded_batch(seed=100 + step))
    return model, ctx


def _initial(make_model: Callable[[], nn.Module], seed: int) -> dict[str, Tensor]:
    """θ₀ regenerated independently: a fresh model reset from the seed, its plain state."""
    fresh = regenerate(make_model(), seed)
    return {k: v.clone() for k, v in fresh.state_dict().items()}


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module, _ in masked_modules(model)]


def _mask(module: nn.Module) -> Tensor:
    return cast(Tensor, cast(Any, get_weight_mask(module)).keep())


def _raw(module: nn.Module) -> Tensor:
    return cast(Tensor, cast(Any, module).parametrizations.weight.original)


# --------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_frozen_entries_stay_bit_identical_to_the_seeded_init(kind: str) -> None:
    method = FreezeNet(sparsity=0.8)
    model, _ = _train(method, TinyResNet, kind)
    assert method.seed is not None
    theta0 = _initial(TinyResNet, method.seed)
    moved = 0
    for name, module in _targets(model):
        keep, init = _mask(module), theta0[f"{name}.weight"]
        weight = cast(Tensor, module.weight).detach()
        assert torch.equal(weight[~keep], init[~keep]), name  # effective weight: exactly θ₀
        assert torch.equal(_raw(module).detach()[~keep], init[~keep]), name  # raw tensor too
        moved += int((weight[keep] != init[keep]).sum())
    assert moved > 0  # the trained entries did train
    assert len(_targets(model)) == 10  # stem, 3 blocks × 2 convs, 2 shortcuts, fc


def test_frozen_entries_are_not_zero_and_the_mask_keeps_exactly_k() -> None:
    model, _ = _train(FreezeNet(sparsity=0.7), TinyVGG, steps=1)
    total = sum(_mask(m).numel() for _, m in _targets(model))
    kept = sum(int(_mask(m).sum()) for _, m in _targets(model))
    assert kept == math.ceil(0.3 * total - 1e-9)
    frozen = torch.cat([cast(Tensor, m.weight).detach()[~_mask(m)] for _, m in _targets(model)])
    assert bool((frozen != 0).all())


def test_mask_equals_snip_top_k_on_the_same_batch_and_init() -> None:
    method = FreezeNet(sparsity=0.85, batches=2)
    model, ctx = _train(method, TinyResNet, steps=0)
    assert method.seed is not None
    reference = regenerate(TinyResNet(), method.seed)
    snip = SNIP(sparsity=0.85, batches=2)
    masks = snip.select(snip.compute_scores(reference, ctx))
    for name, module in _targets(model):
        assert torch.equal(_mask(module), masks[name]), name


def test_grad_score_is_the_closed_form_on_a_linear_layer() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    with torch.no_grad():
        delta = (torch.softmax(layer(x), 1) - nn.functional.one_hot(y, 4).float()) / 5  # ∂L/∂logits
    expected = (delta.T @ x).abs()
    got = grad_scores(layer, [""], [(x, y)], nn.functional.cross_entropy)[""]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_grad_score_option_selects_the_largest_gradients() -> None:
    method = FreezeNet(sparsity=0.9, score="grad")
    model, ctx = _train(method, TinyVGG, steps=0)
    assert method.seed is not None
    reference = regenerate(TinyVGG(), method.seed)
    names = [n for n, _ in _targets(model)]
    scores = grad_scores(reference, names, ctx.scoring_batches(1), ctx.loss_fn)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    kept = torch.cat([_mask(m).reshape(-1) for _, m in _targets(model)])
    assert float(flat[kept].min()) >= float(flat[~kept].max())


# --------------------------------------------------------------------------------------------- seed


def test_seed_is_derived_from_the_run_seed_and_regenerates_theta0() -> None:
    a, b = FreezeNet(), FreezeNet()
    a.apply(TinyVGG(), make_context(seed=1))
    b.apply(TinyVGG(), make_context(seed=2))
    assert a.seed is not None and b.seed is not None and a.seed != b.seed
    assert 0 <= a.seed < 2**32
    explicit = FreezeNet(seed=123)
    model = explicit.apply(TinyVGG(), make_context(seed=1))
    assert explicit.seed == 123
    assert all(cast(Any, get_weight_mask(m)).seed_value == 123 for _, m in _targets(model))


def test_apply_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(7)
    model = TinyVGG()
    state = torch.get_rng_state()
    FreezeNet().apply(model, make_context())
    assert torch.equal(torch.get_rng_state(), state)


def test_regenerate_is_independent_of_the_model_values() -> None:
    torch.manual_seed(0)
    a = regenerate(TinyResNet(), 99)
    torch.manual_seed(1)
    b = regenerate(TinyResNet(), 99)
    c = regenerate(TinyResNet(), 100)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


# --------------------------------------------------------------------------------------------- compact state


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize(
    ("config", "make_model"),
    [
        ({"sparsity": 0.9}, TinyResNet),
        ({"sparsity": 0.6, "frozen_weight_decay": True, "exclude": ("last",)}, TinyVGG),
        ({"sparsity": 0.95, "train_bias_bn": False}, TinyVGG),
    ],
)
def test_compact_checkpoint_round_trip_is_bit_exact(
    config: dict[str, Any], make_model: Callable[[], nn.Module]
) -> None:
    method = FreezeNet(**config)
    model, _ = _train(method, make_model, steps=5)
    rebuilt = load_compact_state(make_model, _roundtrip(method.compact_state(model)))
    want, got = model.state_dict(), rebuilt.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k, p in rebuilt.named_parameters() if p.requires_grad}
    x = seeded_batch(seed=5)[0]
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))


class _Scaled(nn.Module):
    """Parameters of its own (no ``reset_parameters``): ``scale``, and ``offset``, which the user froze."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)
        self.scale = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.offset = nn.Parameter(torch.randn(1, 8, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc((self.conv(x) * self.scale + self.offset).mean((2, 3)))
        return out


@pytest.mark.parametrize("train_bias_bn", [False, True])
def test_compact_checkpoint_stores_frozen_parameters_the_seed_cannot_regenerate(train_bias_bn: bool) -> None:
    """``regenerate`` resets only modules with ``reset_parameters``: other frozen parameters are stored."""
    method = FreezeNet(sparsity=0.8, train_bias_bn=train_bias_bn)
    model, _ = _train(method, _Scaled, steps=3)
    state = _roundtrip(method.compact_state(model))
    assert {"scale", "offset"} & set(state["seeded"]) == set()
    rebuilt = load_compact_state(_Scaled, state)
    want, got = model.state_dict(), rebuilt.state_dict()
    assert all(torch.equal(want[key], got[key]) for key in want)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k, p in rebuilt.named_parameters() if p.requires_grad}
    assert ("scale" in trainable) == train_bias_bn and "offset" not in trainable
    x = seeded_batch(seed=5)[0]
    assert torch.equal(model(x), rebuilt(x))


def test_compact_checkpoint_size_shrinks_by_the_expected_factor() -> None:
    def mlp() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(768, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                             nn.Linear(100, 10))  # fmt: skip

    ctx = Context(example_input=torch.randn(4, 3, 16, 16), batches=[seeded_batch(16)], seed=0)
    method = FreezeNet(sparsity=0.99)
    model = method.apply(mlp(), ctx)
    state = method.compact_state(model)
    weights = [768 * 300, 300 * 100, 100 * 10]
    biases = 300 + 100 + 10
    kept = math.ceil(0.01 * sum(weights))
    assert sum(int(e["trained"].numel()) for e in state["masks"].values()) == kept
    expected_payload = 4 * (kept + biases) + sum((w + 7) // 8 for w in weights) + 4
    assert compact_nbytes(state) == expected_payload
    dense_bytes = 4 * (sum(weights) + biases)
    expected_factor = dense_bytes / expected_payload  # ≈ 24: the mask bits dominate at q = 0.99
    dense_file, compact_file = io.BytesIO(), io.BytesIO()
    torch.save(mlp().state_dict(), dense_file)
    torch.save(state, compact_file)
    measured = len(dense_file.getvalue()) / len(compact_file.getvalue())
    assert measured == pytest.approx(expected_factor, rel=0.1)
    stats = method.stats(model)
    assert stats["trained_params"] == kept + biases
    assert stats["stored_params"] == kept + biases + 1
    assert stats["compression_factor"] == pytest.approx((sum(weights) + biases) / (kept + biases + 1))
    assert stats["compression_factor_weights"] == pytest.approx(sum(weights) / kept)
    assert stats["frozen_fraction"] == pytest.approx(1 - kept / sum(weights))


def test_mask_bits_pack_and_unpack() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (3, 5, 2), (13, 3)]:
        mask = torch.rand(shape, generator=gen) > 0.5
        packed = pack_mask(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
        assert torch.equal(unpack_mask(packed, shape), mask)
    assert int(pack_mask(torch.tensor([True, False, True, True, False, False, False, True]))[0]) == 0b10110001
    with pytest.raises(ValueError, match="uint8 bytes"):
        unpack_mask(torch.zeros(3, dtype=torch.uint8), (30,))


def test_compact_state_needs_freezenet_masks() -> None:
    with pytest.raises(ValueError, match="no FreezeNet masks"):
        compact_state(TinyVGG())
    with pytest.raises(ValueError, match="not a FreezeNet compact state"):
        load_compact_state(TinyVGG(), {"format": "other"})


# --------------------------------------------------------------------------------------------- FreezeNet-WD


def test_frozen_weight_decay_follows_its_closed_form() -> None:
    method = FreezeNet(sparsity=0.8, frozen_weight_decay=True)
    ctx = make_context(seed=0)
    runner = MethodRunner(method, ctx)
    model = runner.apply(TinyVGG())
    optimizer = torch.optim.SGD(runner.param_groups(model, weight_decay=0.01), lr=0.1, momentum=0.9)
    runner.set_optimizer(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    factor = 1.0
    for step in range(6):
        factor *= 1.0 - optimizer.param_groups[0]["lr"] * 0.01
        runner.train_step(model, *seeded_batch(seed=step))
        scheduler.step()
    assert method.seed is not None
    theta0 = _initial(TinyVGG, method.seed)
    for name, module in _targets(model):
        keep, init = _mask(module), theta0[f"{name}.weight"]
        expected = (init.double() * factor).float()
        assert torch.equal(cast(Tensor, module.weight).detach()[~keep], expected[~keep]), name
    assert method.frozen_scales() == pytest.approx(dict.fromkeys(method.frozen_scales(), factor), rel=1e-15)
    fresh = FreezeNet(sparsity=0.8, frozen_weight_decay=True)
    fresh.apply(TinyVGG(), make_context(seed=0))
    fresh.load_state_dict(method.state_dict())
    assert fresh.frozen_scales() == method.frozen_scales()


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sparsity": 0.0}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.5}, "sparsity"),
        ({"score": "hessian"}, "score"),
        ({"seed": 2**32}, "seed"),
        ({"seed": -1}, "seed"),
        ({"reinit_after_mask": True}, "reinit_after_mask"),
        ({"batches": 0}, "batches"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FreezeNet(**overrides)


def _snapshot(model: nn.Module) -> tuple[dict[str, type], dict[str, Tensor]]:
    types = {name: type(m) for name, m in model.named_modules()}
    return types, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: tuple[dict[str, type], dict[str, Tensor]]) -> None:
    types, state = _snapshot(model)
    assert types == before[0]
    assert state.keys() == before[1].keys()
    for key, value in state.items():
        assert torch.equal(value, before[1][key]), key


@pytest.mark.parametrize("interspace", [False, True])
def test_no_batches_gives_a_clear_error_and_leaves_the_model_unchanged(interspace: bool) -> None:
    """The seeded re-initialisation (and the IP conversion) happen only once scoring has succeeded."""
    ctx = Context(example_input=torch.randn(2, 3, 16, 16), seed=0)
    model = TinyVGG()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="needs data"):
        FreezeNet(interspace=interspace).apply(model, ctx)
    _assert_unchanged(model, before)


def test_interspace_without_kxk_convs_is_not_applicable_and_leaves_the_model_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    before = _snapshot(model)
    with pytest.raises(MethodNotApplicableError, match="K×K kernel"):
        FreezeNet(interspace=True).apply(model, make_context())
    _assert_unchanged(model, before)


def test_model_without_maskable_layers_is_not_applicable() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(768))
    with pytest.raises(MethodNotApplicableError, match="no maskable layers"):
        FreezeNet().apply(model, make_context())


def test_already_masked_model_is_refused() -> None:
    model = FreezeNet().apply(TinyVGG(), make_context())
    with pytest.raises(ValueError, match="already masked"):
        FreezeNet().apply(model, make_context())


def test_regenerate_rejects_bad_seeds() -> None:
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="32-bit"):
            regenerate(TinyVGG(), seed)  # type: ignore[arg-type]


def test_regenerate_off_cpu_path_matches_the_in_place_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model off the CPU is reset on a CPU copy whose values are copied back: same θ₀ as in place."""
    import cnnkit.pruning.freezenet as freezenet

    expected = regenerate(TinyResNet(), 5).state_dict()
    monkeypatch.setattr(freezenet, "_on_cpu", lambda model: False)
    got = regenerate(TinyResNet(), 5).state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_interspace_freezes_the_seeded_coefficients_and_round_trips() -> None:
    from cnnkit.pruning.interspace import interspace_modules, to_interspace

    method = FreezeNet(sparsity=0.8, interspace=True)
    model, _ = _train(method, TinyVGG, steps=3)
    assert method.seed is not None and interspace_modules(model)
    reference = regenerate(TinyVGG(), method.seed)
    to_interspace(reference)
    lambda0 = reference.state_dict()
    for name, module in _targets(model):
        keep = _mask(module)
        assert torch.equal(cast(Tensor, module.weight).detach()[~keep], lambda0[f"{name}.weight"][~keep]), (
            name
        )
    rebuilt = load_compact_state(TinyVGG, _roundtrip(method.compact_state(model)))
    want, got = model.state_dict(), rebuilt.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
