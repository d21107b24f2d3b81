"""COPS solver (cnnkit.pruning.cops.combine) against HiGHS and against its defining properties.

The reference LP is built here from the raw scores, exactly as stated in the issue and METHODS §10b, with the
normalisation of METHODS §10c applied first: each score divided by its L1 norm; an auxiliary score with a
negative entry shifted by −(sum of its k smallest entries)/k (the "range" baseline, see the cops module
docstring); then cⱼ = γⱼ·Bⱼ with Bⱼ the sum of the k largest entries of the shifted score.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from cnnkit.pruning import cops
from cnnkit.pruning.cops import InfeasibleControlsError, build_lp, combine

# ----------------------------------------------------------------------------------------------------------
# Reference: the LP as stated, solved by HiGHS
# ----------------------------------------------------------------------------------------------------------


def _topk_sum(x: torch.Tensor, k: int, largest: bool = True) -> float:
    return float(torch.topk(x, k, largest=largest).values.sum())


def stated_lp(
    scores: list[torch.Tensor], k: int, controls: list[float]
) -> tuple[list[np.ndarray], list[float]]:
    """(LP scores, levels cⱼ) built independently of the module: L1-normalise, shift signed auxiliaries."""
    lp_scores = []
    for j, s in enumerate(scores):
        x = s.double().reshape(-1)
        x = x / x.abs().sum()
        if j > 0 and bool((x < 0).any()):
            x = x - _topk_sum(x, k, largest=False) / k
        lp_scores.append(x)
    levels = [g * _topk_sum(x, k) for g, x in zip(controls, lp_scores[1:], strict=True)]
    return [x.numpy() for x in lp_scores], levels


def highs(lp_scores: list[np.ndarray], levels: list[float], k: int) -> tuple[int, float]:
    """(status, optimum) of max ⟨s₁, m⟩ s.t. ⟨sⱼ, m⟩ ≥ cⱼ, Σm = k, 0 ≤ m ≤ 1 by HiGHS.

    Rows and objective are rescaled to unit largest coefficient and the feasibility tolerances tightened to
    1e-10: with L1-normalised scores (entries ~1/d) HiGHS's default absolute tolerance 1e-7 lets it violate
    a constraint by ~1e-9, which moves its objective by λ·1e-9 — more than the 1e-9 relative we test.
    """
    f = [1.0 / float(np.abs(x).max()) for x in lp_scores]
    res = linprog(
        -lp_scores[0] * f[0],
        A_ub=-np.stack([x * fj for x, fj in zip(lp_scores[1:], f[1:], strict=True)]),
        b_ub=-np.array(levels) * np.array(f[1:]),
        A_eq=np.ones((1, lp_scores[0].size)),
        b_eq=[k],
        bounds=(0, 1),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    return res.status, (-res.fun / f[0] if res.status == 0 else math.nan)


def random_scores(seed: int, d: int, n: int, kind: str) -> list[torch.Tensor]:
    """SNIP-like non-negative main score; auxiliaries unsigned, signed (GraSP-like) or integer (many ties)."""
    g = torch.Generator().manual_seed(seed)
    main = (torch.randn(d, generator=g) * torch.randn(d, generator=g)).abs()
    out = [main]
    for _ in range(n - 1):
        if kind == "ties":
            out.append(torch.randint(-3, 5, (d,), generator=g).float())
        elif kind == "signed":
            out.append(torch.randn(d, generator=g) - 0.2 * main)
        else:
            out.append(torch.rand(d, generator=g) * torch.randn(d, generator=g).abs())
    if kind == "ties":
        out[0] = torch.randint(0, 6, (d,), generator=g).float()
    return out


def binding_controls(scores: list[torch.Tensor], k: int, seed: int) -> list[float]:
    """Controls strictly above what the plain top-k of s₁ achieves, so every constraint binds."""
    g = torch.Generator().manual_seed(seed + 1)
    lp_scores, _ = stated_lp(scores, k, [0.0] * (len(scores) - 1))
    top1 = torch.topk(torch.from_numpy(lp_scores[0]), k).indices.numpy()
    controls = []
    for x in lp_scores[1:]:
        frac = float(x[top1].sum()) / _topk_sum(torch.from_numpy(x), k)
        controls.append(frac + (0.2 + 0.6 * float(torch.rand(1, generator=g))) * (1.0 - frac))
    return controls


CASES = [
    (n, kind, seed, d)
    for n in (2, 3)
    for kind in ("unsigned", "signed", "ties")
    for seed, d in enumerate((60, 700, 4000, 10_000))
]


def case_data(n: int, kind: str, seed: int, d: int) -> tuple[list[torch.Tensor], int, list[float]]:
    scores = random_scores(seed, d, n, kind)
    k = int(torch.randint(1, d, (1,), generator=torch.Generator().manual_seed(seed + 7)))
    return scores, k, binding_controls(scores, k, seed)


# ----------------------------------------------------------------------------------------------------------
# LP value against HiGHS, feasibility and count of the mask
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "kind", "seed", "d"), CASES)
def test_lp_value_equals_highs_and_mask_is_feasible(n: int, kind: str, seed: int, d: int) -> None:
    scores, k, controls = case_data(n, kind, seed, d)
    lp_scores, levels = stated_lp(scores, k, controls)
    status, reference = highs(lp_scores, levels, k)
    if status == 2:  # jointly infeasible (n = 3): the solver must say so too
        with pytest.raises(InfeasibleControlsError, match="infeasible"):
            combine(scores, k, controls)
        return
    assert status == 0
    res = combine(scores, k, controls)
    assert res.value == pytest.approx(reference, rel=1e-9, abs=0.0)
    assert res.gap <= 1e-12
    assert all(lam >= 0.0 for lam in res.lambdas)
    if kind != "ties":  # the controls bind (with ties, top-k of s₁ broken towards larger s₂ may not need λ)
        assert any(lam > 0.0 for lam in res.lambdas)
    mask = res.mask
    assert mask.dtype == torch.bool and mask.shape == scores[0].shape
    assert int(mask.sum()) == k
    m = mask.numpy()
    assert float(lp_scores[0][m].sum()) == pytest.approx(res.mask_value, abs=1e-12)
    feasible = True
    for j, (x, c) in enumerate(zip(lp_scores[1:], levels, strict=True)):
        achieved = float(x[m].sum())
        assert achieved == pytest.approx(res.achieved[j] - (res.rhs[j] - c), abs=1e-12)
        if n == 2:  # exactly feasible up to the documented rounding tolerance 1e-12·‖s₂‖₁
            tolerance = 1e-12 * float(np.abs(x).sum())
        else:  # documented rounding bound: (|F|/2)·(max sⱼ − min sⱼ)
            tolerance = res.fractional / 2 * float(x.max() - x.min()) + 1e-12
        assert achieved >= c - tolerance, f"constraint {j + 2} violated"
        feasible &= achieved >= c - 1e-12
    if feasible:  # (n > 2: a rounded mask that violates a constraint can beat the LP value)
        assert res.mask_value <= res.value + 1e-12


@pytest.mark.parametrize(("n", "seed", "k"), [(2, 2, 2000), (2, 14, 2000), (3, 2, 2000), (3, 15, 300)])
def test_exact_ties_with_full_control_match_highs(n: int, seed: int, k: int) -> None:
    """Integer scores: many masks reach ⟨s_n, m⟩ = B_n exactly, their float sums differ in the last bits.

    A search that compared those sums with c without the rounding slack took the optimum for infeasible and
    ran off to λ → ∞ (these instances lost up to 20 % of the objective that way).
    """
    scores = random_scores(seed, 3000, n, "ties")
    controls = [0.5] * (n - 2) + [1.0]
    lp_scores, levels = stated_lp(scores, k, controls)
    status, reference = highs(lp_scores, levels, k)
    assert status == 0
    res = combine(scores, k, controls)
    assert res.value == pytest.approx(reference, rel=1e-9, abs=0.0)
    assert int(res.mask.sum()) == k


def test_lp_levels_match_the_stated_form() -> None:
    """build_lp's levels (unshifted normalised scores, range form) are the stated γ·B of the shifted score."""
    scores, k, controls = case_data(3, "signed", 3, 2000)
    lp = build_lp(scores, k, controls)
    lp_scores, levels = stated_lp(scores, k, controls)
    for j in (1, 2):
        shift = float(lp.scores[j].numpy()[0] - lp_scores[j][0])  # = L_j / k
        assert lp.worst[j - 1] == pytest.approx(k * shift, rel=1e-12)
        assert lp.rhs[j - 1] - k * shift == pytest.approx(levels[j - 1], rel=1e-12)
    np.testing.assert_allclose(lp.scores[0].numpy(), lp_scores[0], rtol=1e-15)


