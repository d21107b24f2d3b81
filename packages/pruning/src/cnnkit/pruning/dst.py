"""Dynamic sparse training: SET and RigL (METHODS.md §13).

Papers (specified from their authors' official code):

* SET -- Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta, "Scalable training of artificial neural networks
  with adaptive sparse connectivity inspired by network science", Nature Communications 9:2383, 2018,
  arXiv 1707.04780.
* RigL -- Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
  arXiv 1911.11134 (google-research/rigl).

Training is sparse from the first step, with a constant number of non-zero weights in every maskable layer
(conv and linear ``weight``, §1.8). At ``apply`` each layer gets a random mask with exactly ``n_l`` kept
entries; the per-layer counts come from ``distribution`` (below) and sum to exactly
``K = ⌈(1 − sparsity)·N⌉`` under ERK / ER. The masks are core's ``prune`` masks (``w = m⊙θ``). Periodically,
in every layer, a topology update with drop fraction ``f``:

* drop ``d = ⌊f·n_l⌋`` active weights with the smallest ``|θ|`` (ties: the lower flat index is dropped first);
* grow ``d`` inactive weights -- RigL: with the largest dense gradient ``|∂L/∂w|`` of the current batch;
  SET: uniformly at random (drawn from a generator seeded by ``ctx.seed``); ties: the lower index grows;
* grown weights start at exactly 0 and the optimizer state (momentum buffer, Adam moments: every state
  tensor shaped like the weight) of every changed entry (dropped or grown) is zeroed
  (``reset_momentum=True``); the per-layer count ``n_l`` is exactly unchanged.

Schedule [paper: code]. RigL updates after every ``delta_t = ΔT = 100`` optimizer steps while
``s < T_end = t_end·total_steps`` (``s`` = steps taken, this one included; ``t_end = 0.75`` [choice, §13c];
``total_steps`` from the Context -- a clear error names ``Context.total_steps`` when it is missing), with
the cosine-decayed drop fraction ``f(s) = (α/2)(1 + cos(π·s/T_end))``, ``α = drop_fraction = 0.3``
(``tf.compat.v1.train.cosine_decay`` as in the official code). SET updates after every epoch but the last
(``schedule="per_epoch"``, constant ``f = ζ = 0.3``, as the official SET code, which does not evolve the
topology after the final epoch); ``schedule="rigl"`` gives SET RigL's step schedule (METHODS.md §13c).

Dense gradient (RigL). Core's mask zeroes the gradient of ``θ`` at masked entries, so the dense gradient is
captured at the *effective* weight: on update steps only, ``before_step`` registers a forward hook on each
layer's mask parametrization whose output (``m⊙θ``) gets a tensor hook storing ``∂L/∂(m⊙θ)`` (summed if the
weight is built more than once in the step); the hooks are removed in ``after_step``. The other steps cost
nothing extra. Under interspace pruning (``interspace=True``, METHODS.md §12) the mask sits on the
coefficients ``Λ``, so RigL drops the smallest ``|Λ|`` and grows the largest ``|∂L/∂Λ|`` (§12a-b table).
Under ``torch.distributed`` (DDP) the captured gradients are averaged over the ranks before growth, and SET's
generator is seeded alike on every rank, so all ranks choose the same topology.

Layer densities (``distribution``) [paper: code, ``sparse_utils.get_sparsities_erdos_renyi``]:

* ``"erk"``: density ``∝ ε·(Σ_d s_d / Π_d s_d)^erk_power`` over the weight's shape ``s`` (conv:
  ``(n_out + n_in + k_h + k_w)/(n_out·n_in·k_h·k_w)``), with ``ε`` solving ``Σ_l n_l = K``; a layer whose
  density would exceed 1 is made dense (the layers with the largest raw density first, repeated) and the
  others renormalised. ``"er"``: the same with ``(n_in + n_out)/(n_in·n_out)`` (SET's Erdős–Rényi).
* ``"uniform"``: ``⌈(1 − sparsity)·N_l⌉`` in every layer; the first maskable layer is dense
  (``dense_first_layer=True``, as in the RigL code).

Choices where the code is silent or cnnkit differs, all config options (METHODS.md §13h):

* Integer counts: the official code floors each layer's zero count; here the real-valued ERK counts are
  rounded by largest remainder (ties: model order), so the total is exactly ``K``.
* ``regrow_dropped=False``: growth candidates are the weights inactive *before* the update, so dropped and
  grown sets are disjoint (METHODS.md §13i) and ``d`` is capped at the number of inactive weights; ``True``
  follows the official RigL code (candidates: every weight not kept after the drop; a weight dropped and
  regrown in the same update keeps its value and state).
* Update order: the lifecycle's optimizer step is taken on update steps too (the official RigL code applies
  the mask update *instead of* the gradient step there); drop scores are the weights after that step,
  growth uses that step's gradient. The first update comes after ``ΔT`` steps (the official code also
  updates at step 0, before any training).
* Ties: broken by position (the official code adds Gaussian noise of std 10⁻⁵ to the drop scores).
* The optimizer state is zeroed at dropped entries as well as at grown ones (the official code resets grown
  entries only); masked entries then hold no stale momentum (§1.8).
* ``scope`` is always ``"layerwise"`` (the per-layer counts are what DST keeps constant); the per-layer
  densities come from ``distribution`` (default ``"erk"``, for SET as well).
* SET: the output layer stays dense (``exclude=("last",)``, as in the SET code); RigL: ``exclude=()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import partial
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cnnkit.core.context import Context
from cnnkit.core.masks import get_weight_mask, set_mask
from cnnkit.pruning._base import PrunerConfig, ScoredPruner, keep_count, top_k_mask

__all__ = [
    "SET",
    "DSTConfig",
    "DynamicSparseTraining",
    "RigL",
    "RigLConfig",
    "SETConfig",
    "cosine_drop_fraction",
    "grow_and_drop",
    "layer_keep_counts",
]

Distribution = Literal["uniform", "erk", "er"]

_INIT_OFFSET = 31  # ctx.generator offset of the initial random masks
_GROW_OFFSET = 37  # ctx.generator offset of SET's random growth


class DSTConfig(PrunerConfig):
    """Config shared by SET and RigL.

    Args:
        sparsity: fraction of the maskable weights inactive at every step (0 < q < 1).
        scope: always ``"layerwise"``: per-layer counts are constant; see ``distribution``.
        distribution: the per-layer densities: ``"erk"``, ``"er"`` or ``"uniform"``.
        erk_power: exponent of the ERK / ER raw densities (1.0 in the paper).
        dense_first_layer: under ``"uniform"``, keep the first maskable layer dense.
        drop_fraction: ``α`` (RigL) / ``ζ`` (SET), the fraction of active weights replaced, 0 < α < 1.
        decay: ``"cosine"`` ``f(s) = (α/2)(1 + cos(π·s/T_end))`` or ``"constant"`` ``f = α``.
        delta_t: optimizer steps between updates (step schedule), ``ΔT ≥ 1``.
        t_end: fraction of ``total_steps`` after which the topology is frozen (step schedule), in (0, 1].
        reset_momentum: zero the optimizer state of dropped and grown weights.
        regrow_dropped: allow weights dropped in an update to be regrown in the same update (official code).
    """

    scope: Literal["layerwise"] = Field(
        "layerwise", description="always 'layerwise' for DST: the per-layer counts are kept constant"
    )
    distribution: Distribution = Field("erk", description="per-layer densities: 'erk', 'er' or 'uniform'")
    erk_power: float = Field(1.0, ge=0.0, description="exponent of the ERK / ER raw layer densities")
    dense_first_layer: bool = Field(True, description="under 'uniform', keep the first maskable layer dense")
    drop_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="fraction of active weights replaced")
    decay: Literal["cosine", "constant"] = Field("cosine", description="decay of the drop fraction")
    delta_t: int = Field(100, ge=1, description="optimizer steps between topology updates")
    t_end: float = Field(0.75, gt=0.0, le=1.0, description="fraction of training with topology updates")
    reset_momentum: bool = Field(True, description="zero the optimizer state of dropped and grown weights")
    regrow_dropped: bool = Field(False, description="allow regrowing the weights dropped in the same update")


class RigLConfig(DSTConfig):
    """RigL's config: see :class:`DSTConfig` (paper defaults: ERK, α = 0.3 cosine, ΔT = 100, t_end = 0.75)."""


