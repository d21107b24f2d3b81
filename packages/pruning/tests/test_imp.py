"""Iterative magnitude pruning / lottery tickets (METHODS.md §14): round sizes against the OpenLTH rule
computed by hand, global magnitude selection against a sort, nested masks, bit-exact rewinding to θ_k
(k = 0 and k > 0, BN buffers and IP bases included), optimizer reset, checkpoints and bad input."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import torch
from torch import Tensor, nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import keep_masks, masked_modules
from cnnkit.core.testing import TinyVGG, check_method_contract, method_factory
from cnnkit.pruning.imp import IMP, magnitude_round, planned_rounds

SHAPE = (2, 4, 4)
CLASSES = 3
STEPS_PER_EPOCH = 4


class SmallBNNet(nn.Module):
    """conv(2→6, 3×3) → BN → ReLU → conv(6→8, 3×3) → ReLU → linear(128→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out: Tensor = self.fc(x.flatten(1))
        return out


def _net(seed: int = 0) -> SmallBNNet:
    torch.manual_seed(seed)
    return SmallBNNet()


def _batch(step: int, size: int = 8) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    return torch.randn((size, *SHAPE), generator=gen), torch.randint(0, CLASSES, (size,), generator=gen)


def _ctx(epochs: int, seed: int = 0) -> Context:
    return Context(
        example_input=_batch(0)[0], seed=seed, total_steps=epochs * STEPS_PER_EPOCH, total_epochs=epochs
    )


def _setup(method: IMP, epochs: int) -> tuple[nn.Module, MethodRunner, torch.optim.Optimizer]:
    runner = MethodRunner(method, _ctx(epochs))
    model = runner.apply(_net())
    opt = torch.optim.SGD(runner.param_groups(model, weight_decay=5e-4), lr=0.05, momentum=0.9)
    runner.set_optimizer(opt)
    return model, runner, opt


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if not n.endswith(".mask")}


def _raw(name: str) -> str:
    return f"{name}.parametrizations.weight.original"


# --------------------------------------------------------------------------------------------- math


def test_default_sparsity_gives_openlths_ten_levels() -> None:
    method = IMP()
    assert method.config.sparsity == pytest.approx(1 - 0.8**10, abs=1e-12)
    assert planned_rounds({"a": 266_200}, method.config.sparsity, 0.2) == 10
    # by hand: 1000 → 800 → 640 → 512 = ⌈1000·0.8³⌉
    assert planned_rounds({"a": 600, "b": 400}, 1 - 0.512, 0.2) == 3
    assert planned_rounds({"a": 600, "b": 400}, 0.2, 0.2) == 1
    assert planned_rounds({"a": 10, "b": 1000}, 0.5, 0.2, "layerwise") == 4  # 10 → 8 → 6 → 5: 3; b: 4


def test_magnitude_round_hand_example_global_and_layerwise() -> None:
    keeps = {
        "a": torch.tensor([True, True, False, True, True]),
        "b": torch.tensor([True, True, True, True, True]),
    }
    mags = {"a": torch.tensor([0.9, 0.1, 5.0, 0.3, 0.3]), "b": torch.tensor([0.2, 0.8, 0.05, 0.7, 0.6])}
    # global: n = 9 kept, ⌈0.2·9⌉ = 2 pruned: the smallest kept are b[2] = 0.05 and a[1] = 0.1 (a[2] is gone)
    out = magnitude_round(keeps, mags, 0.5, 0.2, "global")
    assert out["a"].tolist() == [True, False, False, True, True]
    assert out["b"].tolist() == [True, True, False, True, True]
    # layerwise: a keeps 4 - ⌈0.8⌉ = 3 (the tie 0.3/0.3 keeps both, 0.1 goes), b keeps 5 - 1 = 4
    out = magnitude_round(keeps, mags, 0.5, 0.2, "layerwise")
    assert out["a"].tolist() == [True, False, False, True, True]
    assert out["b"].tolist() == [True, True, False, True, True]
    # the target caps the last round: sparsity 0.15 of 10 keeps ⌈8.5⌉ = 9 > 9 - 2
    capped = magnitude_round(keeps, mags, 0.15, 0.2, "global")
    assert sum(int(m.sum()) for m in capped.values()) == 9


# --------------------------------------------------------------------------------------------- training


def _run(method: IMP, epochs: int, on_epoch=None, on_step=None) -> nn.Module:
    model, runner, opt = _setup(method, epochs)
    for epoch in range(epochs):
        for i in range(STEPS_PER_EPOCH):
            runner.train_step(model, *_batch(epoch * STEPS_PER_EPOCH + i))
            if on_step is not None:
                on_step(runner.ctx.step, model)
        before = (keep_masks(model), _state(model))
        runner.end_epoch()
        if on_epoch is not None:
            on_epoch(epoch + 1, model, before, opt)
    return model