def test_four_scores_match_highs() -> None:
    scores = random_scores(11, 800, 4, "unsigned")
    k = 200
    controls = binding_controls(scores, k, 11)
    controls = [0.5 * g + 0.25 for g in controls]
    lp_scores, levels = stated_lp(scores, k, controls)
    status, reference = highs(lp_scores, levels, k)
    assert status == 0
    assert combine(scores, k, controls).value == pytest.approx(reference, rel=1e-9, abs=0.0)


# ----------------------------------------------------------------------------------------------------------
# γ = 0, γ = 1, infeasibility
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["unsigned", "signed"])
def test_zero_controls_give_the_top_k_of_the_main_score(n: int, kind: str) -> None:
    scores = random_scores(3, 5000, n, kind)
    k = 1234
    res = combine(scores, k, [0.0] * (n - 1))
    expected = torch.zeros(5000, dtype=torch.bool)
    expected[torch.topk(scores[0], k).indices] = True
    assert torch.equal(res.mask, expected)
    assert res.lambdas == (0.0,) * (n - 1)
    main = scores[0].double()
    assert res.value == pytest.approx(float(main[expected].sum() / main.sum()), rel=1e-12)


@pytest.mark.parametrize("kind", ["unsigned", "signed"])
@pytest.mark.parametrize("k", [1, 37, 2500, 4999])
def test_full_control_gives_the_top_k_of_the_auxiliary_score(kind: str, k: int) -> None:
    scores = random_scores(5, 5000, 2, kind)
    top = torch.topk(scores[1], k + 1).values
    assert top[k - 1] > top[k]  # the top-k of s₂ is unique
    res = combine(scores, k, [1.0])
    expected = torch.zeros(5000, dtype=torch.bool)
    expected[torch.topk(scores[1], k).indices] = True
    assert torch.equal(res.mask, expected)
    main = scores[0].double() / scores[0].double().abs().sum()
    assert res.value == pytest.approx(float(main[expected].sum()), rel=1e-12)


