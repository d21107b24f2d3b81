"""Shared machinery of the one-shot pruners and freezers: config, exact top-k selection, the ScoredPruner.

METHODS.md §1.8 (masks, sparsity accounting) and §9 (pruning at initialization). Every method of this
package that selects weights once, before training, is a :class:`ScoredPruner`: a subclass supplies one
function, :meth:`ScoredPruner.score` (higher = keep), and the base class does the rest:

1. ``targets``: the maskable tensors -- the ``weight`` of every conv (any ``_ConvNd``) and ``nn.Linear``
   module by default (``include``), minus ``exclude`` (exact module names, or ``"first"`` / ``"last"``);
   biases, BN and everything else stay dense [paper: code (SynFlow's defaults)]. A maskable weight that is one
   ``Parameter`` shared by several modules (tied weights) is refused at ``apply`` with
   :class:`~cnnkit.core.method.MethodNotApplicableError` naming them: it would be masked once per module.
2. ``compute_scores``: :meth:`score` runs on a private *scoring copy* of the model (``copy.deepcopy`` with
   every parametrization baked into a plain parameter), inside a forked RNG. The model itself -- values,
   buffers (BN running statistics), train/eval flags, ``requires_grad``, ``.grad`` and the global RNG -- is
   never touched, whatever the score does (SynFlow's ``abs`` and float64, GraSP's re-initialisation, BN
   updates in train mode). The price is one extra copy of the model in memory while scoring. Scores are
   checked (names, shapes, no NaN) and divided by ``|Σ s|`` over all maskable tensors (``normalize="sum"``,
   METHODS.md §9h: ranking-invariant; it matters only when scores are combined, as in COPS).
3. :func:`select_masks`: keep exactly ``k = ⌈(1 − q)·N⌉`` entries (``q`` = ``sparsity``) by top-k of the
   flattened scores, over all maskable tensors at once (``scope="global"``, the default) or per tensor
   (``"layerwise"``: ``⌈(1 − q)·N_l⌉`` in each). ``k`` is computed in exact decimal arithmetic on ``q``'s
   shortest repr, so ``q = 0.7`` of ``N = 10`` keeps 3 (float arithmetic gives ``⌈3.0000000000000004⌉ = 4``).
   Ties are broken deterministically by position (model order, then flat index: the earlier entry is kept)
   -- the SynFlow code's ``kthvalue`` + ``score <= threshold`` can prune more than asked on ties [choice].
4. the masks are attached with core's ``prune`` parametrization (``w = m⊙θ``,
   :func:`cnnkit.core.masks.apply_mask`); a freezer overrides :meth:`ScoredPruner.attach_mask`.

Interspace Pruning (``interspace=True``, METHODS.md §12, :mod:`cnnkit.pruning.interspace`): every conv with
a K×K kernel, K > 1, is converted in place (same module objects) so that its ``weight`` holds the
coefficients ``Λ`` of a trainable per-layer basis ``F``; steps 1–4 act on ``Λ`` unchanged (1×1 convs and
linears stay spatial, in the same pool). Step 2 scores a converted copy, and the model is converted only
after scoring has succeeded (:meth:`ScoredPruner.prepare`), so a failed ``apply`` leaves the model as it
was (one more model copy in memory while scoring). ``param_groups`` gives the bases their own group
(``basis_weight_decay = 0``); ``export`` bakes the masks, then turns the convs back into plain dense
``nn.Conv2d``.

Events: ``after_step`` calls :func:`~cnnkit.core.masks.enforce_masks` (the METHODS.md §1.8 safety net against
coupled weight decay); ``export`` = :func:`~cnnkit.core.masks.bake_masks`; ``stats`` reports density and
sparsity over the maskable weights, the kept count, the density over all parameters, the effective MACs
ratio ``Σ_l MAC_l·κ_l / Σ_l MAC_l`` (one forward of one example input), the survey's counts
(:func:`drt_stats`: trained / dense / stored parameters) and, under IP, the basis entries and the sparsity
with them counted (``basis_params``, ``sparsity_with_basis``).

Choices [METHODS.md §9e, §9h], all config options: masks are computed on ``θ₀`` and training starts from the
same ``θ₀`` (``reinit_after_mask=False``; ``True`` re-initialises the model with ``reset_parameters`` under
``ctx.seed`` after scoring, like the official SNIP code, which trains a freshly initialised network -- it
does not mask biases as that code does).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Batch, Context
from cnnkit.core.cost import count_flops, count_params
from cnnkit.core.masks import (
    apply_mask,
    bake_masks,
    enforce_masks,
    get_weight_mask,
    is_masked,
    maskable_modules,
    masked_modules,
    remove_parametrizations,
)
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.pruning.interspace import (
    basis_params,
    from_interspace,
    idle_basis_params,
    interspace_param_groups,
    interspace_stats,
    prepare_interspace,
)

__all__ = [
    "DataPrunerConfig",
    "PrunerConfig",
    "ScoredPruner",
    "drt_stats",
    "keep_count",
    "normalize_scores",
    "scoring_batches",
    "scoring_copy",
    "select_masks",
    "to_model",
    "top_k_mask",
]

Scope = Literal["global", "layerwise"]
Kind = Literal["conv", "linear"]

_RESEED_OFFSET = 7_919  # ctx.generator / seed offset of reinit_after_mask


class PrunerConfig(MethodConfig):
    """Config shared by every pruner and freezer of cnnkit-pruning.

    Args:
        sparsity: fraction ``q`` of the maskable weights *not* kept (0 < q < 1); for a freezer, not trained
            (its freezing rate). Kept: ``k = ⌈(1 − q)·N⌉``.
        scope: ``"global"`` top-k over all maskable tensors, or ``"layerwise"`` top-k in each.
        include: which module kinds are maskable (their ``weight``): ``"conv"`` and/or ``"linear"``.
        exclude: module names to keep dense; ``"first"`` / ``"last"`` name the first / last maskable module.
        normalize: ``"sum"`` divides the scores by ``|Σ s|`` (ranking-invariant); ``"none"`` leaves them.
        reinit_after_mask: re-initialise the model (``reset_parameters``, seeded by ``ctx.seed``) after
            scoring.
        interspace: Interspace Pruning (METHODS.md §12, :mod:`cnnkit.pruning.interspace`): every conv with
            a K×K kernel, K > 1, holds coefficients ``Λ`` of a trainable per-layer basis ``F``; the score
            and the mask act on ``Λ``; 1×1 convs and linears stay spatial in the same pool.
        basis_init: ``F₀``: ``"dct"`` (orthonormal 2-D DCT-II) or ``"identity"`` (standard pruning).
        train_basis: whether ``F`` is trained jointly with ``Λ``.
        basis_weight_decay: weight decay of the bases' optimizer group (``Λ`` keeps the run's).
        basis_scope: ``"layer"``: one basis per conv layer (the only scope).
        pointwise_layers: ``"sp"``: 1×1 convs and linear layers stay in the spatial representation.
    """

    sparsity: float = Field(0.9, gt=0.0, lt=1.0, description="fraction of maskable weights not kept")
    scope: Scope = Field("global", description="top-k over all maskable tensors, or per tensor")
    include: tuple[Kind, ...] = Field(("conv", "linear"), min_length=1, description="maskable module kinds")
    exclude: tuple[str, ...] = Field((), description="module names kept dense; 'first' / 'last' allowed")
    normalize: Literal["sum", "none"] = Field("sum", description="divide scores by |sum| (ranking-invariant)")
    reinit_after_mask: bool = Field(False, description="re-initialise the model after scoring")
    interspace: bool = Field(False, description="Interspace Pruning: mask the coefficients of a filter basis")
    basis_init: Literal["dct", "identity"] = Field("dct", description="IP basis F0 (identity = SP)")
    train_basis: bool = Field(True, description="IP: train the basis F jointly with the coefficients")
    basis_weight_decay: float = Field(0.0, ge=0.0, description="IP: weight decay of the bases")
    basis_scope: Literal["layer"] = Field("layer", description="IP: one basis per conv layer")
    pointwise_layers: Literal["sp"] = Field("sp", description="IP: 1x1 convs / linears stay spatial")


class DataPrunerConfig(PrunerConfig):
    """Config of a data-dependent score (SNIP, GraSP, FreezeNet, ...).

    Args:
        batches: how many batches of ``ctx.batches`` the score uses (gradients are summed over them).
        scoring_mode: the train/eval mode of the scoring forward passes (BN batch statistics, dropout).
    """

    batches: int = Field(1, ge=1, description="number of scoring batches taken from ctx.batches")
    scoring_mode: Literal["train", "eval"] = Field("train", description="model mode while scoring")


# --------------------------------------------------------------------------------------------- selection


def _exact(value: float | Decimal) -> Decimal:
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(float(value)))


def keep_count(n: int, density: float | Decimal) -> int:
    """``⌈density·n⌉`` in exact decimal arithmetic on ``density``'s shortest repr, clamped to ``[0, n]``.

    A float density computed as ``1 - q`` carries float error (``1 - 0.97 = 0.030000000000000027``, which
    keeps 31 of 1000): pass ``Decimal(1) - Decimal(repr(q))``, or give :func:`select_masks` the sparsity.
    """
    return min(max(math.ceil(Decimal(n) * _exact(density)), 0), n)


def _density(sparsity: float) -> Decimal:
    return Decimal(1) - _exact(sparsity)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest entries of the flat ``scores``; ties kept in index order.

    Exactly ``k`` entries are kept (``0 ≤ k ≤ numel``); among entries equal to the ``k``-th largest value,
    those with the lowest index win.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep k={k} of {n} entries")
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    kth = torch.topk(flat, k, largest=True, sorted=False).values.min()
    keep = flat > kth
    need = k - int(keep.sum())
    ties = torch.nonzero(flat == kth).reshape(-1)[:need]
    keep[ties] = True
    return keep


def _check_scores(scores: Mapping[str, Tensor]) -> None:
    if not scores:
        raise ValueError("no scores to select from")
    for name, s in scores.items():
        if not isinstance(s, Tensor):
            raise TypeError(f"score of {name!r} must be a tensor, got {type(s).__name__}")
        if torch.isnan(s).any():
            raise ValueError(f"score of {name!r} contains NaN")


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float | None = None,
    scope: Scope = "global",
    *,
    density: float | Decimal | None = None,
) -> dict[str, Tensor]:
    """Boolean keep-masks (True = kept) with exactly ``⌈(1 − sparsity)·N⌉`` entries kept.

    Args:
        scores: per tensor name, higher = keep (any shapes; the masks have the same shapes).
        sparsity: the fraction not kept, ``0 < sparsity < 1`` (or give ``density`` instead).
        scope: ``"global"`` (one top-k over all tensors concatenated in mapping order) or ``"layerwise"``
            (``⌈κ·N_l⌉`` per tensor).
        density: the kept fraction ``κ`` (keyword-only alternative to ``sparsity``).

    Ties are broken by position (mapping order, then flat index; the earlier entry is kept).
    """
    kappa = _resolve_density(sparsity, density)
    _check_scores(scores)
    if scope == "layerwise":
        return {n: top_k_mask(s, keep_count(s.numel(), kappa)).view(s.shape) for n, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layerwise'; got {scope!r}")
    tensors = list(scores.values())
    dtype = _common_dtype(tensors)
    device = tensors[0].device
    flat = torch.cat([s.detach().reshape(-1).to(device=device, dtype=dtype) for s in tensors])
    keep = top_k_mask(flat, keep_count(flat.numel(), kappa))
    parts = torch.split(keep, [s.numel() for s in tensors])
    return {n: part.view(s.shape).to(s.device) for (n, s), part in zip(scores.items(), parts, strict=True)}


def _resolve_density(sparsity: float | None, density: float | Decimal | None) -> Decimal:
    if (sparsity is None) == (density is None):
        raise ValueError("give exactly one of sparsity and density")
    kappa = _density(sparsity) if sparsity is not None else _exact(density)  # type: ignore[arg-type]
    if not Decimal(0) <= kappa <= Decimal(1):
        raise ValueError(f"density must lie in [0, 1]; got {kappa} (sparsity={sparsity})")
    return kappa


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.float64


def normalize_scores(scores: Mapping[str, Tensor], how: str = "sum") -> dict[str, Tensor]:
    """``s / |Σ s|`` over all tensors (``"sum"``; skipped when the sum is 0) or unchanged (``"none"``)."""
    if how == "none":
        return dict(scores)
    if how != "sum":
        raise ValueError(f"normalize must be 'sum' or 'none'; got {how!r}")
    total = sum(float(s.double().sum()) for s in scores.values())
    if total == 0.0 or not math.isfinite(total):
        return dict(scores)
    return {n: s / abs(total) for n, s in scores.items()}


# --------------------------------------------------------------------------------------------- scoring


def scoring_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization baked into a plain parameter, no ``.grad``, and
    ``requires_grad=False`` everywhere (scores switch it on for the tensors they differentiate)."""
    work = copy.deepcopy(model)
    for module in list(work.modules()):
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations)):
                remove_parametrizations(module, name, leave_parametrized=True)  # the original stays intact
    for p in work.parameters():
        p.grad = None
        p.requires_grad_(False)
    return work