def test_rounds_prune_twenty_percent_of_the_remaining_globally_by_magnitude_nested() -> None:
    sparsity = float(Decimal(1) - Decimal("0.8") ** 3)
    method = IMP(sparsity=sparsity, rewind_step=0, epochs_per_round=1)
    kept_counts: list[int] = []

    def on_epoch(epoch: int, model: nn.Module, before, opt) -> None:
        keeps_before, state_before = before
        keeps = keep_masks(model)
        n_before = sum(int(k.sum()) for k in keeps_before.values())
        n_after = sum(int(k.sum()) for k in keeps.values())
        if epoch > 3:
            assert n_after == n_before
            return
        kept_counts.append(n_after)
        assert n_after == n_before - math.ceil(0.2 * n_before) or n_after == target
        for name in keeps:
            assert not (keeps[name] & ~keeps_before[name]).any(), "a pruned weight was revived"
        # reference: the n_after largest |θ| (trained, before rewinding) among the previously kept
        mags = torch.cat(
            [
                torch.where(keeps_before[n], state_before[_raw(n)].abs(), torch.tensor(-1.0)).flatten()
                for n in keeps
            ]
        )
        ref = torch.zeros_like(mags, dtype=torch.bool)
        ref[torch.sort(mags, descending=True, stable=True).indices[:n_after]] = True
        assert torch.equal(torch.cat([keeps[n].flatten() for n in keeps]), ref)
        assert method.stats(model)["round"] == epoch == method.checkpoint_phase()

    total = 2 * 6 * 9 + 6 * 8 * 9 + 128 * 3
    target = math.ceil(total * 0.512)
    model = _run(method, 5, on_epoch)
    assert method.rounds == 3
    assert kept_counts[-1] == target
    # ⌈N·0.8^L⌉ within the rounding of each level
    for level, kept in enumerate(kept_counts, start=1):
        assert abs(kept - total * 0.8**level) <= level
    stats = method.stats(model)
    assert (
        stats["kept"] == target and stats["round"] == 3 and stats["density"] == pytest.approx(target / total)
    )
    assert stats["trained_params"] == target + 6 * 2 + 8 + 3  # + BN (γ, β) + biases


@pytest.mark.parametrize("k", [0, 6])
def test_survivors_equal_their_step_k_values_bit_for_bit_after_rewinding(k: int) -> None:
    method = IMP(sparsity=0.36, rewind_step=k, epochs_per_round=2)  # 2 rounds: epochs 2 and 4
    saved: dict[str, dict[str, Tensor]] = {}
    checked = []
    _, runner, _ = _setup(IMP(sparsity=0.36, rewind_step=k, epochs_per_round=2), 6)  # θ_0 of the same init
    saved["k"] = _state(runner.ctx.model) if k == 0 else {}

    def on_step(step: int, model: nn.Module) -> None:
        if step == k:
            saved["k"] = _state(model)

    def on_epoch(epoch: int, model: nn.Module, before, opt) -> None:
        if epoch not in (2, 4):
            return
        keeps, state, theta_k = keep_masks(model), _state(model), saved["k"]
        for name, value in state.items():
            raw = name.endswith(".parametrizations.weight.original")
            mask = keeps[name.split(".parametrizations")[0]] if raw else None
            if mask is None:
                assert torch.equal(value, theta_k[name]), name  # biases, BN parameters and buffers
            else:
                assert torch.equal(value[mask], theta_k[name][mask]), name
                assert torch.all(value[~mask] == 0), name
        assert not torch.equal(before[1][_raw("conv2")], theta_k[_raw("conv2")])  # training did move them
        assert len(opt.state) == 0, "the optimizer state was not cleared"
        checked.append(epoch)

    _run(method, 6, on_epoch, on_step)
    assert checked == [2, 4] and method.round == 2


def test_layerwise_prunes_twenty_percent_of_each_layer() -> None:
    method = IMP(sparsity=0.36, scope="layerwise", rewind_step=0, epochs_per_round=1)
    seen = []

    def on_epoch(epoch: int, model: nn.Module, before, opt) -> None:
        for name, keep in keep_masks(model).items():
            n, kept_before = keep.numel(), int(before[0][name].sum())
            expected = max(kept_before - math.ceil(0.2 * kept_before), math.ceil(round(0.64 * n, 9)))
            assert int(keep.sum()) == (expected if epoch <= 2 else kept_before), (epoch, name)
        seen.append(epoch)

    _run(method, 3, on_epoch)
    assert seen == [1, 2, 3] and method.round == 2