def test_jointly_infeasible_controls_raise() -> None:
    g = torch.Generator().manual_seed(0)
    main, aux = torch.rand(3000, generator=g), torch.randn(3000, generator=g)
    scores, k, controls = [main, aux, -aux], 300, [0.9, 0.9]
    lp_scores, levels = stated_lp(scores, k, controls)
    assert highs(lp_scores, levels, k)[0] == 2  # HiGHS agrees that it is infeasible
    with pytest.raises(InfeasibleControlsError, match=r"controls\[1\] = 0.9 asks for <scores\[2\], m>"):
        combine(scores, k, controls)
    combine(scores, k, [0.5, 0.5])  # ... and that the ranges overlap at 0.5 each


def test_infeasible_zero_baseline_on_a_negative_best_raises() -> None:
    scores = [torch.rand(100), -torch.rand(100) - 1.0]
    with pytest.raises(InfeasibleControlsError, match="baseline='range'"):
        combine(scores, 10, [0.5], baseline="zero")
    assert int(combine(scores, 10, [0.5], baseline="range").mask.sum()) == 10


# ----------------------------------------------------------------------------------------------------------
# Choices: normalisation, baseline
# ----------------------------------------------------------------------------------------------------------


def test_positive_scaling_changes_values_not_the_mask() -> None:
    """Powers of two scale float32 scores exactly, so the normalised LP is bit-identical."""
    scores, k, controls = case_data(2, "signed", 2, 4000)
    base = combine(scores, k, controls)
    scaled = combine([4.0 * scores[0], 0.25 * scores[1]], k, controls)
    assert torch.equal(base.mask, scaled.mask)
    assert scaled.value == base.value and scaled.lambdas == base.lambdas
    raw = combine(scores, k, controls, normalize="none")
    raw_scaled = combine([4.0 * scores[0], scores[1]], k, controls, normalize="none")
    assert torch.equal(raw.mask, base.mask) and torch.equal(raw_scaled.mask, base.mask)
    assert raw_scaled.value == pytest.approx(4.0 * raw.value, rel=1e-13)
    assert raw.value == pytest.approx(base.value * float(scores[0].double().abs().sum()), rel=1e-10)


