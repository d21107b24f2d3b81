"""Pruning-at-initialization scores (METHODS.md §9): each score against an independent reference, exact
top-k selection, masking guarantees, bad input and the method contract."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from decimal import Decimal

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import get_mask, is_masked
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.testing import (
    TinyResNet,
    TinyVGG,
    check_method_contract,
    make_context,
    method_factory,
    registered_method_names,
    seeded_batch,
)
from cnnkit.pruning._base import ScoredPruner, keep_count, select_masks, top_k_mask
from cnnkit.pruning.scores import SNIP, GraSP, Magnitude, Random, SynFlow, class_balanced_chunks

ALL = {"random": Random, "magnitude": Magnitude, "snip": SNIP, "grasp": GraSP, "synflow": SynFlow}
T = 200.0


class ConvLinear(nn.Module):
    """The tiny 2-layer net of the reference tests: conv(2→3, 3×3, bias) → ReLU → linear(48→4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(torch.relu(self.conv(x)).flatten(1))
        return out


def _conv_linear(seed: int = 0) -> ConvLinear:
    torch.manual_seed(seed)
    return ConvLinear().double()


def _batches(n: int = 2, size: int = 5, shape: tuple[int, ...] = (2, 6, 6), classes: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn((size, *shape), generator=gen, dtype=torch.float64),
            torch.randint(0, classes, (size,), generator=gen),
        )
        for _ in range(n)
    ]


def _ctx(batches, seed: int = 0) -> Context:
    return Context(example_input=batches[0][0], batches=batches, seed=seed)


def _mlp(seed: int = 0, bias: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 5, bias=bias),
        nn.ReLU(),
        nn.Linear(5, 4, bias=bias),
        nn.ReLU(),
        nn.Linear(4, 3, bias=bias),
    ).double()


# --------------------------------------------------------------------------------------------- SNIP


def test_snip_equals_hand_autograd_summed_over_batches() -> None:
    model, batches = _conv_linear(), _batches(n=2)
    ws = [model.conv.weight, model.fc.weight]
    g = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        for acc, gi in zip(g, torch.autograd.grad(F.cross_entropy(model(x), y), ws), strict=True):
            acc += gi
    ref = {"conv": (ws[0] * g[0]).abs().detach(), "fc": (ws[1] * g[1]).abs().detach()}
    got = SNIP(batches=2, normalize="none").compute_scores(model, _ctx(batches))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-15)
    one = SNIP(batches=1, normalize="none").compute_scores(model, _ctx(batches))
    assert not torch.allclose(one["fc"], got["fc"]), "batches=2 must use the second batch"
    total = sum(r.sum() for r in ref.values())
    normed = SNIP(batches=2).compute_scores(model, _ctx(batches))
    torch.testing.assert_close(normed["fc"], ref["fc"] / total, rtol=1e-12, atol=1e-15)


def test_snip_single_linear_layer_closed_form() -> None:
    torch.manual_seed(3)
    model = nn.Linear(5, 3).double()
    batches = _batches(n=2, size=4, shape=(5,), classes=3)
    grad = torch.zeros(3, 5, dtype=torch.float64)
    with torch.no_grad():
        for x, y in batches:
            delta = (torch.softmax(x @ model.weight.T + model.bias, 1) - F.one_hot(y, 3)) / len(y)
            grad += delta.T @ x
    ref = (model.weight.detach() * grad).abs()
    got = SNIP(batches=2, normalize="none").compute_scores(model, _ctx(batches))
    torch.testing.assert_close(got[""], ref, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------- GraSP


def _grasp_loss(model: nn.Module, params: dict[str, Tensor], batches) -> Tensor:
    return sum(F.cross_entropy(functional_call(model, params, (x,)) / T, y) for x, y in batches)


def _grasp_fd_reference(model: ConvLinear, batches) -> dict[str, Tensor]:
    """θ ⊙ Hg with Hg by central differences of the gradient along g (float64)."""
    names = ["conv.weight", "fc.weight"]
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}

    def grad_at(shift: float, direction: dict[str, Tensor]) -> list[Tensor]:
        params = {n: (theta[n] + shift * direction.get(n, 0)).requires_grad_(True) for n in theta}
        return list(torch.autograd.grad(_grasp_loss(model, params, batches), [params[n] for n in names]))

    g = dict(zip(names, grad_at(0.0, {}), strict=True))
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    unit = {n: v / norm for n, v in g.items()}
    h = 1e-4
    plus, minus = grad_at(h, unit), grad_at(-h, unit)
    hg = {n: norm * (p - m) / (2 * h) for n, p, m in zip(names, plus, minus, strict=True)}
    return {n.split(".")[0]: theta[n] * hg[n] for n in names}