def test_rewind_none_keeps_the_trained_weights_and_reset_optimizer_false_keeps_masked_state() -> None:
    method = IMP(sparsity=0.2, rewind="none", reset_optimizer=False, epochs_per_round=1)

    def on_epoch(epoch: int, model: nn.Module, before, opt) -> None:
        if epoch != 1:
            return
        keeps, state = keep_masks(model), _state(model)
        for name, keep in keeps.items():
            assert torch.equal(state[_raw(name)][keep], before[1][_raw(name)][keep])
            buf = opt.state[model.get_submodule(name).parametrizations.weight.original]["momentum_buffer"]
            assert torch.all(buf[~keep] == 0) and bool((buf[keep] != 0).any())

    _run(method, 2, on_epoch)
    assert method.rewind_snapshot is None


def test_interspace_rewinds_the_bases_unless_told_not_to() -> None:
    for rewind_basis in (True, False):
        method = IMP(
            sparsity=0.2, rewind_step=0, epochs_per_round=1, interspace=True, rewind_basis=rewind_basis
        )
        _, runner, _ = _setup(IMP(sparsity=0.2, rewind_step=0, epochs_per_round=1, interspace=True), 2)
        basis0 = runner.ctx.model.get_submodule("conv2").basis.detach().clone()  # type: ignore[union-attr]

        def on_epoch(epoch: int, model: nn.Module, before, opt, rewind_basis=rewind_basis, basis0=basis0):
            if epoch != 1:
                return
            basis = model.get_submodule("conv2").basis
            trained = before[1]["conv2.basis"]
            assert not torch.equal(trained, basis0)
            assert torch.equal(basis, basis0 if rewind_basis else trained)

        model = _run(method, 2, on_epoch)
        assert method.stats(model)["basis_params"] == 2 * 81


def test_method_state_survives_a_weights_only_checkpoint(tmp_path) -> None:
    method = IMP(sparsity=0.36, rewind_step=2, epochs_per_round=1)
    model, runner, _ = _setup(method, 3)
    for i in range(STEPS_PER_EPOCH):
        runner.train_step(model, *_batch(i))
    runner.end_epoch()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, path)
    blob = torch.load(path, weights_only=True)
    twin = IMP(sparsity=0.36, rewind_step=2, epochs_per_round=1)
    model2, runner2, _ = _setup(twin, 3)
    model2.load_state_dict(blob["model"])
    twin.load_state_dict(blob["method"])
    assert twin.round == method.round == 1
    assert twin.rewind_snapshot is not None and method.rewind_snapshot is not None
    assert all(
        torch.equal(twin.rewind_snapshot[n], method.rewind_snapshot[n]) for n in method.rewind_snapshot
    )
    runner2.ctx.epoch = runner.ctx.epoch
    for m, r in ((model, runner), (model2, runner2)):
        for i in range(STEPS_PER_EPOCH):
            r.train_step(m, *_batch(100 + i))
        r.end_epoch()
    assert twin.round == method.round == 2
    assert all(
        torch.equal(a, b)
        for a, b in zip(keep_masks(model).values(), keep_masks(model2).values(), strict=True)
    )


# --------------------------------------------------------------------------------------------- bad input


def test_a_rewind_step_beyond_the_first_round_is_a_clear_error() -> None:
    model = _net()
    with pytest.raises(ValueError, match="rewind_step=9"):
        IMP(sparsity=0.2, rewind_step=9, epochs_per_round=2).apply(model, _ctx(4))  # round 1 after step 8
    assert not list(masked_modules(model)), "the model was changed before the error"
    IMP(sparsity=0.2, rewind_step=8, epochs_per_round=2).apply(_net(), _ctx(4))
    with pytest.raises(ValueError, match="rewind_step=2000"):
        IMP().apply(_net(), Context(example_input=_batch(0)[0], total_steps=1000, total_epochs=200))


def test_too_short_a_training_for_the_rounds_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="10 rounds"):
        IMP(rewind_step=0).apply(_net(), _ctx(5))
    with pytest.raises(ValueError, match="epochs_per_round=2"):
        IMP(sparsity=0.36, rewind_step=0, epochs_per_round=2).apply(_net(), _ctx(4))
    with pytest.raises(ValueError, match=r"Context\(total_epochs"):
        IMP(rewind_step=0).apply(_net(), Context(example_input=_batch(0)[0]))


def test_a_round_before_step_k_is_a_clear_error() -> None:
    method = IMP(sparsity=0.2, rewind_step=3, epochs_per_round=1)
    model = method.apply(_net(), Context(example_input=_batch(0)[0], total_epochs=2))  # no total_steps
    with pytest.raises(RuntimeError, match="never saved"):
        method.after_epoch(Context(example_input=_batch(0)[0], model=model))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pruning_fraction", 0.0),
        ("pruning_fraction", 1.0),
        ("rewind_step", -1),
        ("epochs_per_round", 0),
        ("rewind", "lr"),
        ("sparsity", 0.0),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        IMP(**{field: value})


def test_contract_holds_under_interspace() -> None:
    check_method_contract(method_factory("imp", interspace=True, rewind_basis=False), {"tiny_vgg": TinyVGG})