def test_baseline_choices() -> None:
    scores, k, _ = case_data(2, "signed", 1, 700)
    lp_auto = build_lp(scores, k, [0.6])
    lp_zero = build_lp(scores, k, [0.6], baseline="zero")
    lp_range = build_lp(scores, k, [0.6], baseline="range")
    best, worst = lp_auto.best[0], lp_auto.worst[0]
    assert worst is not None and lp_zero.worst == (None,)
    assert lp_auto.rhs == lp_range.rhs
    assert lp_auto.rhs[0] == pytest.approx(worst + 0.6 * (best - worst), rel=1e-14)
    assert lp_zero.rhs[0] == pytest.approx(0.6 * best, rel=1e-14)
    unsigned = [s.abs() for s in scores]
    assert build_lp(unsigned, k, [0.6]).worst == (None,)  # auto: zero baseline for a non-negative score


# ----------------------------------------------------------------------------------------------------------
# Internals: the large-d path, the selection primitives, monotonicity
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the sampled estimate, the exact reductions and their sampled thresholds on small problems."""
    monkeypatch.setattr(cops, "_DIRECT_THRESHOLDS", 300)
    monkeypatch.setattr(cops, "_SELECT_SAMPLE", 64)
    monkeypatch.setattr(cops, "_REDUCE_ABOVE", 500)
    monkeypatch.setattr(cops, "_ESTIMATE_SAMPLE", 256)
    monkeypatch.setattr(cops, "_RESTRICT_MIN", 100)


@pytest.mark.parametrize("kind", ["unsigned", "signed", "ties"])
@pytest.mark.parametrize("density", [0.003, 0.1, 0.5, 0.97])
@pytest.mark.parametrize("control", [0.3, 0.9, 1.0])
def test_large_path_equals_direct_path(
    small_knobs: None, kind: str, density: float, control: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = random_scores(17, 6000, 2, kind)
    k = max(1, round(density * 6000))
    reduced = combine(scores, k, [control])
    monkeypatch.setattr(cops, "_REDUCE_ABOVE", 1 << 30)
    monkeypatch.setattr(cops, "_DIRECT_THRESHOLDS", 1 << 30)
    direct = combine(scores, k, [control])
    assert reduced.value == pytest.approx(direct.value, rel=1e-12, abs=1e-15)
    assert int(reduced.mask.sum()) == k
    assert reduced.achieved[0] >= reduced.rhs[0] - 1e-12
    assert reduced.mask_value == pytest.approx(direct.mask_value, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("k", [1, 5, 500, 2500, 4999, 5000])
def test_selection_and_top_k_sums_are_exact(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(5000, generator=g, dtype=torch.float64)
    x[::7] = 0.25  # ties across the threshold
    kth = float(torch.sort(x, descending=True).values[k - 1])
    assert cops._kth_largest(x, k) == kth
    assert cops._topk_sum(x, k, largest=True) == pytest.approx(_topk_sum(x, k), rel=1e-13, abs=1e-12)
    assert cops._topk_sum(x, k, largest=False) == pytest.approx(
        _topk_sum(x, k, largest=False), rel=1e-13, abs=1e-12
    )


def test_topk_lex_breaks_ties_by_the_secondary_score() -> None:
    primary = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    secondary = torch.tensor([9.0, 0.0, 1.0, 5.0, 1.0, 0.0], dtype=torch.float64)
    assert sorted(cops._topk_lex(primary, secondary, 3).tolist()) == [1, 2, 3]
    # the k smallest are the complement of the n − k largest
    assert sorted(cops._topk_lex(primary, secondary, 3, largest=False).tolist()) == [0, 4, 5]


def test_constraint_score_of_the_top_k_is_monotone_in_lambda() -> None:
    """φ(λ) = ⟨s₂, topk(s₁ + λs₂)⟩ is non-decreasing (METHODS §10i), as the oracle computes it."""
    for seed in range(4):
        scores = random_scores(seed, 3000, 2, "signed")
        lp = build_lp(scores, 400, [0.5])
        oracle = cops._PairOracle(lp.scores[0], lp.scores[1], 400, 3000, 1.0, 1.0, cops._Stats())
        phis = [oracle.support(1.0 - t, t).v2 for t in np.linspace(0.0, 1.0, 41)]
        assert all(b >= a - 1e-15 for a, b in itertools.pairwise(phis))


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------

GOOD = [torch.rand(4, 5), torch.rand(4, 5)]


@pytest.mark.parametrize(
    ("scores", "keep", "controls", "kwargs", "error", "match"),
    [
        ([torch.rand(10)], 3, [], {}, ValueError, r"scores: need at least 2"),
        (torch.rand(2, 10), 3, [0.5], {}, TypeError, r"scores: expected a sequence"),
        ([torch.rand(10), torch.rand(11)], 3, [0.5], {}, ValueError, r"scores\[1\]: shape \(11,\)"),
        ([torch.rand(10), [1.0] * 10], 3, [0.5], {}, TypeError, r"scores\[1\]: expected a torch.Tensor"),
        ([torch.rand(0), torch.rand(0)], 1, [0.5], {}, ValueError, r"scores: .* empty"),
        (
            [torch.rand(3), torch.tensor([1.0, math.nan, 0.0])],
            1,
            [0.5],
            {},
            ValueError,
            r"scores\[1\]: .*NaN",
        ),
        (
            [torch.rand(3), torch.tensor([1.0, math.inf, 0.0])],
            1,
            [0.5],
            {},
            ValueError,
            r"scores\[1\]: .*inf",
        ),
        (GOOD, 0, [0.5], {}, ValueError, r"keep: must satisfy 1 <= keep <= 20"),
        (GOOD, 21, [0.5], {}, ValueError, r"keep: must satisfy 1 <= keep <= 20"),
        (GOOD, 2.0, [0.5], {}, TypeError, r"keep: expected an int"),
        (GOOD, True, [0.5], {}, TypeError, r"keep: expected an int"),
        (GOOD, 3, [], {}, ValueError, r"controls: need one control per auxiliary score"),
        (GOOD, 3, [0.5, 0.5], {}, ValueError, r"controls: need one control per auxiliary score"),
        (GOOD, 3, [-0.1], {}, ValueError, r"controls\[0\]: must lie in \[0, 1\]"),
        (GOOD, 3, [1.5], {}, ValueError, r"controls\[0\]: must lie in \[0, 1\]"),
        (GOOD, 3, [math.nan], {}, ValueError, r"controls\[0\]: must lie in \[0, 1\]"),
        (GOOD, 3, ["0.5"], {}, TypeError, r"controls\[0\]: expected a float"),
        (GOOD, 3, 0.5, {}, TypeError, r"controls: expected a sequence"),
        (GOOD, 3, [0.5], {"normalize": "l2"}, ValueError, r"normalize: must be one of \('l1', 'none'\)"),
        (GOOD, 3, [0.5], {"baseline": "min"}, ValueError, r"baseline: must be one of \('auto', 'zero'"),
    ],
)
def test_bad_input_raises_naming_the_argument(
    scores: object, keep: object, controls: object, kwargs: dict[str, str], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        combine(scores, keep, controls, **kwargs)  # type: ignore[arg-type]


def test_accepts_any_real_dtype_and_keeps_the_shape() -> None:
    scores = [torch.randint(0, 100, (3, 4, 5)), torch.rand(3, 4, 5, dtype=torch.float16)]
    res = combine(scores, 17, [np.float32(0.5)])  # type: ignore[list-item]
    assert res.mask.shape == (3, 4, 5) and int(res.mask.sum()) == 17
    everything = combine(scores, 60, [1.0])
    assert bool(everything.mask.all())