def test_grasp_hg_equals_central_finite_differences() -> None:
    model, batches = _conv_linear(seed=4), _batches(n=2, seed=5)
    ref = _grasp_fd_reference(model, batches)
    got = GraSP(batches=2, normalize="none").compute_scores(model, _ctx(batches))
    for name in ref:
        scale = float(ref[name].abs().max())
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-6 * scale)
    # excluded layers still enter g (official: all conv/linear weights); only the scored set shrinks
    only_fc = GraSP(batches=2, normalize="none", exclude=("first",)).compute_scores(model, _ctx(batches))
    assert set(only_fc) == {"fc"}
    torch.testing.assert_close(only_fc["fc"], got["fc"], rtol=1e-12, atol=1e-18)


def test_grasp_hg_equals_exact_hessian_on_mlp() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False)).double()
    batches = _batches(n=1, size=6, shape=(4,), classes=2, seed=7)
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: Tensor) -> Tensor:
        parts = [t.view(s) for t, s in zip(flat.split(sizes), shapes, strict=True)]
        return _grasp_loss(model, {"0.weight": parts[0], "2.weight": parts[1]}, batches)

    g = torch.autograd.functional.jacobian(loss, flat0)
    hg = torch.autograd.functional.hessian(loss, flat0) @ g
    ref = (flat0 * hg).split(sizes)
    got = GraSP(normalize="none").compute_scores(model, _ctx(batches))
    torch.testing.assert_close(got["0"].reshape(-1), ref[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got["2"].reshape(-1), ref[1], rtol=0, atol=1e-10)


def test_grasp_removes_the_largest_minus_theta_hg() -> None:
    model, batches = _conv_linear(seed=8), _batches(seed=9)
    ref = _grasp_fd_reference(model, batches)
    pruned = GraSP(batches=2, sparsity=0.75).apply(copy.deepcopy(model), _ctx(batches))
    grasp_score = torch.cat([-ref["conv"].reshape(-1), -ref["fc"].reshape(-1)])  # GraSP's own −θ⊙Hg
    kept = torch.cat([get_mask(pruned.conv).reshape(-1), get_mask(pruned.fc).reshape(-1)]).bool()
    n_remove = grasp_score.numel() - keep_count(grasp_score.numel(), 0.25)
    assert int((~kept).sum()) == n_remove
    assert grasp_score[~kept].min() > grasp_score[kept].max()


def test_class_balanced_chunks_follow_the_official_sampling() -> None:
    xs = torch.arange(12.0).view(12, 1)
    ys = torch.tensor([2, 0, 0, 1, 2, 0, 1, 1, 2, 0, 2, 1])
    batches = [(xs[:6], ys[:6]), (xs[6:], ys[6:])]
    chunks = class_balanced_chunks(batches, samples_per_class=2, num_classes=3, iterations=1)
    assert [c[1].tolist() for c in chunks] == [[0, 0, 1], [1, 2, 2]]
    assert [c[0].view(-1).tolist() for c in chunks] == [[1.0, 2.0, 3.0], [6.0, 0.0, 4.0]]
    with pytest.raises(ValueError, match="samples_per_class=None"):
        class_balanced_chunks(batches, samples_per_class=5, num_classes=3)


# --------------------------------------------------------------------------------------------- SynFlow


def _synflow_closed_form(layers: list[Tensor], keep: list[Tensor] | None = None) -> list[Tensor]:
    """Scores |W_l| ⊙ ∂R/∂|W_l| for R = 1ᵀ|W_L|…|W_1|1 (ReLUs are identities on positive flows)."""
    a = [w.abs() * (1 if keep is None else k) for w, k in zip(layers, keep or layers, strict=True)]
    right = [torch.ones(a[0].shape[1], dtype=torch.float64)]
    for m in a[:-1]:
        right.append(m @ right[-1])
    left = [torch.ones(a[-1].shape[0], dtype=torch.float64)]
    for m in reversed(a[1:]):
        left.insert(0, m.T @ left[0])
    return [m * torch.outer(u, v) for m, u, v in zip(a, left, right, strict=True)]


def test_synflow_single_round_equals_closed_form_and_conserves_flow() -> None:
    model = _mlp(seed=10)
    layers = [model[i].weight.detach().clone() for i in (0, 2, 4)]
    assert any((w < 0).any() for w in layers)
    ctx = Context(example_input=torch.randn(3, 6, dtype=torch.float64))
    got = SynFlow(rounds=1, normalize="none").compute_scores(model, ctx)
    ref = _synflow_closed_form(layers)
    r_total = float(
        torch.ones(3, dtype=torch.float64) @ (layers[2].abs() @ layers[1].abs() @ layers[0].abs()).sum(1)
    )
    for name, r in zip(("0", "2", "4"), ref, strict=True):
        torch.testing.assert_close(got[name], r, rtol=1e-12, atol=0)
        assert math.isclose(float(got[name].sum()), r_total, rel_tol=1e-12)  # conservation
    for i, w in zip((0, 2, 4), layers, strict=True):
        assert torch.equal(model[i].weight, w), "scoring changed the weights (abs must be on a copy)"


def test_synflow_iterative_rounds_follow_the_exponential_schedule() -> None:
    model, rounds, density = _mlp(seed=11), 4, 0.2
    layers = [model[i].weight.detach().clone() for i in (0, 2, 4)]
    n = sum(w.numel() for w in layers)
    keep = [torch.ones_like(w) for w in layers]
    for t in range(1, rounds):
        scores = _synflow_closed_form(layers, keep)
        flat = torch.cat(
            [torch.where(k.bool(), s, -math.inf).reshape(-1) for s, k in zip(scores, keep, strict=True)]
        )
        order = torch.sort(flat, descending=True, stable=True).indices[
            : math.ceil(n * density ** (t / rounds))
        ]
        kept = torch.zeros(n, dtype=torch.float64)
        kept[order] = 1
        keep = [k.view(w.shape) for k, w in zip(kept.split([w.numel() for w in layers]), layers, strict=True)]
    ref = _synflow_closed_form(layers, keep)
    ctx = Context(example_input=torch.randn(2, 6, dtype=torch.float64))
    method = SynFlow(rounds=rounds, sparsity=1 - density, normalize="none")
    got = method.compute_scores(model, ctx)
    for name, r in zip(("0", "2", "4"), ref, strict=True):
        torch.testing.assert_close(got[name], r, rtol=1e-12, atol=0)
    assert not torch.allclose(SynFlow(rounds=1, normalize="none").compute_scores(model, ctx)["2"], got["2"])
    method.apply(model, ctx)
    assert sum(int(get_mask(model[i]).sum()) for i in (0, 2, 4)) == math.ceil(n * density - 1e-9)


def test_synflow_uses_eval_mode_and_absolute_state_in_float64() -> None:
    torch.manual_seed(12)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    ref_model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in [*ref_model.parameters(), *ref_model.buffers()]:
            if t.is_floating_point():
                t.abs_()
    ws = [ref_model[0].weight, ref_model[4].weight]
    grads = torch.autograd.grad(ref_model(torch.ones(1, 2, 4, 4, dtype=torch.float64)).sum(), ws)
    state = copy.deepcopy(model.state_dict())
    model.train()
    ctx = Context(example_input=torch.randn(5, 2, 4, 4))
    got = SynFlow(rounds=1, normalize="none").compute_scores(model, ctx)
    assert got["0"].dtype == torch.float64
    torch.testing.assert_close(got["0"], (ws[0] * grads[0]).abs().detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(got["4"], (ws[1] * grads[1]).abs().detach(), rtol=1e-12, atol=0)
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    train_mode = SynFlow(rounds=1, normalize="none", scoring_mode="train").compute_scores(model, ctx)
    assert not torch.allclose(train_mode["4"], got["4"])


# ----------------------------------------------------------------------------------------- magnitude, random


def test_magnitude_is_absolute_weight() -> None:
    model = _conv_linear(seed=13)
    got = Magnitude(normalize="none").compute_scores(model, Context(example_input=torch.zeros(1, 2, 6, 6)))
    assert torch.equal(got["conv"], model.conv.weight.detach().abs())
    assert torch.equal(got["fc"], model.fc.weight.detach().abs())


def test_random_is_reproducible_under_ctx_seed_only() -> None:
    model = TinyVGG()

    def scores(seed: int) -> dict[str, Tensor]:
        return Random(normalize="none").compute_scores(
            model, Context(example_input=torch.zeros(1, 3, 16, 16), seed=seed)
        )

    torch.manual_seed(0)
    first = scores(5)
    torch.manual_seed(1)  # the global RNG must not matter
    again, other = scores(5), scores(6)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["features.4"], other["features.4"])
    flat = torch.cat([s.reshape(-1) for s in first.values()])
    assert abs(float(flat.mean())) < 0.05 and abs(float(flat.std()) - 1) < 0.05


# --------------------------------------------------------------------------------------------- selection


def test_exact_count_with_all_equal_scores_global_and_layerwise() -> None:
    scores = {"a": torch.ones(7, 3), "b": torch.ones(10), "c": torch.ones(2, 2, 2)}
    n = 21 + 10 + 8
    glob = select_masks(scores, 0.6, "global")
    assert sum(int(m.sum()) for m in glob.values()) == math.ceil(0.4 * n - 1e-9) == 16
    assert int(glob["a"].sum()) == 16 and not glob["b"].any()  # ties: earlier entries first
    layer = select_masks(scores, 0.6, "layerwise")
    assert [int(m.sum()) for m in layer.values()] == [9, 4, 4]  # ⌈0.4·21⌉, ⌈0.4·10⌉, ⌈0.4·8⌉
    assert select_masks({"x": torch.zeros(10)}, 0.7)["x"].sum() == 3  # not ⌈3.0000000000000004⌉ = 4


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.97, 0.999])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_top_k_keeps_exactly_k_of_the_largest_with_many_ties(sparsity: float, scope: str) -> None:
    gen = torch.Generator().manual_seed(14)
    scores = {
        f"t{i}": torch.randint(0, 4, (s,), generator=gen).float() for i, s in enumerate((50, 333, 1000))
    }
    masks = select_masks(scores, sparsity, scope)  # type: ignore[arg-type]
    groups = [list(scores)] if scope == "global" else [[n] for n in scores]
    for names in groups:
        s = torch.cat([scores[n] for n in names])
        m = torch.cat([masks[n] for n in names])
        assert (
            int(m.sum())
            == keep_count(s.numel(), 1 - Decimal(repr(sparsity)))
            == math.ceil(round((1 - sparsity) * s.numel(), 9))
        )
        assert s[m].min() >= s[~m].max()
        tied = (s == s[m].min()).nonzero().view(-1)
        assert m[tied].tolist() == sorted(m[tied].tolist(), reverse=True), "ties must be kept in index order"