def _weight(module: nn.Module) -> Tensor:
    return cast(Tensor, module.weight)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def to_model(batch: Batch, model: nn.Module) -> Batch:
    """``(x, y)`` on the model's device; a floating ``x`` in the model's dtype."""
    x, y = batch
    return _to_model_input(x, model), y.to(_model_device_dtype(model)[0])


def _to_model_input(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's current device; a floating ``x`` also in its current dtype."""
    device, dtype = _model_device_dtype(model)
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def scoring_batches(ctx: Context, limit: int, model: nn.Module) -> list[Batch]:
    """``limit`` batches of ``ctx.batches`` moved to the model (the clear core error when there are none)."""
    return [to_model(b, model) for b in ctx.scoring_batches(limit)]


@contextmanager
def _forked_rng(model: nn.Module) -> Iterator[None]:
    device, _ = _model_device_dtype(model)
    cuda = (
        [torch.cuda.current_device() if device.index is None else device.index]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        yield


# --------------------------------------------------------------------------------------------- survey view


def drt_stats(model: nn.Module, *, seeded_frozen: bool = False) -> dict[str, float]:
    """The survey's dimensionality-reduced-training counts (METHODS.md §15), shared by every pruner/freezer.

    - ``trained_params`` (D): scalar parameters that training updates -- kept entries of masked tensors
      plus every other parameter that requires grad (biases, BN, IP bases), less the IP basis rows that no
      kept coefficient uses (:func:`~cnnkit.pruning.interspace.idle_basis_params`);
    - ``basis_params``: entries of the IP bases (``K⁴`` per converted conv; 0 without IP);
    - ``dense_params`` (N): scalar parameters of the model with every masked tensor counted dense;
    - ``trained_fraction``: D / N, the one axis on which the bench puts pruning and freezing methods;
    - ``stored_params``: values needed to store the trained model besides the mask bits: D, plus one
      32-bit seed when the untrained background is regenerated from a seed (FreezeNet).
    """
    counts = count_params(model)
    trained = float(counts.trainable - idle_basis_params(model))
    dense = float(counts.total)
    return {
        "trained_params": trained,
        "dense_params": dense,
        "trained_fraction": trained / dense if dense else 1.0,
        "stored_params": trained + (1.0 if seeded_frozen else 0.0),
        "basis_params": float(basis_params(model)),
    }


# --------------------------------------------------------------------------------------------- base class


class ScoredPruner(Method):
    """A one-shot pruner: score the maskable weights at ``apply``, keep the top ``k``, mask the rest.

    Subclasses set ``name`` and ``Config`` (a :class:`PrunerConfig`) and implement :meth:`score`.

    Class attributes:
        needs_data: whether :meth:`score` reads ``ctx.batches`` (informational).
        mask_mode: the core mask mode the masks are attached with (``"prune"``; freezers: ``"freeze"``).
    """

    kind = "pruner"
    Config: ClassVar[type[MethodConfig]] = PrunerConfig
    conflicts = frozenset({"kind:pruner"})
    needs_data: ClassVar[bool] = False
    mask_mode: ClassVar[str] = "prune"

    config: PrunerConfig

    def __init__(self, *, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._model: nn.Module | None = None
        self._example: Tensor | None = None

    # -- to implement ---------------------------------------------------------------------------------
    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        """Scores of the maskable weights, higher = keep: ``{module name: tensor shaped like its weight}``.

        ``model`` is a private scoring copy (see :func:`scoring_copy`): change its values, dtype or mode
        freely. :meth:`targets` lists the maskable modules of that copy (same names as the model's).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score(model, ctx)")

    # -- shared steps ---------------------------------------------------------------------------------
    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The maskable ``(name, module)`` pairs under ``include`` / ``exclude``.

        Raises:
            MethodNotApplicableError: the model has no maskable layer left.
        """
        cfg = self.config
        found = maskable_modules(model, include=cfg.include, exclude=cfg.exclude)
        if not found:
            raise MethodNotApplicableError(
                f"{self._owner()}: the model has no maskable layers "
                f"(include={list(cfg.include)}, exclude={list(cfg.exclude)})"
            )
        return found

    def compute_scores(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        """Validated (and normalised) scores of ``model``'s maskable weights; ``model`` is left untouched."""
        expected = {name: tuple(_weight(m).shape) for name, m in self.targets(model)}
        work = scoring_copy(model)
        with _forked_rng(work):
            raw = self.score(work, ctx)
        if set(raw) != set(expected):
            raise ValueError(
                f"{self._owner()}: scores for {sorted(raw)}, "
                f"expected one per maskable module {sorted(expected)}"
            )
        for name, shape in expected.items():
            if tuple(raw[name].shape) != shape:
                raise ValueError(
                    f"{self._owner()}: score of {name!r} has shape {tuple(raw[name].shape)}, "
                    f"its weight {shape}"
                )
        scores = {name: raw[name].detach() for name in expected}  # model order
        _check_scores(scores)
        return normalize_scores(scores, self.config.normalize)

    def select(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-masks for ``scores`` under this config's ``sparsity`` and ``scope``."""
        return select_masks(scores, self.config.sparsity, self.config.scope)

    def attach_mask(self, module: nn.Module, mask: Tensor, ctx: Context) -> None:
        """Mask ``module.weight`` (override for freezing)."""
        apply_mask(module, mask, mode=self.mask_mode)

    def _check_unshared(self, model: nn.Module, targets: Sequence[tuple[str, nn.Module]]) -> None:
        """Refuse a maskable weight that is one ``Parameter`` shared with another module (tied weights): it
        would get one mask per module, neither the requested sparsity nor what ``stats`` counts.

        Raises:
            MethodNotApplicableError: naming the modules that share each such parameter.
        """
        tied = _shared_weights(model, targets)
        if tied:
            listed = "; ".join(" = ".join(names) for names in tied)
            raise MethodNotApplicableError(
                f"{self._owner()}: tied weights are not supported: {listed} are one shared Parameter "
                "(it would be masked once per module). Untie them, e.g. "
                "b.weight = nn.Parameter(a.weight.detach().clone()), or keep those modules dense (exclude)"
            )

    def prepare(self, model: nn.Module, ctx: Context) -> None:
        """Change ``model`` in place before it is scored: Interspace Pruning's conversion (same modules,
        ``weight`` then holds ``Λ``) under ``interspace=True``, else nothing.

        It must be deterministic: :meth:`apply` scores a prepared copy and prepares the model itself only
        once scoring has succeeded, so that a failed ``apply`` leaves the model unchanged.
        """
        prepare_interspace(model, self.config)

    def prepares_model(self) -> bool:
        """Whether :meth:`prepare` changes the model (then :meth:`apply` scores a prepared copy)."""
        return self.config.interspace

    def _scored_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        """``model`` as :meth:`score` must see it: ``model`` itself, or a prepared copy."""
        if not self.prepares_model():
            return model
        work = copy.deepcopy(model)
        self.prepare(work, ctx)
        return work

    # -- events ---------------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Score, select and attach the masks; every check and the scoring run before ``model`` changes."""
        targets = self.targets(model)
        taken = [name for name, module in targets if is_masked(module)]
        if taken:
            raise ValueError(f"{self._owner()}: weights of {taken} are already masked by another method")
        self._check_unshared(model, targets)
        masks = self.select(self.compute_scores(self._scored_model(model, ctx), ctx))
        self.prepare(model, ctx)  # scoring succeeded: now the same change on the model
        if self.config.reinit_after_mask:
            _reinitialize(model, ctx)
        for name, module in targets:
            self.attach_mask(module, masks[name], ctx)
        self._model = model
        self._example = ctx.example_input[:1].detach()
        return model

    def trained_model(self, ctx: Context) -> nn.Module | None:
        """The model this method was applied to, else ``ctx.model`` (None before ``apply``)."""
        return self._model if self._model is not None else ctx.model

    def require_trained_model(self, ctx: Context) -> nn.Module:
        """:meth:`trained_model`, with a clear error when the method has not been applied yet."""
        model = self.trained_model(ctx)
        if model is None:
            raise RuntimeError(f"{self._owner()}: call apply(model, ctx) before training")
        return model

    def after_step(self, ctx: Context) -> None:
        model = self.trained_model(ctx)
        if model is not None:
            enforce_masks(model)

    def export(self, model: nn.Module) -> nn.Module:
        return from_interspace(bake_masks(model))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return interspace_param_groups(model, self.config)

    def stats(self, model: nn.Module) -> dict[str, float]:
        counts = count_params(model)
        out = {
            "density": counts.masked_density,
            "sparsity": 1.0 - counts.masked_density,
            "kept": float(counts.masked_kept),
            "maskable": float(counts.masked_total),
            "overall_density": counts.density,
            **drt_stats(model, seeded_frozen=_seeded_background(model)),
            **interspace_stats(model, float(counts.masked_kept), float(counts.masked_total)),
        }
        if self._example is not None:
            flops = count_flops(model, _to_model_input(self._example, model))
            if flops.macs > 0:
                out["effective_macs_ratio"] = flops.effective_macs / flops.macs
        return out


def _shared_weights(model: nn.Module, targets: Sequence[tuple[str, nn.Module]]) -> list[list[str]]:
    """The qualified names under which each target's ``weight`` parameter (or a parameter its ``weight``
    parametrization holds) appears in ``model``, for every such parameter that appears more than once."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    tied: dict[int, list[str]] = {}
    for _, module in targets:
        for local, p in module.named_parameters(remove_duplicate=False):
            if (local == "weight" or local.startswith("parametrizations.weight.")) and len(owners[id(p)]) > 1:
                tied[id(p)] = owners[id(p)]
    return list(tied.values())


def _seeded_background(model: nn.Module) -> bool:
    """Whether some frozen background is regenerable from a seed (stored as one seed, not as values)."""
    for _, module, name in masked_modules(model):
        wm = get_weight_mask(module, name)
        if wm is not None and wm.mode == "freeze" and wm.seed_value is not None:
            return True
    return False


def _reinitialize(model: nn.Module, ctx: Context) -> None:
    with _forked_rng(model):
        if ctx.seed is not None:
            torch.manual_seed(ctx.seed + _RESEED_OFFSET)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
