"""Iterative magnitude pruning (IMP): lottery tickets with rewinding (METHODS.md §14).

Papers (specified from the OpenLTH code):

* Frankle, Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", ICLR 2019,
  arXiv 1803.03635 (rewinding to the original initialisation, ``k = 0``);
* Frankle, Dziugaite, Roy, Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020,
  arXiv 1912.05671 (rewinding to an early step ``k > 0``);
* Renda, Frankle, Carbin, "Comparing Rewinding and Fine-tuning in Neural Network Pruning", ICLR 2020,
  arXiv 2003.02389.

The run is split into ``L + 1`` levels of ``E = epochs_per_round`` epochs, driven by ``after_epoch``:

1. ``apply`` attaches all-ones core ``prune`` masks (level 0 trains the dense network) and, when
   ``rewind_step = k = 0``, saves ``θ_k``; otherwise ``θ_k`` is saved after the ``k``-th optimizer step.
2. After every ``E``-th epoch, while rounds are left: prune ``⌈p·n⌉`` of the ``n`` *remaining* maskable
   weights, ``p = pruning_fraction = 0.2``, by magnitude ``|θ|`` over all maskable tensors at once
   (``scope="global"``, OpenLTH's ``sparse_global``) or ``⌈p·n_l⌉`` per tensor (``"layerwise"``); ties: the
   lower position is kept. Masks are monotone: pruned weights are never revived.
3. Rewind: every parameter and buffer (BN statistics included, as OpenLTH reloads the whole step-``k``
   state) is reset to ``θ_k``, then the masks are re-imposed -- survivors equal ``θ_k`` bit for bit.
4. The optimizer state is cleared (``reset_optimizer=True``; OpenLTH trains each level with a fresh
   optimizer); the LR schedule is the loop's.

Target and rounds. ``sparsity`` is the final target, exactly ``K = ⌈(1 − sparsity)·N⌉`` kept (per tensor
under ``"layerwise"``). Each round keeps ``max(n − ⌈p·n⌉, K)``, so the number of rounds is
``L = min{l : kept after l rounds = K}`` (:func:`planned_rounds`); the default sparsity ``1 − 0.8¹⁰`` gives
OpenLTH's 10 levels (density 10.7 %). ``epochs_per_round=None`` takes ``E = ⌊total_epochs/(L + 1)⌋`` from
the Context; a plan that leaves no epoch to retrain the last ticket, or a rewind step after the first round,
is a clear error at ``apply``.

Interspace pruning (``interspace=True``, METHODS.md §12): the masks and magnitudes act on the coefficients
``Λ``; the bases ``F`` are rewound with everything else unless ``rewind_basis=False`` (then they keep their
trained values).

Choices where the papers are silent, all config options (METHODS.md §14h):

* ``rewind_step = 2000`` (OpenLTH's ResNet-20 / VGG-16 setting; ``0`` = the original lottery ticket).
* ``rewind="weights"``; ``"none"`` keeps the trained weights (fine-tuning; Renda et al.'s learning-rate
  rewinding additionally replays the LR schedule, which is the training loop's job, not a method's).
* ``rewind_buffers=True`` (BN running statistics are rewound too), ``reset_optimizer=True``;
  ``False`` keeps the optimizer state, zeroed at the pruned entries.
* ``scope="global"``; ``exclude=()`` (OpenLTH keeps ``fc`` dense for VGG and LeNet: ``exclude=("last",)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from cnnkit.core.context import Context
from cnnkit.core.masks import enforce_masks, get_weight_mask, mask_optimizer_state, set_mask
from cnnkit.pruning._base import PrunerConfig, ScoredPruner, keep_count, top_k_mask

__all__ = ["IMP", "IMPConfig", "magnitude_round", "planned_rounds"]

_DEFAULT_SPARSITY = float(Decimal(1) - Decimal("0.8") ** 10)  # 0.8926258176: 10 rounds of 20 %


class IMPConfig(PrunerConfig):
    """Config of :class:`IMP`.

    Args:
        sparsity: the final fraction of maskable weights pruned (default ``1 − 0.8¹⁰``: 10 rounds of 20 %).
        scope: ``"global"`` magnitude ranking over all maskable tensors, or ``"layerwise"``.
        pruning_fraction: ``p``, the fraction of the *remaining* weights pruned per round, 0 < p < 1.
        epochs_per_round: epochs per level ``E``; ``None`` = ``⌊total_epochs/(rounds + 1)⌋`` from the Context.
        rewind: ``"weights"`` (rewind to ``θ_k``) or ``"none"`` (keep the trained weights).
        rewind_step: ``k``, optimizer steps before ``θ_k`` is saved (0 = the original initialisation).
        rewind_buffers: rewind the buffers (BN running statistics) too.
        rewind_basis: under ``interspace``, rewind the filter bases as well.
        reset_optimizer: clear the optimizer state after each round.
    """

    sparsity: float = Field(_DEFAULT_SPARSITY, gt=0.0, lt=1.0, description="final fraction of weights pruned")
    pruning_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="fraction of remaining weights per round"
    )
    epochs_per_round: int | None = Field(None, ge=1, description="epochs per level; None = from the Context")
    rewind: Literal["weights", "none"] = Field("weights", description="rewind to θ_k, or keep the weights")
    rewind_step: int = Field(2000, ge=0, description="optimizer steps before θ_k is saved (0 = init)")
    rewind_buffers: bool = Field(True, description="rewind buffers (BN statistics) too")
    rewind_basis: bool = Field(True, description="under interspace, rewind the filter bases too")
    reset_optimizer: bool = Field(True, description="clear the optimizer state after each round")


# --------------------------------------------------------------------------------------------- math


def _next_keep(n: int, target: int, fraction: float) -> int:
    return max(n - keep_count(n, fraction), target)


def planned_rounds(sizes: Mapping[str, int], sparsity: float, fraction: float, scope: str = "global") -> int:
    """Rounds until every pool (all tensors, or each tensor under ``"layerwise"``) holds its target
    ``⌈(1 − sparsity)·N⌉``, pruning ``⌈fraction·n⌉`` of the ``n`` remaining per round (at least one round)."""
    density = Decimal(1) - Decimal(repr(float(sparsity)))
    pools = [sum(sizes.values())] if scope == "global" else list(sizes.values())
    rounds = 1
    for size in pools:
        n, target, r = size, keep_count(size, density), 0
        while n > target:
            n, r = _next_keep(n, target, fraction), r + 1
        rounds = max(rounds, r)
    return rounds


def magnitude_round(
    keeps: Mapping[str, Tensor],
    magnitudes: Mapping[str, Tensor],
    sparsity: float,
    fraction: float,
    scope: str = "global",
) -> dict[str, Tensor]:
    """One IMP round: new keep-masks (same shapes) keeping the largest magnitudes among the kept entries.

    Keeps ``max(n − ⌈fraction·n⌉, ⌈(1 − sparsity)·N⌉)`` of the ``n`` kept entries, over all tensors
    (``"global"``) or per tensor (``"layerwise"``); ties: the lower position (mapping order, flat index).
    """
    density = Decimal(1) - Decimal(repr(float(sparsity)))
    if scope == "layerwise":
        out = {}
        for name, keep in keeps.items():
            flat = _scores(keep, magnitudes[name])
            n_keep = _next_keep(int(keep.sum()), keep_count(keep.numel(), density), fraction)
            out[name] = top_k_mask(flat, n_keep).view(keep.shape)
        return out
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layerwise'; got {scope!r}")
    flat = torch.cat([_scores(keep, magnitudes[name]) for name, keep in keeps.items()])
    total = sum(k.numel() for k in keeps.values())
    n_keep = _next_keep(sum(int(k.sum()) for k in keeps.values()), keep_count(total, density), fraction)
    parts = torch.split(top_k_mask(flat, n_keep), [k.numel() for k in keeps.values()])
    return {name: part.view(k.shape) for (name, k), part in zip(keeps.items(), parts, strict=True)}


def _scores(keep: Tensor, magnitude: Tensor) -> Tensor:
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=keep.device)
    return torch.where(keep.bool(), magnitude.double(), neg_inf).reshape(-1)


# --------------------------------------------------------------------------------------------- method


class IMP(ScoredPruner):
    """Iterative magnitude pruning with rewinding (lottery tickets); see the module docstring.

    Args:
        sparsity, scope, pruning_fraction, epochs_per_round, rewind, rewind_step, rewind_buffers,
        rewind_basis, reset_optimizer, include, exclude: see :class:`IMPConfig`.
    """

    name = "imp"
    Config: ClassVar[type[PrunerConfig]] = IMPConfig
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"sparsity": 0.2, "rewind_step": 0, "epochs_per_round": 1}
    )
    config: IMPConfig

    def __init__(self, *, config: Any = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._round = 0
        self._rounds = 0
        self._epochs_per_round = 0
        self._snapshot: dict[str, Tensor] | None = None

    # -- plan -----------------------------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        """The number of pruning rounds ``L`` (known after ``apply``)."""
        return self._rounds

    @property
    def round(self) -> int:
        """Rounds done so far."""
        return self._round

    def checkpoint_phase(self) -> int:
        """The round: the bench selects the best-validation checkpoint among the last level's epochs only."""
        return self._round

    @property
    def rewind_snapshot(self) -> dict[str, Tensor] | None:
        """``θ_k`` (state-dict names to tensors), once saved."""
        return self._snapshot

    def _plan(self, model: nn.Module, ctx: Context) -> tuple[int, int]:
        cfg = self.config
        sizes = {name: cast(Tensor, m.weight).numel() for name, m in self.targets(model)}
        rounds = planned_rounds(sizes, cfg.sparsity, cfg.pruning_fraction, cfg.scope)
        epochs = ctx.total_epochs
        per_round = cfg.epochs_per_round
        if per_round is None:
            if epochs is None:
                raise ValueError(
                    f"{self._owner()}: set epochs_per_round, or pass Context(total_epochs=...) so that "
                    f"the {rounds} rounds can be spread over the training"
                )
            per_round = epochs // (rounds + 1)
            if per_round == 0:
                raise ValueError(
                    f"{self._owner()}: sparsity={cfg.sparsity} at pruning_fraction={cfg.pruning_fraction} "
                    f"needs {rounds} rounds, i.e. {rounds + 1} levels of at least one epoch, but "
                    f"Context.total_epochs={epochs}: train longer, lower the sparsity or raise the fraction"
                )
        elif epochs is not None and rounds * per_round >= epochs:
            raise ValueError(
                f"{self._owner()}: {rounds} rounds × epochs_per_round={per_round} = {rounds * per_round} "
                f"epochs leave no epoch to retrain the last ticket (Context.total_epochs={epochs})"
            )
        self._check_rewind_step(ctx, per_round)
        return rounds, per_round

    def _check_rewind_step(self, ctx: Context, per_round: int) -> None:
        cfg = self.config
        if cfg.rewind != "weights" or ctx.total_steps is None:
            return
        first = (
            ctx.total_steps if ctx.total_epochs is None else ctx.total_steps * per_round / ctx.total_epochs
        )
        if cfg.rewind_step > first:
            raise ValueError(
                f"{self._owner()}: rewind_step={cfg.rewind_step} lies beyond the first pruning round "
                f"(after {first:g} of Context.total_steps={ctx.total_steps} steps): θ_k would not exist "
                "yet; choose rewind_step <= that, or 0 for the original initialisation"
            )

    # -- events ---------------------------------------------------------------------------------------
    def compute_scores(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        """Level 0 is dense: all-ones scores (no scoring copy)."""
        return {
            n: torch.ones_like(cast(Tensor, m.weight), dtype=torch.float32) for n, m in self.targets(model)
        }

    def select(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        rounds, per_round = self._plan(model, ctx)  # fails before the model is changed
        model = super().apply(model, ctx)
        self._rounds, self._epochs_per_round = rounds, per_round
        self._round = 0
        self._snapshot = None
        if self.config.rewind == "weights" and self.config.rewind_step == 0:
            self._snapshot = self._take_snapshot(model)
        return model

    def after_step(self, ctx: Context) -> None:
        super().after_step(ctx)
        cfg = self.config
        if cfg.rewind == "weights" and self._snapshot is None and ctx.step + 1 == cfg.rewind_step:
            self._snapshot = self._take_snapshot(self.require_trained_model(ctx))

    def after_epoch(self, ctx: Context) -> None:
        if self._round >= self._rounds or (ctx.epoch + 1) % self._epochs_per_round != 0:
            return
        self.prune_round(self.require_trained_model(ctx), ctx.optimizer)

    def prune_round(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Prune ``pruning_fraction`` of the remaining weights by magnitude, then rewind (one level)."""
        cfg = self.config
        if cfg.rewind == "weights" and self._snapshot is None:
            raise RuntimeError(
                f"{self._owner()}: round {self._round + 1} is due but θ_k (rewind_step={cfg.rewind_step}) "
                "was never saved: fewer steps were trained than rewind_step"
            )
        targets = self.targets(model)
        keeps, magnitudes = {}, {}
        for name, module in targets:
            wm = get_weight_mask(module)
            if wm is None:
                raise RuntimeError(f"{self._owner()}: {name}.weight lost its mask")
            keeps[name] = wm.keep()
            magnitudes[name] = cast(Tensor, module.weight).detach().abs()
        masks = magnitude_round(keeps, magnitudes, cfg.sparsity, cfg.pruning_fraction, cfg.scope)
        for name, module in targets:
            set_mask(module, masks[name])
        if self._snapshot is not None and cfg.rewind == "weights":
            self._rewind(model, self._snapshot)
        if optimizer is not None:
            if cfg.reset_optimizer:
                optimizer.state.clear()
            else:
                mask_optimizer_state(optimizer, model)
        self._round += 1

    # -- snapshot -------------------------------------------------------------------------------------
    def _rewound_names(self, model: nn.Module) -> list[str]:
        cfg = self.config
        names = [n for n, _ in model.named_parameters()]
        if cfg.rewind_buffers:
            names += [n for n, _ in model.named_buffers() if not n.endswith(".mask")]
        if not cfg.rewind_basis:
            from cnnkit.pruning.interspace import interspace_modules

            bases = {f"{n}.basis" for n, _ in interspace_modules(model)}
            names = [n for n in names if n not in bases]
        return names

    def _take_snapshot(self, model: nn.Module) -> dict[str, Tensor]:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        return {n: tensors[n].detach().clone() for n in self._rewound_names(model)}

    def _rewind(self, model: nn.Module, snapshot: Mapping[str, Tensor]) -> None:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        missing = sorted(set(snapshot) - set(tensors))
        if missing:
            raise RuntimeError(f"{self._owner()}: the model lost tensors {missing} since θ_k was saved")
        with torch.no_grad():
            for name, value in snapshot.items():
                tensors[name].copy_(value)
        enforce_masks(model)

    # -- reporting and checkpoints --------------------------------------------------------------------
    def stats(self, model: nn.Module) -> dict[str, float]:
        return {
            **super().stats(model),
            "round": float(self._round),
            "rounds": float(self._rounds),
            "epochs_per_round": float(self._epochs_per_round),
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "round": self._round,
            "rounds": self._rounds,
            "epochs_per_round": self._epochs_per_round,
        }
        if self._snapshot is not None:
            state["snapshot"] = dict(self._snapshot)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"round", "rounds", "epochs_per_round", "snapshot"}
        if unknown:
            raise ValueError(f"{self._owner()}: unknown state keys {sorted(unknown)}")
        self._round = int(state.get("round", 0))
        self._rounds = int(state.get("rounds", self._rounds))
        self._epochs_per_round = int(state.get("epochs_per_round", self._epochs_per_round))
        snapshot = state.get("snapshot")
        self._snapshot = None if snapshot is None else {n: t.clone() for n, t in snapshot.items()}