def test_selection_rejects_nan_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        select_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    assert top_k_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 2).tolist() == [True, False, True, False]


# --------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("name", sorted(ALL))
def test_scoring_leaves_the_model_untouched_and_apply_only_masks(name: str) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    model.train()
    model.layer2.eval()
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    method = ALL[name](**dict(getattr(ALL[name], "contract_config", {})))
    method.compute_scores(model, make_context())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "scoring changed the state"
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    method.apply(model, make_context())
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = get_mask(module)
            assert torch.equal(module.weight, before[f"{module_name}.weight"] * mask)
    buffers = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(v, before[k]) for k, v in buffers.items())


def test_masked_entries_stay_zero_under_sgd_momentum_weight_decay() -> None:
    torch.manual_seed(0)
    method = SNIP(sparsity=0.8)
    runner = MethodRunner(method, make_context())
    model = runner.apply(TinyVGG())
    start = {n: m.weight.detach().clone() for n, m in model.named_modules() if is_masked(m)}
    runner.set_optimizer(
        torch.optim.SGD(runner.param_groups(model), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-2)
    )
    for step in range(8):
        runner.train_step(model, *seeded_batch(seed=50 + step))
    for n, module in model.named_modules():
        if not is_masked(module):
            continue
        off = ~get_mask(module).bool()
        assert torch.all(module.weight[off] == 0)
        assert torch.all(module.parametrizations.weight.original[off] == 0)
        assert not torch.equal(module.weight[~off], start[n][~off]), "kept weights must train"
    # after_step is the safety net: corrupted raw entries are reset
    conv = model.features[0]
    with torch.no_grad():
        conv.parametrizations.weight.original.add_(1.0)
    method.after_step(runner.ctx)
    assert torch.all(conv.parametrizations.weight.original[~get_mask(conv).bool()] == 0)