class SETConfig(DSTConfig):
    """SET's config: see :class:`DSTConfig`, plus

    Args:
        schedule: ``"per_epoch"`` (after every epoch but the last) or ``"rigl"`` (every ``delta_t`` steps
            until ``t_end``).
    """

    schedule: Literal["per_epoch", "rigl"] = Field("per_epoch", description="when the topology is updated")
    decay: Literal["cosine", "constant"] = Field("constant", description="decay of the drop fraction")
    exclude: tuple[str, ...] = Field(("last",), description="module names kept dense; 'first'/'last' allowed")


# --------------------------------------------------------------------------------------------- math


def cosine_drop_fraction(alpha: float, step: float, t_end: float) -> float:
    """``(α/2)(1 + cos(π·min(s, T_end)/T_end))`` (``tf.compat.v1.train.cosine_decay``)."""
    return 0.5 * alpha * (1.0 + math.cos(math.pi * min(step, t_end) / t_end))


def _raw_density(shape: Sequence[int], distribution: str, power: float) -> float:
    dims = [int(s) for s in shape]
    if distribution == "er" and len(dims) >= 2:
        dims = dims[:2]
    return float((sum(dims) / math.prod(dims)) ** power)


def layer_keep_counts(
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    distribution: str = "erk",
    *,
    power: float = 1.0,
    dense_first_layer: bool = True,
) -> dict[str, int]:
    """Kept entries per layer (``shapes`` in model order) for a target ``sparsity``.

    ``"uniform"``: ``⌈(1 − q)·N_l⌉`` each (the first layer dense if ``dense_first_layer``). ``"erk"`` /
    ``"er"``: ``ε·raw_l·N_l`` with ``Σ = K = ⌈(1 − q)·N⌉`` exactly (largest-remainder rounding); layers with
    ``ε·raw_l > 1`` are made dense, the largest raw density first, until none is left (official RigL code).
    """
    numel = {n: math.prod(int(s) for s in shape) for n, shape in shapes.items()}
    if not numel:
        raise ValueError("no layers to distribute the density over")
    density = 1.0 - sparsity
    if distribution == "uniform":
        counts = {n: keep_count(k, _exact_density(sparsity)) for n, k in numel.items()}
        if dense_first_layer:
            first = next(iter(numel))
            counts[first] = numel[first]
        return counts
    if distribution not in ("erk", "er"):
        raise ValueError(f"distribution must be 'uniform', 'erk' or 'er'; got {distribution!r}")
    target = keep_count(sum(numel.values()), _exact_density(sparsity))
    raw = {n: _raw_density(shapes[n], distribution, power) for n in numel}
    dense: set[str] = set()
    while True:
        sparse = [n for n in numel if n not in dense]
        budget = target - sum(numel[n] for n in dense)
        if not sparse or budget <= 0:
            raise ValueError(
                f"distribution={distribution!r} cannot reach density {density:.6g}: the layers made dense "
                f"({sorted(dense)}) already hold {target - budget} >= {target} weights; lower the sparsity "
                "or use distribution='uniform'"
            )
        eps = budget / sum(raw[n] * numel[n] for n in sparse)
        top = max(raw[n] for n in sparse)
        if eps * top <= 1.0:
            break
        dense |= {n for n in sparse if raw[n] == top}
    ideal = {n: eps * raw[n] * numel[n] for n in sparse}
    counts = {n: (numel[n] if n in dense else min(math.floor(ideal[n]), numel[n])) for n in numel}
    left = target - sum(counts.values())
    order = sorted(sparse, key=lambda n: ideal[n] - math.floor(ideal[n]), reverse=True)
    while left > 0:
        grew = False
        for n in order:
            if left > 0 and counts[n] < numel[n]:
                counts[n] += 1
                left -= 1
                grew = True
        if not grew:
            break
    return counts


