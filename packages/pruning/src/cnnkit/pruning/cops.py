"""COPS: combine several pruning scores by a linear program, solved analytically.

Paper: P. Wimmer, J. Mehnert, A. Condurache, "COPS: Controlled Pruning Before Training Starts", IJCNN 2021,
arXiv 2107.12673. Only the abstract could be read. It says that COPS combines several (generalized synaptic)
scores by a constrained optimization problem, relaxes it to a linear program and solves that analytically,
with a numerical algorithm for two scores that beats general LP solvers. The problem and the algorithms below
are the reconstruction of METHODS.md §10, not the paper's text. This module holds the solver (:func:`combine`)
and the pruner method :class:`COPS` that computes the scores and applies the mask (see "The method" below).

The problem (METHODS §10b)
--------------------------
Given n ≥ 2 scores s₁ (main) and s₂..sₙ (auxiliary) of the same d maskable weights and a kept count k::

    maximize ⟨s₁, m⟩  subject to  ⟨sⱼ, m⟩ ≥ cⱼ (j = 2..n),  Σm = k,  0 ≤ m ≤ 1          (LP)

with the control form ``fraction_of_best`` (METHODS §10b/§10h, the only control form this solver
implements): cⱼ = γⱼ·Bⱼ, Bⱼ the sum of the k largest entries of sⱼ, γⱼ ∈ [0, 1] the *controls*.

Choices (each is an argument of :func:`combine` / :func:`build_lp`; defaults are METHODS' defaults)
-------------------------------------------------------------------------------------------------
* ``normalize="l1"`` (METHODS §10c): every score is divided by its L1 norm Σ|sⱼ| before anything else (an
  all-zero score is left as it is). ``"none"`` keeps the raw scores. Scaling a score by a positive factor does
  not change the mask for this control form (cⱼ scales with the score); it changes the reported ``value``
  and ``lambdas``, which are always given for the scores *as used in the LP* (after normalisation).
* ``baseline="auto"`` (METHODS §10c: "signed scores define c_j relative to the achievable range
  [min_k, max_k]"): for an auxiliary score with a negative entry the control is applied to the achievable
  range, cⱼ = Lⱼ + γⱼ(Bⱼ − Lⱼ), Lⱼ the sum of its k smallest entries. Because Σm = k this *is* the stated
  form γⱼ·Bⱼ for the shifted score sⱼ − Lⱼ/k (whose k-smallest sum is 0), so "the LP as stated, after
  normalisation" holds with that shift counted as part of the normalisation. The shift applies to the
  auxiliary scores only (shifting s₁ would only add a constant to the objective). ``"zero"`` always uses
  γⱼ·Bⱼ on the unshifted score (with a signed score whose Bⱼ < 0 every γⱼ < 1 is then infeasible);
  ``"range"`` always uses the range form. Normalisation is applied first, then the baseline.
* γ = 0 gives the plain top-k of s₁ (ties broken towards larger s₂); γ = 1 forces ⟨sⱼ, m⟩ = Bⱼ, i.e. a
  top-k set of sⱼ (for n = 2: the top-k of s₂, ties broken towards larger s₁).

Solution method [derived]
-------------------------
The Lagrangian dual is D(λ) = TopKSum(s₁ + Σλⱼsⱼ) − Σλⱼcⱼ over λ ≥ 0 and LP* = min D (strong duality);
a primal optimum is a top-k set of s₁ + Σλ*ⱼsⱼ, or a convex mix of such sets that tie at λ*. (The
*subgradient* of D in λⱼ is ⟨sⱼ, m(λ)⟩ − cⱼ; METHODS §10b writes the descent direction cⱼ − ⟨sⱼ, m(λ)⟩.)

* n = 2. The points (⟨s₁, m⟩, ⟨s₂, m⟩) of all m form a convex polygon Π; the top-k of (1−t)s₁ + t·s₂ is its
  support point in direction (1−t, t) (λ = t/(1−t)). Starting from the supports at t = 0 (best s₁; done if it
  is feasible) and t = 1 (best s₂; infeasible if even it misses c), the search keeps a support point A with
  ⟨s₂, ·⟩ < c and one B with ⟨s₂, ·⟩ ≥ c and queries the normal of the segment AB (a secant step on the
  dual, which is exact for a piecewise-linear D), safeguarded by bisection of the direction whenever a
  secant step does not halve the bracket. It stops when the new support lies on the line AB (AB is an edge
  of Π: an exact optimality certificate up to rounding) or when the bracket is one rounding unit wide.
  This is the bisection of METHODS §10b with secant acceleration: the same monotone φ(λ) = ⟨s₂, topk⟩, but
  typically 5–25 top-k evaluations instead of 60. Each evaluation is one O(d) selection (numpy's
  introselect on CPU, ``torch.kthvalue`` elsewhere) plus O(min(k, d − k)) sums (for k > d/2 the
  complement is selected). Once the bracket has shrunk 4×, the weights whose membership it already
  decides are fixed (the exact reduction described under "Large d"), so later evaluations are small.
* n > 2 (nested cutting planes). The last constraint is handled by the same 2-D search, whose support
  oracle in direction (a, b) solves the LP with objective a·s₁ + b·sₙ and the first n − 2 constraints —
  recursively, down to the n = 2 search. Each level is an exact 1-D cutting-plane (secant + bisection) method
  on a convex piecewise-linear function; cost grows like (evaluations per level)^(n−1), fine for n ≤ 4.
  Joint infeasibility is certified exactly: the support in direction (0, 1) is max ⟨sₙ, m⟩ under the other
  constraints; if it is below cₙ the controls are jointly infeasible (no HiGHS involved).
* Large d (n = 2, d > 2²⁰): λ* is first estimated on a random subsample of 2¹⁷ entries (fixed seed; its
  constraint level keeps the deficit below the best value in proportion, c_s = B_s − (B − c)·k_s/k). Then
  every weight whose combined score stays above / below the k-th largest over a whole bracket of λ around
  the estimate is fixed in / out — an exact reduction (combined scores are linear in the direction, so the
  bracket ends bound them; thresholds come from a sample and are verified by counting) — and the search runs
  on the remaining candidates, re-reducing as its bracket shrinks. A bracket that misses λ* is widened (at
  most three full-size reductions); the result is exact either way. At ResNet-50 size (25.5 M weights) this
  takes about one second on one CPU thread (benchmarks/cops_speed.py has the measurements).

Rounding and "LP value"
-----------------------
``value`` is the optimum of the relaxed LP, ⟨s₁, m*⟩ for a (possibly fractional) optimal m* found by the
search (a convex mix of two top-k sets per level, with the last constraint tight): it equals HiGHS's
objective up to rounding, and ``gap`` is a certified bound on LP* − value (dual bound minus ``value``).
``mask`` is binary with exactly k ones:

* n = 2 (METHODS §10b): the top-k of s₁ + λ*⁺s₂, i.e. the support point B of the final edge (ties towards
  larger s₂). It satisfies the constraint (up to the rounding tolerance below); ⟨s₁, mask⟩ =
  ``mask_value`` ≤ ``value``, and the two differ by at most one swapped pair's worth (more only on ties).
* n > 2: m* has few fractional coordinates F; all others are kept as in m*. Among the subsets of F of the
  right size (enumerated while there are at most 2¹⁶), the one satisfying every constraint with the largest
  ⟨s₁, ·⟩ is taken; if none does, the one with the smallest largest violation relative to ‖sⱼ‖₁. A binary
  feasible mask need not exist even when the LP is feasible, so the documented rounding tolerance is
  ⟨sⱼ, mask⟩ ≥ cⱼ − min(r, |F| − r)·(max_F sⱼ − min_F sⱼ) ≥ cⱼ − (|F|/2)·(max sⱼ − min sⱼ), r = Σ_F m*
  (|F| is reported as ``fractional``; ``achieved`` has the exact ⟨sⱼ, mask⟩).

Precision
---------
Everything runs in float64 on the scores' device (inputs of any real dtype are copied to float64; float32
scores are exact in float64), so sums and the combined scores carry ~1e-16 relative rounding. Tolerances,
all relative to the L1 norms of the scores as used in the LP:

* infeasible means max ⟨sⱼ, m⟩ < cⱼ − 1e-12·‖sⱼ‖₁; a level within that of the best (γ = 1) is clamped to
  the best achievable value instead of being rejected for a rounding unit;
* inside the search a support with ⟨s₂, ·⟩ ≥ c − 32·eps·‖s₂‖₁ counts as feasible (with many exactly tied
  scores, sums over equally good sets differ by rounding), and the LP solution takes B alone when its slack
  is below that (near γ = 1, λ* is huge and LP* is only determined to about λ*·eps, for HiGHS too);
* the edge test of the search uses 1e-13·(a‖s₁‖₁ + b‖s₂‖₁); ``gap`` reports what is left.

So the n = 2 mask satisfies its constraint up to 1e-12·‖s₂‖₁ (in practice to the last bits).

Errors
------
Fewer than 2 scores, non-tensors, complex dtypes, mismatched shapes or devices, empty or non-finite scores,
``keep`` outside [1, d], a wrong number of controls or a control outside [0, 1], an unknown ``normalize`` /
``baseline`` raise ``ValueError`` (``TypeError`` for wrong types) naming the argument and the allowed values.
Infeasible controls raise :class:`InfeasibleControlsError` (a ``ValueError``).

The method (``cops``)
---------------------
:class:`COPS` is a :class:`~cnnkit.pruning._base.ScoredPruner`. Its config names the scores to combine
(``scores``, main score first; default ``("snip", "synflow")``, METHODS §10c/§10h: task-specific vs
data-free), each a pruner of :mod:`cnnkit.pruning.scores` whose ``compute_scores`` is called on the model at
``apply`` with the COPS config's ``sparsity``, ``scope``, ``include`` and ``exclude`` (plus ``batches`` and
``scoring_mode`` for the data-dependent ``snip`` and ``grasp``: all of them score on the same batches, METHODS
§10d–e), and ``score_configs`` for any other option of a sub-score (e.g. ``{"synflow": {"rounds": 20}}``).
The sub-scores are taken raw (``normalize="none"``) and normalised by the solver (``normalize="l1"``: each
score divided by Σ|sⱼ| over all maskable weights, METHODS §10c; for ``scope="layerwise"`` over the layer).
``controls`` are γ₂..γₙ (default 0.5 each, METHODS §10h; one value is used for every auxiliary score);
``baseline`` picks the control form (default ``"auto"``: range form for signed scores such as GraSP's).

* ``scope="global"``: one LP over all maskable weights concatenated (model order), ``k = ⌈(1 − q)·N⌉``;
* ``scope="layerwise"``: one LP per maskable tensor with ``k_l = ⌈(1 − q)·N_l⌉``.

The mask is the solver's binary mask (exactly ``k`` ones). ``stats`` adds, for the global LP, the dual
multipliers ``cops_lambda_j`` (finite ones) and ``cops_achieved_j / cops_rhs_j`` (⟨ŝⱼ, m⟩ and cⱼ on the
normalised scores). Only the ``fraction_of_best`` control form is implemented (``constraint``); METHODS §10h's
``maxmin`` form and the ``solver`` choice (``bisection``/``subgradient``/``highs``) are not offered: the exact
search above serves every n.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Batch, Context
from cnnkit.pruning._base import DataPrunerConfig, ScoredPruner, keep_count

__all__ = ["COPS", "CombineResult", "CopsLP", "InfeasibleControlsError", "build_lp", "combine"]

Normalize = Literal["l1", "none"]
Baseline = Literal["auto", "zero", "range"]
_NORMALIZE = ("l1", "none")
_BASELINE = ("auto", "zero", "range")

_EPS = float(torch.finfo(torch.float64).eps)
_INF = math.inf
_DIRECT_THRESHOLDS = 1 << 17  # reductions of arrays up to this size use exact thresholds; larger: sampled
_SELECT_SAMPLE = 1 << 14  # sample size of the sampled reduction thresholds
_REDUCE_ABOVE = 1 << 20  # n = 2 problems larger than this: estimate on a sample, then reduce exactly
_ESTIMATE_SAMPLE = 1 << 17  # sample size of that estimate
_RESTRICT_MIN = 1 << 12  # inside a search, problems larger than this are re-reduced as the bracket shrinks
_BRACKET_HALF_WIDTH = 0.1  # initial half-width of the estimate's bracket, in log λ
_FEAS_RTOL = 1e-12
_ROUND_RTOL = 32.0 * _EPS  # rounding level of a sum of scores, relative to the score's L1 norm
_EDGE_RTOL = 1e-13
_MAX_ITER = 400
_ROUND_ENUM_MAX = 1 << 16


class InfeasibleControlsError(ValueError):
    """The controls ask for more than any mask with ``keep`` ones can achieve."""


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopsLP:
    """The LP as :func:`combine` solves it: maximize ⟨scores[0], m⟩ s.t. ⟨scores[j], m⟩ ≥ rhs[j−1],
    Σm = keep, 0 ≤ m ≤ 1.

    ``scores`` are flat float64 copies after normalisation (unshifted); ``best[j−1]`` / ``worst[j−1]`` are
    the sums of the keep largest / smallest entries of ``scores[j]`` (``worst`` is None where the baseline
    is zero); ``rhs = worst + γ(best − worst)`` (range) or ``γ·best`` (zero). ``scales`` are the divisors
    applied to the raw scores.
    """

    scores: tuple[Tensor, ...]
    keep: int
    controls: tuple[float, ...]
    rhs: tuple[float, ...]
    best: tuple[float, ...]
    worst: tuple[float | None, ...]
    scales: tuple[float, ...]


@dataclass(frozen=True)
class CombineResult:
    """Result of :func:`combine` (values refer to the scores as used in the LP, see :class:`CopsLP`).

    mask: bool tensor of the scores' shape with exactly ``keep`` ones.
    value: the LP optimum ⟨s₁, m*⟩ of the relaxation (m* possibly fractional).
    lambdas: optimal dual multipliers λ₂..λₙ (the mask is a top-k of s₁ + Σλⱼsⱼ).
    mask_value: ⟨s₁, mask⟩ ≤ value.
    rhs: the constraint levels c₂..cₙ; achieved: ⟨sⱼ, mask⟩ for j = 2..n.
    gap: certified bound on LP* − value (rounding level).
    fractional: number of fractional coordinates of m*.
    evaluations: number of top-k evaluations (cost measure).
    """

    mask: Tensor
    value: float
    lambdas: tuple[float, ...]
    mask_value: float
    rhs: tuple[float, ...]
    achieved: tuple[float, ...]
    gap: float
    fractional: int
    evaluations: int


def build_lp(
    scores: Sequence[Tensor],
    keep: int,
    controls: Sequence[float],
    *,
    normalize: Normalize = "l1",
    baseline: Baseline = "auto",
) -> CopsLP:
    """Validate the input and build the LP of :func:`combine` (normalised scores and constraint levels)."""
    flats = _validate(scores, keep, controls, normalize, baseline)
    normed = [_normalized(s, j, normalize) for j, s in enumerate(flats)]
    lp_scores = tuple(s for s, _ in normed)
    rhs: list[float] = []
    best: list[float] = []
    worst: list[float | None] = []
    for s, gamma in zip(lp_scores[1:], controls, strict=True):
        b = _topk_sum(s, keep, largest=True)
        use_range = baseline == "range" or (baseline == "auto" and float(s.min()) < 0.0)
        w = _topk_sum(s, keep, largest=False) if use_range else None
        rhs.append(gamma * b if w is None else w + float(gamma) * (b - w))
        best.append(b)
        worst.append(w)
    return CopsLP(
        scores=lp_scores,
        keep=keep,
        controls=tuple(float(g) for g in controls),
        rhs=tuple(rhs),
        best=tuple(best),
        worst=tuple(worst),
        scales=tuple(sc for _, sc in normed),
    )


def combine(
    scores: Sequence[Tensor],
    keep: int,
    controls: Sequence[float],
    *,
    normalize: Normalize = "l1",
    baseline: Baseline = "auto",
) -> CombineResult:
    """Solve the COPS LP for ``scores`` (main score first), ``keep`` kept entries and ``controls`` γ₂..γₙ.

    Returns the binary mask (shape of the scores, exactly ``keep`` ones) and the LP value; see the module
    docstring for the LP, the normalisation, the rounding and the tolerances.
    """
    lp = build_lp(scores, keep, controls, normalize=normalize, baseline=baseline)
    stats = _Stats()
    try:
        sol = _solve(lp.scores[0], list(lp.scores[1:]), list(lp.rhs), list(lp.best), keep, stats, 2)
    except _Infeasible as err:
        raise InfeasibleControlsError(_infeasible_message(err, lp)) from None
    mask, values = _binary_mask(sol, lp)
    gap = sol.gap if len(lp.scores) == 2 else _dual_gap(lp, sol)
    return CombineResult(
        mask=mask.reshape(scores[0].shape),
        value=sol.value,
        lambdas=sol.lambdas,
        mask_value=values[0],
        rhs=lp.rhs,
        achieved=tuple(values[1:]),
        gap=gap,
        fractional=_count_fractional(sol),
        evaluations=stats.evaluations,
    )


# ----------------------------------------------------------------------------------------------------------
# Validation and normalisation
# ----------------------------------------------------------------------------------------------------------


def _validate(
    scores: Sequence[Tensor], keep: int, controls: Sequence[float], normalize: str, baseline: str
) -> list[Tensor]:
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence):
        raise TypeError("scores: expected a sequence of tensors (main score first)")
    if len(scores) < 2:
        raise ValueError(f"scores: need at least 2 score tensors (main + auxiliary), got {len(scores)}")
    for j, s in enumerate(scores):
        _check_score(j, s, scores[0])
    d = scores[0].numel()
    if d == 0:
        raise ValueError("scores: the score tensors are empty")
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise TypeError(f"keep: expected an int in [1, {d}], got {type(keep).__name__}")
    if not 1 <= keep <= d:
        raise ValueError(f"keep: must satisfy 1 <= keep <= {d} (the number of entries), got {keep}")
    _check_controls(controls, len(scores) - 1)
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize: must be one of {_NORMALIZE}, got {normalize!r}")
    if baseline not in _BASELINE:
        raise ValueError(f"baseline: must be one of {_BASELINE}, got {baseline!r}")
    return [s.detach().reshape(-1) for s in scores]


def _check_score(j: int, s: object, ref: Tensor) -> None:
    if not isinstance(s, Tensor):
        raise TypeError(f"scores[{j}]: expected a torch.Tensor, got {type(s).__name__}")
    if s.is_complex():
        raise TypeError(f"scores[{j}]: complex dtype {s.dtype} is not allowed (real scores only)")
    if s.shape != ref.shape:
        raise ValueError(
            f"scores[{j}]: shape {tuple(s.shape)} differs from scores[0] shape {tuple(ref.shape)}; "
            "all scores must have the same shape"
        )
    if s.device != ref.device:
        raise ValueError(f"scores[{j}]: device {s.device} differs from scores[0] device {ref.device}")


def _check_controls(controls: Sequence[float], n_aux: int) -> None:
    if isinstance(controls, Tensor | str) or not isinstance(controls, Sequence):
        raise TypeError("controls: expected a sequence of floats γ₂..γₙ in [0, 1]")
    if len(controls) != n_aux:
        raise ValueError(
            f"controls: need one control per auxiliary score (len(scores) - 1 = {n_aux}), got {len(controls)}"
        )
    for i, g in enumerate(controls):
        if isinstance(g, bool) or not isinstance(g, numbers.Real):
            raise TypeError(f"controls[{i}]: expected a float in [0, 1], got {type(g).__name__}")
        if not 0.0 <= float(g) <= 1.0:  # also rejects NaN
            raise ValueError(f"controls[{i}]: must lie in [0, 1], got {g}")


def _normalized(s: Tensor, j: int, normalize: str) -> tuple[Tensor, float]:
    out = torch.empty(s.numel(), dtype=torch.float64, device=s.device)
    out.copy_(s)
    norm = float(torch.linalg.vector_norm(out, 1))
    if not math.isfinite(norm):
        raise ValueError(f"scores[{j}]: contains NaN or infinite entries (or overflows float64)")
    scale = norm if normalize == "l1" and norm > 0.0 else 1.0
    if scale != 1.0:
        out.div_(scale)
    return out, scale


# ----------------------------------------------------------------------------------------------------------
# Selection primitives
# ----------------------------------------------------------------------------------------------------------


# Advanced indexing (x[idx], x[mask], x[idx] = v) costs ~8 ms per call on small tensors with several CPU
# threads (torch 2.14); index_select / index_fill_ do not, so every gather and scatter goes through these.


def _take(x: Tensor, idx: Tensor) -> Tensor:
    return x.index_select(0, idx)


def _where(mask: Tensor) -> Tensor:
    return torch.nonzero(mask).squeeze(1)


def _select(x: Tensor, mask: Tensor) -> Tensor:
    return x.index_select(0, _where(mask))


def _sample_index(n: int, m: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(n)
    return torch.randint(n, (m,), generator=gen).to(device)


def _sample_rank_value(desc: Tensor, k: int, n: int, deeper: bool) -> float:
    """A value of a descending sample near the k-th largest of the population, with a safety margin.

    ``deeper`` moves towards smaller values (so that at least k population entries lie at or above it, with
    high probability); otherwise towards larger values. Returns ±inf when the margin leaves the sample.
    """
    m = desc.numel()
    p = k / n
    margin = 4.0 * math.sqrt(m * p * (1.0 - p)) + 4.0
    rank = math.ceil(p * m + margin) if deeper else math.floor(p * m - margin)
    if rank < 1:
        return _INF
    if rank > m:
        return -_INF
    return float(desc[rank - 1])


def _kth_largest(x: Tensor, k: int) -> float:
    """The k-th largest entry of a 1-D tensor (1 ≤ k ≤ x.numel()), exactly: numpy's introselect on CPU
    (5–10× faster than torch.kthvalue there, 40 ms for 25 M doubles), torch.kthvalue on other devices."""
    n = x.numel()
    if x.device.type == "cpu":
        return float(np.partition(x.numpy(), n - k)[n - k])
    return float(torch.kthvalue(x, n - k + 1).values)


def _topk_sum(x: Tensor, k: int, *, largest: bool) -> float:
    """Sum of the k largest (or smallest) entries: k·thr + Σ max(x − thr, 0) (or min), thr the k-th value.

    For k > n/2 the complement is summed instead (fewer terms, and k·|thr| stays below ‖x‖₁).
    """
    n = x.numel()
    if 2 * k > n:
        return float(x.sum()) - (_topk_sum(x, n - k, largest=not largest) if k < n else 0.0)
    thr = _kth_largest(x, k if largest else n - k + 1)
    excess = torch.sub(x, thr).clamp_(min=0.0) if largest else torch.sub(x, thr).clamp_(max=0.0)
    return k * thr + float(excess.sum())


def _masked_sums(xs: Sequence[Tensor], mask: Tensor, count: int) -> list[float]:
    """[Σ x[mask] for x in xs] (``count`` = number of True): one index gather over the smaller side."""
    n = mask.numel()
    if 2 * count <= n:
        idx = _where(mask)
        return [float(_take(x, idx).sum()) for x in xs]
    idx = _where(~mask)
    return [float(x.sum()) - float(_take(x, idx).sum()) for x in xs]


def _topk_lex(primary: Tensor, secondary: Tensor, k: int, *, largest: bool = True) -> Tensor:
    """Indices of the k largest entries of ``primary``, ties broken by larger ``secondary``, then smaller
    index; with ``largest=False`` the k smallest, ties by smaller ``secondary``, then larger index (exactly
    the complement of the n − k largest)."""
    n = primary.numel()
    if k >= n:
        return torch.arange(n, device=primary.device)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=primary.device)
    thr = _kth_largest(primary, k if largest else n - k + 1)
    cand = _where(primary >= thr if largest else primary <= thr)
    if cand.numel() == k:  # no excess ties at the threshold (the usual case)
        return cand
    vals = _take(primary, cand)
    strict = _select(cand, vals > thr if largest else vals < thr)
    tied = _select(cand, vals == thr)
    need = k - strict.numel()
    if tied.numel() > need:
        tied = tied if largest else tied.flip(0)
        order = torch.sort(_take(secondary, tied), descending=largest, stable=True).indices[:need]
        tied = _take(tied, order)
    return torch.cat([strict, tied])


# ----------------------------------------------------------------------------------------------------------
# Support oracles
# ----------------------------------------------------------------------------------------------------------


class _Infeasible(Exception):
    def __init__(self, label: int, achievable: float, required: float) -> None:
        super().__init__(label, achievable, required)
        self.label = label
        self.achievable = achievable
        self.required = required


@dataclass
class _Stats:
    evaluations: int = 0


Expander = Callable[[], Tensor]


@dataclass(frozen=True)
class _Point:
    """A support point of the polygon Π in direction (a, b): values and the mask(s) realising it."""

    a: float
    b: float
    v1: float
    v2: float
    parts: tuple[tuple[float, Expander], ...]
    lambdas: tuple[float, ...] = ()


class _Oracle(Protocol):
    scale1: float
    scale2: float

    @property
    def size(self) -> int: ...

    def support(self, a: float, b: float) -> _Point: ...

    def narrowed(self, lo: tuple[float, float], hi: tuple[float, float]) -> _Oracle: ...


@dataclass
class _PairOracle:
    """Top-k supports of (a·s1 + b·s2) on a (possibly reduced) index set.

    A reduced oracle keeps ``k`` of its candidates ``s1``/``s2``, on top of the entries fixed in (``fixed``:
    global index tensors, or a global bool mask from the root; sums ``base1``/``base2``); ``gidx`` maps its
    local to global indices. It is exact for the directions between ``valid[0]`` and ``valid[1]``.
    """

    s1: Tensor
    s2: Tensor
    k: int
    total: int
    scale1: float
    scale2: float
    stats: _Stats
    base1: float = 0.0
    base2: float = 0.0
    fixed: tuple[Tensor, ...] = ()
    gidx: Tensor | None = None
    valid: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.0, 1.0))
    buffers: list[Tensor] = field(default_factory=list)
    totals: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return self.s1.numel()

    def combined(self, a: float, b: float, slot: int | None = None) -> Tensor:
        if b == 0.0:
            return self.s1
        if a == 0.0:
            return self.s2
        if slot is None or self.gidx is not None:
            return self.s1 * a + self.s2 * b
        while len(self.buffers) <= slot:  # the root reuses full-size work buffers (no page faults)
            self.buffers.append(torch.empty_like(self.s1))
        return torch.mul(self.s1, a, out=self.buffers[slot]).add_(self.s2, alpha=b)

    def support(self, a: float, b: float) -> _Point:
        """Top-k of a·s1 + b·s2 (ties: larger s2, or larger s1 at (0, 1)); for k > n/2 via its complement."""
        self.stats.evaluations += 1
        comb, secondary = self.combined(a, b, slot=0), self.s2 if a > 0.0 else self.s1
        n = self.size
        if 2 * self.k <= n:
            sel = _topk_lex(comb, secondary, self.k)
            v1 = self.base1 + float(_take(self.s1, sel).sum())
            v2 = self.base2 + float(_take(self.s2, sel).sum())
            return _Point(a, b, v1, v2, ((1.0, lambda: self.expand(sel)),))
        out = _topk_lex(comb, secondary, n - self.k, largest=False)
        if self.totals is None:
            self.totals = (float(self.s1.sum()), float(self.s2.sum()))
        v1 = self.base1 + self.totals[0] - float(_take(self.s1, out).sum())
        v2 = self.base2 + self.totals[1] - float(_take(self.s2, out).sum())
        return _Point(a, b, v1, v2, ((1.0, lambda: self.expand(out, complement=True)),))

    def global_index(self, local: Tensor) -> Tensor:
        return local if self.gidx is None else _take(self.gidx, local)

    def expand(self, local: Tensor, complement: bool = False) -> Tensor:
        """The global bool mask: the fixed entries plus the candidates ``local`` (or all others)."""
        mask = torch.zeros(self.total, dtype=torch.bool, device=self.s1.device)
        for f in self.fixed:
            if f.dtype == torch.bool:
                mask |= f
            else:
                mask.index_fill_(0, f, True)
        if not complement:
            return mask.index_fill_(0, self.global_index(local), True)
        if self.gidx is None:
            mask.fill_(True)
        else:
            mask.index_fill_(0, self.gidx, True)
        return mask.index_fill_(0, self.global_index(local), False)

    def narrowed(self, lo: tuple[float, float], hi: tuple[float, float]) -> _PairOracle:
        """An exact reduced oracle for the directions between ``lo`` and ``hi``."""
        n, k = self.size, self.k
        if k == 0 or k >= n:
            return self
        u = self.combined(*lo, slot=0)
        w = self.combined(*hi, slot=1)
        tau_out, tau_in = _reduction_thresholds(u, w, k)
        keep_in = (u > tau_in) & (w > tau_in)  # above the (k+1)-th largest upper bound everywhere
        cand = ((u >= tau_out) | (w >= tau_out)) & ~keep_in  # not below the k-th largest lower bound
        cand_idx = _where(cand)
        n_in = int(torch.count_nonzero(keep_in))
        k_new = k - n_in
        if not 0 <= k_new <= cand_idx.numel():
            raise RuntimeError("cops: internal error, the reduction thresholds violated their guarantee")
        # The root keeps its (possibly huge) fixed-in set as a bool mask; reduced oracles as indices.
        fixed_in = keep_in if self.gidx is None else self.global_index(_where(keep_in))
        sum1, sum2 = _masked_sums((self.s1, self.s2), keep_in, n_in)
        return _PairOracle(
            s1=_take(self.s1, cand_idx),
            s2=_take(self.s2, cand_idx),
            k=k_new,
            total=self.total,
            scale1=self.scale1,
            scale2=self.scale2,
            stats=self.stats,
            base1=self.base1 + sum1,
            base2=self.base2 + sum2,
            fixed=(*self.fixed, fixed_in),
            gidx=self.global_index(cand_idx),
            valid=(lo, hi),
        )


def _reduction_thresholds(u: Tensor, w: Tensor, k: int) -> tuple[float, float]:
    """τ_out ≤ k-th largest of min(u, w) and τ_in ≥ (k+1)-th largest of max(u, w).

    An entry with max(u, w) < τ_out has k entries above it for every direction in between (it is never
    kept); one with min(u, w) > τ_in has at most k − 1 others at or above it (it is always kept). Combined
    scores are linear in the direction, so min/max over the two ends bound them on the whole bracket.
    """
    n = u.numel()
    if n > _DIRECT_THRESHOLDS:
        idx = _sample_index(n, _SELECT_SAMPLE, u.device)
        us, ws = _take(u, idx), _take(w, idx)
        lo_s = torch.minimum(us, ws).sort(descending=True).values
        hi_s = torch.maximum(us, ws).sort(descending=True).values
        tau_out = _sample_rank_value(lo_s, k, n, deeper=True)
        tau_in = _sample_rank_value(hi_s, k + 1, n, deeper=False)
        ok_out = int(torch.count_nonzero((u >= tau_out) & (w >= tau_out))) >= k
        ok_in = int(torch.count_nonzero((u > tau_in) | (w > tau_in))) <= k
        if ok_out and ok_in:
            return tau_out, tau_in
    tau_out = _kth_largest(torch.minimum(u, w), k)
    tau_in = _kth_largest(torch.maximum(u, w), k + 1) if k < n else -_INF
    return tau_out, tau_in


@dataclass
class _NestedOracle:
    """Supports of Π = {(⟨s1, m⟩, ⟨sn, m⟩)} over the masks satisfying the inner constraints: the support in
    direction (a, b) is the solution of the inner LP with objective a·s1 + b·sn."""

    s1: Tensor
    sn: Tensor
    inner: list[Tensor]
    inner_rhs: list[float]
    inner_best: list[float]
    k: int
    stats: _Stats
    first_label: int
    scale1: float
    scale2: float

    @property
    def size(self) -> int:
        return self.s1.numel()

    def support(self, a: float, b: float) -> _Point:
        obj = self.s1 if b == 0.0 else self.sn if a == 0.0 else self.s1 * a + self.sn * b
        sol = _solve(obj, self.inner, self.inner_rhs, self.inner_best, self.k, self.stats, self.first_label)
        masks = [(wt, f()) for wt, f in sol.parts]
        v1 = sum(wt * float(_select(self.s1, m).sum()) for wt, m in masks)
        v2 = sum(wt * float(_select(self.sn, m).sum()) for wt, m in masks)
        lambdas = tuple(lam / a if a > 0.0 else _INF for lam in sol.lambdas)
        parts = tuple((wt, _constant(m)) for wt, m in masks)
        return _Point(a, b, v1, v2, parts, lambdas)

    def narrowed(self, lo: tuple[float, float], hi: tuple[float, float]) -> _NestedOracle:
        return self


def _constant(mask: Tensor) -> Expander:
    return lambda: mask


# ----------------------------------------------------------------------------------------------------------
# The 2-D search (exact 1-D cutting planes on the dual)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Solution:
    value: float  # LP value ⟨s1, m*⟩
    parts: tuple[tuple[float, Expander], ...]  # m* as a convex combination of binary masks
    lambdas: tuple[float, ...]
    gap: float
    vertex: _Point  # n = 2: the binary mask of METHODS §10b (top-k at λ*⁺) and its values


def _lam(a: float, b: float) -> float:
    return b / a if a > 0.0 else _INF


def _direction(lam: float) -> tuple[float, float]:
    return (0.0, 1.0) if lam == _INF else (1.0 / (1.0 + lam), lam / (1.0 + lam))


def _single(p: _Point) -> _Solution:
    return _Solution(p.v1, p.parts, (*p.lambdas, _lam(p.a, p.b)), 0.0, p)


def _feasible_rhs(p: _Point, c: float, tol: float, label: int, clamp: bool) -> float:
    """At the direction (0, 1) the support is the largest achievable ⟨s2, m⟩: clamp c to it or raise."""
    if p.a == 0.0 and p.v2 < c:
        if p.v2 >= c - tol or clamp:
            return p.v2
        raise _Infeasible(label, p.v2, c)
    return c


def _secant(lo: _Point, hi: _Point) -> tuple[float, float] | None:
    """The normal of the segment lo–hi, if it lies strictly between the directions of lo and hi."""
    dv1, dv2 = lo.v1 - hi.v1, hi.v2 - lo.v2
    if not (dv1 > 0.0 and dv2 > 0.0):
        return None
    a, b = dv2 / (dv1 + dv2), dv1 / (dv1 + dv2)
    if lo.b < b < hi.b and hi.a < a < lo.a:
        return a, b
    return None


def _collapsed(lo: _Point, hi: _Point) -> bool:
    return hi.b - lo.b <= 8.0 * _EPS * hi.b and lo.a - hi.a <= 8.0 * _EPS * lo.a


def _search(
    oracle: _Oracle,
    c: float,
    label: int,
    *,
    first: _Point | None = None,
    last: _Point | None = None,
    clamp: bool = False,
) -> _Solution:
    """Maximize v1 subject to v2 ≥ c over the polygon whose supports ``oracle`` returns.

    ``first``/``last`` are support points bracketing the optimal direction (v2 < c and v2 ≥ c); by default
    the supports at (1, 0) and (0, 1).
    """
    delta = _ROUND_RTOL * oracle.scale2  # v2 ≥ c − delta counts as feasible (sums of tied sets differ so)
    A = first if first is not None else oracle.support(1.0, 0.0)
    if A.v2 >= c - delta:
        return _single(A)
    B = last if last is not None else oracle.support(0.0, 1.0)
    c = _feasible_rhs(B, c, _FEAS_RTOL * oracle.scale2, label, clamp)
    if A.v2 >= c - delta:
        return _single(A)
    seen = [A, B]
    width = B.b - A.b
    use_secant = True
    for _ in range(_MAX_ITER):
        if _collapsed(A, B):
            break
        if oracle.size > _RESTRICT_MIN and (B.b - A.b) * 4.0 < width:
            oracle, width = oracle.narrowed((A.a, A.b), (B.a, B.b)), B.b - A.b
        direction = _secant(A, B) if use_secant else None
        a, b = direction if direction is not None else ((A.a + B.a) / 2.0, (A.b + B.b) / 2.0)
        P = oracle.support(a, b)
        seen.append(P)
        if direction is not None and _on_edge(P, A, B, oracle):
            return _edge_solution(A, B, c, P, seen, oracle.scale2)
        old = B.b - A.b
        if P.v2 >= c - delta:
            B = P
        else:
            A = P
        use_secant = direction is None or (B.b - A.b) <= 0.5 * old
    return _edge_solution(A, B, c, B, seen, oracle.scale2)


def _on_edge(probe: _Point, lo: _Point, hi: _Point, oracle: _Oracle) -> bool:
    a, b = probe.a, probe.b
    tol = _EDGE_RTOL * (a * oracle.scale1 + b * oracle.scale2)
    return a * probe.v1 + b * probe.v2 <= max(a * lo.v1 + b * lo.v2, a * hi.v1 + b * hi.v2) + tol


def _edge_solution(
    lo: _Point, hi: _Point, c: float, probe: _Point, seen: list[_Point], scale2: float
) -> _Solution:
    """m* = α·lo + (1−α)·hi with ⟨s2, m*⟩ = c; λ* = b/a of the edge normal; gap from the best dual bound.

    When hi's slack is at the rounding level of the sums (32 eps ‖s2‖₁), hi itself is taken (α = 0): with a
    large λ* (controls near 1) α would otherwise turn that rounding into λ*-times larger objective noise.
    """
    alpha = 0.0 if hi.v2 - c <= _ROUND_RTOL * scale2 else (hi.v2 - c) / (hi.v2 - lo.v2)
    value = alpha * lo.v1 + (1.0 - alpha) * hi.v1
    parts = tuple((alpha * w, f) for w, f in lo.parts) + tuple(((1.0 - alpha) * w, f) for w, f in hi.parts)
    parts = tuple((w, f) for w, f in parts if w > 0.0)
    bound = min((q.a * q.v1 + q.b * (q.v2 - c)) / q.a for q in seen if q.a > 0.0)
    return _Solution(value, parts, (*probe.lambdas, _lam(probe.a, probe.b)), max(0.0, bound - value), hi)


# ----------------------------------------------------------------------------------------------------------
# Solvers
# ----------------------------------------------------------------------------------------------------------


def _scale(x: Tensor) -> float:
    return max(float(torch.linalg.vector_norm(x, 1)), math.ulp(0.0))


def _solve(
    obj: Tensor,
    cons: list[Tensor],
    rhs: list[float],
    best: list[float],
    k: int,
    stats: _Stats,
    first_label: int,
) -> _Solution:
    """max ⟨obj, m⟩ s.t. ⟨cons[i], m⟩ ≥ rhs[i], Σm = k, 0 ≤ m ≤ 1 (labels first_label, first_label+1, ...);
    ``best[i]`` is the sum of the k largest entries of cons[i]."""
    label = first_label + len(cons) - 1
    if len(cons) == 1:
        return _solve_pair(obj, cons[0], rhs[0], best[0], k, stats, label)
    oracle = _NestedOracle(
        obj, cons[-1], cons[:-1], rhs[:-1], best[:-1], k, stats, first_label, _scale(obj), _scale(cons[-1])
    )
    return _search(oracle, rhs[-1], label)


def _solve_pair(
    s1: Tensor, s2: Tensor, c: float, best: float, k: int, stats: _Stats, label: int
) -> _Solution:
    root = _PairOracle(s1, s2, k, s1.numel(), _scale(s1), _scale(s2), stats)
    if root.size <= _REDUCE_ABOVE or k >= root.size:
        return _search(root, c, label)
    return _solve_pair_reduced(root, c, label, best)


def _estimate_lambda(root: _PairOracle, c: float, best: float) -> tuple[float, float]:
    """λ* of the same LP on a random subsample, and the half-width (in log λ) of the bracket to try around it.

    The sample keeps ks = k·m/n entries; its constraint level keeps the deficit below the best achievable
    value in proportion, c_s = B_s − (B − c)·ks/k (scaling c itself would let the sampling noise of the large
    sums swamp the small margins of dense masks). The bracket is wider when the sample decides few entries.
    """
    n, m = root.size, min(_ESTIMATE_SAMPLE, root.size)
    idx = _sample_index(n, m, root.s1.device).sort().values
    ks = min(m - 1, max(1, round(root.k * m / n)))
    s1, s2 = _take(root.s1, idx), _take(root.s2, idx)
    sub = _PairOracle(s1, s2, ks, m, root.scale1 * m / n, root.scale2 * m / n, _Stats())
    c_s = _topk_sum(s2, ks, largest=True) - (best - c) * ks / root.k
    lam = _search(sub, c_s, 0, clamp=True).lambdas[-1]
    return lam, max(_BRACKET_HALF_WIDTH, 3.0 / math.sqrt(min(ks, m - ks)))


def _solve_pair_reduced(root: _PairOracle, c: float, label: int, best: float) -> _Solution:
    """Large n = 2 problems: bracket the optimal λ around a sampled estimate, reduce exactly, search.

    A bracket that misses λ* costs one more full-size reduction: the second bracket extends the first by
    e^(8·half-width) on the side of the miss, the third is the whole remaining side (between known supports).
    """
    lam, half = _estimate_lambda(root, c, best)
    ratio = root.scale1 / root.scale2
    if lam == 0.0:
        lo_lam, hi_lam = 0.0, 1e-3 * ratio
    elif lam == _INF:
        lo_lam, hi_lam = 1e3 * ratio, _INF
    else:
        lo_lam, hi_lam = lam * math.exp(-half), lam * math.exp(half)
    known_lo: _Point | None = None  # a support with v2 < c
    known_hi: _Point | None = None  # a support with v2 >= c
    delta, misses = _ROUND_RTOL * root.scale2, 0
    while True:
        red = root.narrowed(_bracket_dir(lo_lam, known_lo), _bracket_dir(hi_lam, known_hi))
        A = _bracket_point(red, lo_lam, known_lo)
        if A.v2 >= c - delta:
            if lo_lam == 0.0:
                return _single(A)
            known_hi, hi_lam, misses = A, lo_lam, misses + 1
            floor = 0.0 if known_lo is None else _lam(known_lo.a, known_lo.b)
            lo_lam = max(floor, lo_lam * math.exp(-8.0 * half)) if misses == 1 else floor
            continue
        B = _bracket_point(red, hi_lam, known_hi)
        c = _feasible_rhs(B, c, _FEAS_RTOL * root.scale2, label, clamp=False)
        if B.v2 < c - delta:
            known_lo, lo_lam, misses = B, hi_lam, misses + 1
            ceiling = _INF if known_hi is None else _lam(known_hi.a, known_hi.b)
            hi_lam = min(ceiling, hi_lam * math.exp(8.0 * half)) if misses == 1 else ceiling
            continue
        return _search(red, c, label, first=A, last=B)


def _bracket_dir(lam: float, known: _Point | None) -> tuple[float, float]:
    if known is not None and _lam(known.a, known.b) == lam:
        return known.a, known.b
    return _direction(lam)


def _bracket_point(red: _PairOracle, lam: float, known: _Point | None) -> _Point:
    if known is not None and _lam(known.a, known.b) == lam:
        return known
    return red.support(*_direction(lam))


# ----------------------------------------------------------------------------------------------------------
# Rounding and reporting
# ----------------------------------------------------------------------------------------------------------


def _binary_mask(sol: _Solution, lp: CopsLP) -> tuple[Tensor, list[float]]:
    if len(lp.scores) == 2:
        v = sol.vertex
        return v.parts[0][1](), [v.v1, v.v2]
    return _round_nested(sol, lp)


def _split(sol: _Solution) -> tuple[Tensor, Tensor]:
    """(coordinates equal to 1 in every mask of m*, fractional coordinates F)."""
    masks = [f() for _, f in sol.parts]
    every, some = masks[0].clone(), masks[0].clone()
    for m in masks[1:]:
        every &= m
        some |= m
    return every, _where(some & ~every)


def _count_fractional(sol: _Solution) -> int:
    if len(sol.parts) == 1:
        return 0
    return int(_split(sol)[1].numel())


def _round_nested(sol: _Solution, lp: CopsLP) -> tuple[Tensor, list[float]]:
    """Best binary completion of m* on its fractional coordinates F (see the module docstring)."""
    every, frac = _split(sol)
    r, nf = lp.keep - int(every.sum()), frac.numel()
    if math.comb(nf, r) > _ROUND_ENUM_MAX:  # degenerate ties: choose among the masks of m* instead
        masks = [f() for _, f in sol.parts]
        values = torch.tensor(
            [[float(_select(s, m).sum()) for m in masks] for s in lp.scores], dtype=torch.float64
        )
        best = _pick(values, lp)
        return masks[best], [float(v) for v in values[:, best]]
    base = torch.tensor([float(_select(s, every).sum()) for s in lp.scores], dtype=torch.float64)
    scores_f = torch.stack([_take(s, frac).cpu() for s in lp.scores])  # n × |F|
    picks = _subsets(nf, r)
    values = base[:, None] + scores_f[:, picks].sum(-1)
    best = _pick(values, lp)
    mask = every.clone().index_fill_(0, _take(frac, picks[best].to(frac.device)), True)
    return mask, [float(v) for v in values[:, best]]


def _subsets(n: int, r: int) -> Tensor:
    """All r-subsets of range(n) as rows (C(n, r) × r); torch.combinations would build an n^r grid."""
    rows = list(itertools.combinations(range(n), max(r, 0)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), max(r, 0))


def _pick(values: Tensor, lp: CopsLP) -> int:
    """Column of ``values`` (n × candidates): feasible with the largest objective, else least violation."""
    rhs = torch.tensor(lp.rhs, dtype=torch.float64)[:, None]
    scale = torch.tensor([_scale(s) for s in lp.scores[1:]], dtype=torch.float64)[:, None]
    violation = ((rhs - values[1:]) / scale).amax(0)
    feasible = violation <= _FEAS_RTOL
    if bool(feasible.any()):
        objective = torch.where(feasible, values[0], torch.tensor(-_INF, dtype=torch.float64))
        return int(objective.argmax())
    least = violation.min()
    objective = torch.where(violation == least, values[0], torch.tensor(-_INF, dtype=torch.float64))
    return int(objective.argmax())


def _dual_gap(lp: CopsLP, sol: _Solution) -> float:
    """D(λ) − value with D(λ) = TopKSum(s1 + Σλⱼsⱼ) − Σλⱼcⱼ (an independent certificate, n > 2)."""
    if not all(math.isfinite(lam) for lam in sol.lambdas):
        return _INF
    comb = lp.scores[0].clone()
    for lam, s in zip(sol.lambdas, lp.scores[1:], strict=True):
        comb.add_(s, alpha=lam)
    dual = _topk_sum(comb, lp.keep, largest=True) - sum(
        lam * c for lam, c in zip(sol.lambdas, lp.rhs, strict=True)
    )
    return max(0.0, dual - sol.value)


def _infeasible_message(err: _Infeasible, lp: CopsLP) -> str:
    i = err.label - 2  # constraint on scores[i + 1], control controls[i]
    others = (
        (
            f" while meeting controls[0..{i - 1}] on scores[1..{i}]"
            if i > 1
            else " while meeting controls[0] on scores[1]"
        )
        if i > 0
        else ""
    )
    hint = " or use baseline='range' for a signed score" if lp.worst[i] is None else ""
    return (
        f"controls are infeasible: controls[{i}] = {lp.controls[i]} asks for <scores[{i + 1}], m> >= "
        f"{err.required:.17g} (normalized scores), but the largest value achievable with keep={lp.keep}"
        f"{others} is {err.achievable:.17g}; lower the control{hint}"
    )


# ----------------------------------------------------------------------------------------------------------
# The pruner method
# ----------------------------------------------------------------------------------------------------------

ScoreName = Literal["snip", "synflow", "grasp", "magnitude", "random"]
_DATA_SCORES = frozenset({"snip", "grasp"})
Control = Annotated[float, Field(ge=0.0, le=1.0)]


def _scorer_classes() -> dict[str, type[ScoredPruner]]:
    from cnnkit.pruning.scores import SNIP, GraSP, Magnitude, Random, SynFlow

    return {"snip": SNIP, "synflow": SynFlow, "grasp": GraSP, "magnitude": Magnitude, "random": Random}


class _Replay:
    """An iterable that reads ``source`` once: every pass yields the same batches in the same order, taking
    from ``source`` only the batches that no earlier pass has read."""

    def __init__(self, source: Iterable[Batch]) -> None:
        self._source = source
        self._stream: Iterator[Batch] | None = None
        self._read: list[Batch] = []

    def __iter__(self) -> Iterator[Batch]:
        index = 0
        while (batch := self._get(index)) is not None:
            yield batch
            index += 1

    def _get(self, index: int) -> Batch | None:
        """The ``index``-th batch of ``source`` (read now if needed), None past its end."""
        if index < len(self._read):
            return self._read[index]
        if self._stream is None:
            self._stream = iter(self._source)
        batch = next(self._stream, None)
        if batch is not None:
            self._read.append(batch)
        return batch


class COPS(ScoredPruner):
    """COPS (Wimmer, Mehnert, Condurache, IJCNN 2021): maximize the main score's value subject to keeping
    γⱼ of each auxiliary score's best value (the LP of :func:`combine`); see the module docstring.

    Args:
        scores: names of the scores to combine, main score first (``snip``, ``synflow``, ``grasp``,
            ``magnitude``, ``random``), at least 2, no repeats.
        controls: γ₂..γₙ in [0, 1], one per auxiliary score (a single value applies to all).
        baseline: the control form: ``"auto"`` (range form for signed scores), ``"zero"``, ``"range"``.
        constraint: ``"fraction_of_best"`` (cⱼ = γⱼ·Bⱼ), the only form implemented.
        normalize: ``"l1"`` (each score divided by Σ|sⱼ| before the LP) or ``"none"``.
        score_configs: extra config of a sub-score by name, e.g. ``{"synflow": {"rounds": 20}}``.
        batches, scoring_mode: given to the data-dependent sub-scores (``snip``, ``grasp``).
        sparsity, scope, include, exclude, reinit_after_mask: see :class:`~cnnkit.pruning._base.PrunerConfig`.
    """

    name = "cops"
    needs_data = True
    contract_config: ClassVar[Any] = MappingProxyType({"score_configs": {"synflow": {"rounds": 5}}})

    class Config(DataPrunerConfig):
        scores: tuple[ScoreName, ...] = Field(
            ("snip", "synflow"), min_length=2, description="scores to combine, main score first"
        )
        controls: tuple[Control, ...] = Field(
            (0.5,), min_length=1, description="γ per auxiliary score in [0, 1] (one value: all)"
        )
        baseline: Literal["auto", "zero", "range"] = Field(
            "auto", description="control form of signed scores"
        )
        constraint: Literal["fraction_of_best"] = Field(
            "fraction_of_best", description="c_j = γ_j · (best achievable value of s_j)"
        )
        normalize: Literal["l1", "none"] = Field(  # type: ignore[assignment]
            "l1", description="divide each score by its L1 norm"
        )
        score_configs: dict[str, dict[str, Any]] = Field(
            default_factory=dict, description="extra config per sub-score name"
        )

        @model_validator(mode="after")
        def _consistent(self) -> COPS.Config:
            if len(set(self.scores)) != len(self.scores):
                raise ValueError(f"scores must not repeat a name; got {list(self.scores)}")
            aux = len(self.scores) - 1
            if len(self.controls) not in (1, aux):
                raise ValueError(
                    f"controls needs one value per auxiliary score ({aux} for scores={list(self.scores)}) "
                    f"or a single value for all; got {len(self.controls)}"
                )
            unknown = set(self.score_configs) - set(self.scores)
            if unknown:
                raise ValueError(f"score_configs names {sorted(unknown)}, which are not in scores")
            return self

    config: Config

    def __init__(self, *, config: Any = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self.scorers: list[ScoredPruner] = [self._scorer(name) for name in self.config.scores]
        self._sets: list[dict[str, Tensor]] | None = None
        self._results: list[CombineResult] = []

    def _scorer(self, name: str) -> ScoredPruner:
        cfg = self.config
        values: dict[str, Any] = {
            "sparsity": cfg.sparsity,
            "scope": cfg.scope,
            "include": cfg.include,
            "exclude": cfg.exclude,
            "normalize": "none",
        }
        if name in _DATA_SCORES:
            values.update(batches=cfg.batches, scoring_mode=cfg.scoring_mode)
        values.update(cfg.score_configs.get(name, {}))
        try:
            return _scorer_classes()[name](**values)
        except ConfigError as exc:
            raise ConfigError(self._owner(), [(f"score_configs.{name}", str(exc))]) from None

    @property
    def control_values(self) -> tuple[float, ...]:
        """γ₂..γₙ, one per auxiliary score."""
        controls = self.config.controls
        return controls * (len(self.config.scores) - 1) if len(controls) == 1 else controls

    def score_sets(self, model: nn.Module, ctx: Context) -> list[dict[str, Tensor]]:
        """The sub-scores of ``model``'s maskable weights, one dict per name of ``scores`` (main first).

        ``ctx.batches`` is read once and replayed (:class:`_Replay`): every data-dependent sub-score sees the
        same batches, also when ``ctx.batches`` is a one-shot iterator such as a generator.
        """
        shared = ctx if ctx.batches is None else replace(ctx, batches=_Replay(ctx.batches))
        return [scorer.compute_scores(model, shared) for scorer in self.scorers]

    def combine_masks(self, sets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Keep-masks solving the COPS LP of the sub-scores (global: one LP; layerwise: one per tensor)."""
        cfg = self.config
        names = list(sets[0])
        density = Decimal(1) - Decimal(repr(cfg.sparsity))
        solve = partial(combine, controls=self.control_values, normalize=cfg.normalize, baseline=cfg.baseline)
        if cfg.scope == "layerwise":
            self._results = []
            out = {}
            for n in names:
                layer = [s[n] for s in sets]
                result = solve(layer, keep_count(layer[0].numel(), density))
                self._results.append(result)
                out[n] = result.mask
            return out
        flat = [torch.cat([s[n].detach().reshape(-1).double() for n in names]) for s in sets]
        result = solve(flat, keep_count(flat[0].numel(), density))
        self._results = [result]
        parts = torch.split(result.mask, [sets[0][n].numel() for n in names])
        return {n: p.view(sets[0][n].shape) for n, p in zip(names, parts, strict=True)}

    def compute_scores(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        """The main score (all sub-scores are kept for :meth:`select`)."""
        self._sets = self.score_sets(model, ctx)
        return self._sets[0]

    def select(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The COPS masks for the sub-scores computed with ``scores`` by :meth:`compute_scores`."""
        if self._sets is None or self._sets[0] is not scores:
            raise ValueError(
                f"{self._owner()}: select() needs every sub-score: call compute_scores() first, "
                "or use combine_masks(score_sets(model, ctx))"
            )
        sets, self._sets = self._sets, None
        return self.combine_masks(sets)

    def stats(self, model: nn.Module) -> dict[str, float]:
        out = super().stats(model)
        if len(self._results) == 1:
            result = self._results[0]
            for j, (lam, got, rhs) in enumerate(
                zip(result.lambdas, result.achieved, result.rhs, strict=True), start=2
            ):
                if math.isfinite(lam):
                    out[f"cops_lambda_{j}"] = float(lam)
                out[f"cops_achieved_{j}"] = float(got)
                out[f"cops_rhs_{j}"] = float(rhs)
        return out