def test_exclude_first_last_and_include_kinds() -> None:
    ctx = make_context()
    model = Magnitude(sparsity=0.5, exclude=("first", "last")).apply(TinyVGG(), ctx)
    masked = [n for n, m in model.named_modules() if is_masked(m)]
    assert masked == ["features.4", "features.8", "classifier.1"]
    kept = sum(int(get_mask(model.get_submodule(n)).sum()) for n in masked)
    total = sum(model.get_submodule(n).weight.numel() for n in masked)
    assert kept == math.ceil(total / 2)
    convs = Magnitude(include=("conv",)).apply(TinyVGG(), ctx)
    assert [n for n, m in convs.named_modules() if is_masked(m)] == ["features.0", "features.4", "features.8"]


def test_stats_report_density_count_and_effective_macs() -> None:
    method = Magnitude(sparsity=0.9)
    model = method.apply(TinyResNet(), make_context())
    stats = method.stats(model)
    n = stats["maskable"]
    assert n == sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert stats["kept"] == math.ceil(0.1 * n - 1e-9)
    assert stats["density"] == pytest.approx(stats["kept"] / n)
    assert stats["sparsity"] == pytest.approx(1 - stats["kept"] / n)
    assert stats["density"] < stats["overall_density"] < 1
    assert 0 < stats["effective_macs_ratio"] < 0.5
    exported = method.export(model)
    assert not any(is_masked(m) for m in exported.modules())