def _exact_density(sparsity: float) -> Decimal:
    return Decimal(1) - Decimal(repr(float(sparsity)))


def grow_and_drop(
    keep: Tensor,
    magnitude: Tensor,
    grow_score: Tensor,
    fraction: float,
    *,
    regrow_dropped: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer's topology update; returns ``(new_keep, dropped, grown)`` (flat boolean tensors).

    Drops ``d = ⌊fraction·n_active⌋`` active entries with the smallest ``magnitude`` and grows ``d``
    candidates with the largest ``grow_score`` (ties: lower index first in both). Candidates: the entries
    inactive before the update (``d`` capped at their number), or, with ``regrow_dropped``, every entry not
    kept after the drop. ``grown`` holds only entries that were inactive before the update.
    """
    keep = keep.reshape(-1).bool()
    n_active = int(keep.sum())
    d = math.floor(fraction * n_active)
    if not regrow_dropped:
        d = min(d, keep.numel() - n_active)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=keep.device)
    drop_score = torch.where(keep, -magnitude.reshape(-1).double(), neg_inf)
    dropped = top_k_mask(drop_score, d)
    survivors = keep & ~dropped
    candidates = ~survivors if regrow_dropped else ~keep
    grow = top_k_mask(torch.where(candidates, grow_score.reshape(-1).double(), neg_inf), d)
    new_keep = survivors | grow
    return new_keep, dropped & ~new_keep, grow & ~keep


# --------------------------------------------------------------------------------------------- methods


class DynamicSparseTraining(ScoredPruner):
    """Shared machinery of SET and RigL (see the module docstring); subclasses set :meth:`grow_scores`.

    Args:
        sparsity, distribution, drop_fraction, decay, delta_t, t_end, ...: see :class:`DSTConfig`.
    """

    Config: ClassVar[type[PrunerConfig]] = DSTConfig
    needs_gradient: ClassVar[bool] = False
    config: DSTConfig

    def __init__(self, *, config: Any = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._generator: torch.Generator | None = None
        self._total_steps: int | None = None
        self._total_epochs: int | None = None
        self._updates = 0
        self._last_fraction = 0.0
        self._last_changed = 0
        self._grads: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    # -- schedule -------------------------------------------------------------------------------------
    @property
    def step_schedule(self) -> bool:
        """Whether updates follow the step schedule (every ``delta_t`` steps until ``t_end``)."""
        return getattr(self.config, "schedule", "rigl") == "rigl"

    def _total(self, ctx: Context | None) -> int:
        total = ctx.total_steps if ctx is not None and ctx.total_steps is not None else self._total_steps
        if total is None:
            raise ValueError(
                f"{self._owner()}: Context.total_steps is None, but the update schedule "
                f"(t_end={self.config.t_end} of training, decay={self.config.decay!r}) needs the planned "
                "number of optimizer steps: pass Context(total_steps=...)"
            )
        return total

    def t_end_step(self, ctx: Context | None = None) -> float:
        """``T_end = t_end·total_steps``."""
        return self.config.t_end * self._total(ctx)

    def drop_fraction_at(self, step: int, ctx: Context | None = None) -> float:
        """The drop fraction ``f(s)`` after ``s`` optimizer steps."""
        cfg = self.config
        if cfg.decay == "constant":
            return cfg.drop_fraction
        return cosine_drop_fraction(cfg.drop_fraction, step, self.t_end_step(ctx))

    def is_update_step(self, step: int, ctx: Context | None = None) -> bool:
        """Whether the step schedule updates after ``step`` steps (``s % ΔT == 0``, ``s < T_end``)."""
        return self.step_schedule and step % self.config.delta_t == 0 and step < self.t_end_step(ctx)

    # -- events ---------------------------------------------------------------------------------------
    def compute_scores(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        """Uniform random scores (the initial random masks), drawn on the CPU from ``ctx.generator``."""
        gen = ctx.generator(_INIT_OFFSET)
        out = {}
        for name, module in self.targets(model):
            weight = cast(Tensor, module.weight)
            out[name] = torch.rand(weight.shape, generator=gen, dtype=torch.float64).to(weight.device)
        return out

    def select(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        counts = layer_keep_counts(
            {n: tuple(s.shape) for n, s in scores.items()},
            cfg.sparsity,
            cfg.distribution,
            power=cfg.erk_power,
            dense_first_layer=cfg.dense_first_layer,
        )
        return {n: top_k_mask(s, counts[n]).view(s.shape) for n, s in scores.items()}

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.step_schedule or self.config.decay == "cosine":
            total = self._total(ctx)
            if self.step_schedule and self.config.delta_t >= self.config.t_end * total:
                warnings.warn(
                    f"{self._owner()}: delta_t={self.config.delta_t} >= t_end·total_steps = "
                    f"{self.config.t_end * total:g}: the topology will never be updated",
                    stacklevel=2,
                )
        model = super().apply(model, ctx)
        self._total_steps, self._total_epochs = ctx.total_steps, ctx.total_epochs
        self._generator = ctx.generator(_GROW_OFFSET)
        return model

    def before_step(self, ctx: Context) -> None:
        if self.needs_gradient and self.is_update_step(ctx.step + 1, ctx):
            self._arm(self.require_trained_model(ctx))

    def after_step(self, ctx: Context) -> None:
        super().after_step(ctx)
        step = ctx.step + 1
        if self.is_update_step(step, ctx):
            try:
                self.update(self.require_trained_model(ctx), self.drop_fraction_at(step, ctx), ctx.optimizer)
            finally:
                self._disarm()

    def after_epoch(self, ctx: Context) -> None:
        if self.step_schedule:
            return
        total_epochs = ctx.total_epochs if ctx.total_epochs is not None else self._total_epochs
        if total_epochs is not None and ctx.epoch + 1 >= total_epochs:
            return  # no update after the final epoch (official SET code)
        self.update(self.require_trained_model(ctx), self.drop_fraction_at(ctx.step, ctx), ctx.optimizer)

    # -- the update -----------------------------------------------------------------------------------
    def grow_scores(self, name: str, module: nn.Module, keep: Tensor) -> Tensor:
        """Growth scores of one layer (higher = grow), shaped like its weight."""
        raise NotImplementedError

    def update(self, model: nn.Module, fraction: float, optimizer: torch.optim.Optimizer | None) -> int:
        """Drop and grow ``fraction`` of the active weights in every layer; returns the changed entries."""
        changed_total = 0
        for name, module in self.targets(model):
            wm = get_weight_mask(module)
            if wm is None:
                raise RuntimeError(f"{self._owner()}: {name}.weight lost its mask")
            original = cast(Tensor, cast(Any, module).parametrizations.weight.original)
            keep = wm.keep()
            new_keep, dropped, grown = grow_and_drop(
                keep,
                original.detach().abs(),
                self.grow_scores(name, module, keep),
                fraction,
                regrow_dropped=self.config.regrow_dropped,
            )
            set_mask(module, new_keep.view(keep.shape))
            grown = grown.view(keep.shape)
            with torch.no_grad():
                original.masked_fill_(grown, 0)
            if self.config.reset_momentum and optimizer is not None:
                _zero_state(optimizer, original, grown | dropped.view(keep.shape))
            changed_total += int(grown.sum())
        self._updates += 1
        self._last_fraction = fraction
        self._last_changed = changed_total
        return changed_total

    # -- dense gradients (RigL) -----------------------------------------------------------------------
    def _arm(self, model: nn.Module) -> None:
        self._disarm()
        for name, module in self.targets(model):
            wm = get_weight_mask(module)
            if wm is not None:
                self._handles.append(wm.register_forward_hook(partial(self._capture, name)))

    def _capture(self, name: str, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(partial(self._store, name))  # type: ignore[no-untyped-call]

    def _store(self, name: str, grad: Tensor) -> None:
        previous = self._grads.get(name)
        self._grads[name] = grad.detach().clone() if previous is None else previous + grad.detach()

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._grads = {}

    # -- helpers --------------------------------------------------------------------------------------
    def stats(self, model: nn.Module) -> dict[str, float]:
        return {
            **super().stats(model),
            "updates": float(self._updates),
            "last_drop_fraction": float(self._last_fraction),
            "last_regrown": float(self._last_changed),
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "updates": self._updates,
            "last_drop_fraction": self._last_fraction,
            "last_regrown": self._last_changed,
        }
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {"updates", "last_drop_fraction", "last_regrown", "generator"}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"{self._owner()}: unknown state keys {sorted(unknown)}")
        self._updates = int(state.get("updates", 0))
        self._last_fraction = float(state.get("last_drop_fraction", 0.0))
        self._last_changed = int(state.get("last_regrown", 0))
        if "generator" in state:
            if self._generator is None:
                self._generator = torch.Generator()
            self._generator.set_state(state["generator"])


def _zero_state(optimizer: torch.optim.Optimizer, param: Tensor, where: Tensor) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(where, 0)


def _average_across_ranks(grads: Mapping[str, Tensor]) -> None:
    """Under ``torch.distributed`` (DDP): the mean of each captured dense gradient over the ranks, in place
    (the hooks see the local gradient; DDP averages only the parameters' ``.grad``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for name in sorted(grads):
        dist.all_reduce(grads[name])
        grads[name].div_(dist.get_world_size())


class RigL(DynamicSparseTraining):
    """RigL (Evci et al., ICML 2020): drop the smallest ``|θ|``, grow the largest dense ``|∂L/∂w|``.

    Args:
        sparsity, distribution (``"erk"``), drop_fraction (0.3), decay (``"cosine"``), delta_t (100),
        t_end (0.75), reset_momentum, regrow_dropped, include, exclude: see :class:`DSTConfig`.
    """

    name = "rigl"
    Config = RigLConfig
    needs_gradient = True
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({"delta_t": 1})

    def update(self, model: nn.Module, fraction: float, optimizer: torch.optim.Optimizer | None) -> int:
        _average_across_ranks(self._grads)
        return super().update(model, fraction, optimizer)

    def grow_scores(self, name: str, module: nn.Module, keep: Tensor) -> Tensor:
        grad = self._grads.get(name)
        if grad is None:
            raise RuntimeError(
                f"{self._owner()}: no dense gradient of {name}.weight was captured on this update step; "
                "RigL needs a forward and backward pass between before_step and after_step"
            )
        return grad.abs()


class SET(DynamicSparseTraining):
    """SET (Mocanu et al., Nature Communications 2018): drop the smallest ``|θ|``, regrow at random.

    Args:
        sparsity, distribution (``"erk"``), drop_fraction (ζ = 0.3), decay (``"constant"``), schedule
        (``"per_epoch"``), delta_t, t_end, reset_momentum, regrow_dropped, include, exclude (``("last",)``):
        see :class:`SETConfig`.
    """

    name = "set"
    Config = SETConfig
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def grow_scores(self, name: str, module: nn.Module, keep: Tensor) -> Tensor:
        if self._generator is None:
            raise RuntimeError(f"{self._owner()}: call apply(model, ctx) before training")
        scores = torch.rand(keep.shape, generator=self._generator, dtype=torch.float64)
        return scores.to(keep.device)