def test_stats_follow_the_model_to_another_dtype() -> None:
    """The example input stored at apply is moved to the model's current dtype (and device) for the MACs."""
    method = Magnitude(sparsity=0.9)
    model = method.apply(TinyResNet(), make_context())
    before = method.stats(model)
    after = method.stats(model.double())
    assert after == pytest.approx(before)
    assert 0 < after["effective_macs_ratio"] < 0.5


def test_reinit_after_mask_keeps_masks_of_theta0_and_is_seeded() -> None:
    torch.manual_seed(0)
    base = TinyVGG()
    plain = Magnitude().apply(copy.deepcopy(base), make_context())
    fresh = [
        Magnitude(reinit_after_mask=True).apply(copy.deepcopy(base), make_context(seed=3)) for _ in range(2)
    ]
    conv = lambda m: m.features[4]  # noqa: E731
    assert torch.equal(get_mask(conv(fresh[0])), get_mask(conv(plain)))
    assert not torch.equal(conv(fresh[0]).weight, conv(plain).weight)
    assert torch.equal(conv(fresh[0]).weight, conv(fresh[1]).weight)


class _Doubled(nn.Module):
    """A user's own parametrization: ``w = 2·θ``."""

    def forward(self, w: Tensor) -> Tensor:
        return 2 * w


def _weight_norm(layer: nn.Linear) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(layer)


def _doubled(layer: nn.Linear) -> nn.Module:
    nn.utils.parametrize.register_parametrization(layer, "weight", _Doubled())
    return layer


@pytest.mark.parametrize("parametrize_first", [_weight_norm, _doubled], ids=["weight_norm", "custom"])
@pytest.mark.parametrize("cls", [Magnitude, SNIP])
def test_scoring_leaves_a_parametrized_model_usable(
    cls: type[ScoredPruner], parametrize_first: Callable[[nn.Linear], nn.Module]
) -> None:
    """The scoring copy bakes the parametrizations of its own modules only (they share torch's generated
    class with the model's): the model keeps working and is scored on its effective weight."""
    model = _mlp()
    model[0] = parametrize_first(model[0])
    effective = model[0].weight.detach().clone()
    x, y = _batches(n=1, size=4, shape=(6,), classes=3)[0]
    cls(sparsity=0.5).apply(model, Context(example_input=x, batches=[(x, y)], seed=0))
    assert is_masked(model[0])
    assert model(x).shape == (4, 3)
    mask = get_mask(model[0]).bool()
    torch.testing.assert_close(model[0].weight, effective * mask)
    if cls is Magnitude:  # global top-k of |w|: a kept entry of layer 0 beats every pruned one
        assert effective.abs()[mask].min() >= effective.abs()[~mask].max()


def test_scored_pruner_stacked_after_the_weight_compander() -> None:
    pytest.importorskip("cnnkit.regularizers")  # not a test dependency of this package
    from cnnkit.core import MethodStack, create_method

    torch.manual_seed(0)
    model, ctx = TinyVGG(), make_context()
    MethodStack([create_method("wc"), create_method("magnitude", sparsity=0.5)]).apply(model, ctx)
    assert all(is_masked(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert torch.isfinite(model(ctx.example_input)).all()


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5])
@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_sparsity_names_the_field(name: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        ALL[name](sparsity=value)
    assert [field for field, _ in info.value.errors] == ["sparsity"]


def test_bad_config_values() -> None:
    for kwargs in ({"scope": "per-channel"}, {"include": ("bn",)}, {"include": ()}, {"batches": 0}):
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            SNIP(**kwargs)
    with pytest.raises(ConfigError, match="rounds"):
        SynFlow(rounds=0)
    with pytest.raises(ConfigError, match="batches"):
        Magnitude(batches=2)  # data-free scores take no batches


def test_no_maskable_layers_is_not_applicable() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(768))
    for cls in ALL.values():
        with pytest.raises(MethodNotApplicableError, match="no maskable layers"):
            cls().apply(model, make_context())
    with pytest.raises(MethodNotApplicableError):
        Magnitude(include=("linear",), exclude=("first", "last")).apply(TinyResNet(), make_context())


@pytest.mark.parametrize("cls", [SNIP, GraSP])
def test_data_scores_without_batches_raise_the_clear_error(cls: type[ScoredPruner]) -> None:
    ctx = Context(example_input=torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="Context.batches is None"):
        cls().apply(TinyVGG(), ctx)


def test_data_free_scores_need_no_batches() -> None:
    for method in (Random(), Magnitude(), SynFlow(rounds=2)):
        model = method.apply(TinyVGG(), Context(example_input=torch.randn(2, 3, 16, 16)))
        assert is_masked(model.features[0])


def test_wrong_score_shapes_and_double_masking_are_clear_errors() -> None:
    class Broken(Magnitude):
        def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
            return {n: s.T if s.dim() == 2 else s for n, s in super().score(model, ctx).items()}

    with pytest.raises(ValueError, match="has shape"):
        Broken().apply(TinyVGG(), make_context())
    model = Magnitude().apply(TinyVGG(), make_context())
    with pytest.raises(ValueError, match="already masked"):
        SNIP().apply(model, make_context())


class _NaNScore(Magnitude):
    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        return {n: torch.full_like(s, math.nan) for n, s in super().score(model, ctx).items()}


@pytest.mark.parametrize(
    ("make", "ctx", "error"),
    [
        (lambda: SNIP(interspace=True), Context(example_input=torch.randn(2, 3, 16, 16)), "needs data"),
        (lambda: _NaNScore(interspace=True), make_context(), "NaN"),
        (lambda: _NaNScore(reinit_after_mask=True), make_context(), "NaN"),
    ],
    ids=["ip-no-batches", "ip-bad-score", "reinit-bad-score"],
)
def test_failed_apply_leaves_the_model_unchanged(
    make: Callable[[], ScoredPruner], ctx: Context, error: str
) -> None:
    """The interspace conversion happens only once scoring has succeeded (it is scored on a copy)."""
    model = TinyVGG()
    types = {name: type(m) for name, m in model.named_modules()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=error):
        make().apply(model, ctx)
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class _Tied(nn.Module):
    """``b`` uses ``a``'s weight Parameter (tied weights); ``c`` has its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return out


def _tied_context() -> Context:
    x, y = _batches(n=1, size=4, shape=(6,), classes=3)[0]
    x = x.float()
    return Context(example_input=x, batches=[(x, y)], seed=0, total_steps=4, total_epochs=2)


@pytest.mark.parametrize("name", registered_method_names("cnnkit-pruning", kind="pruner"))
def test_tied_weights_are_refused_before_the_model_changes(name: str) -> None:
    torch.manual_seed(0)
    model = _Tied()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(MethodNotApplicableError, match=r"tied weights.*a\.weight = b\.weight"):
        method_factory(name)().apply(model, _tied_context())
    assert not any(is_masked(m) for m in model.modules())
    assert model.b.weight is model.a.weight
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tied_weights_kept_dense_or_tied_to_a_non_target_are_handled() -> None:
    torch.manual_seed(0)
    model = Random(sparsity=0.5, exclude=("a", "b")).apply(_Tied(), _tied_context())
    assert [n for n, m in model.named_modules() if is_masked(m)] == ["c"]
    embedded = nn.Sequential(nn.Embedding(3, 6), nn.Linear(6, 3, bias=False))
    embedded[1].weight = nn.Parameter(torch.randn(3, 6))
    embedded[0].weight = embedded[1].weight  # an output layer tied to the input embedding
    with pytest.raises(MethodNotApplicableError, match=r"0\.weight = 1\.weight"):
        Random().apply(embedded, Context(example_input=torch.zeros(2, 1, dtype=torch.long)))
    assert not is_masked(embedded[1])


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(ALL))
def test_method_contract(name: str) -> None:
    cls = ALL[name]
    factory: Callable[[], ScoredPruner] = lambda: cls(**dict(cls.contract_config))  # noqa: E731
    check_method_contract(factory)
