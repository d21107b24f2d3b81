"""Pruning-at-initialization scores: random, magnitude, SNIP, GraSP, SynFlow (METHODS.md §9).

Papers (specified from their authors' official code):

* SNIP -- Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  ICLR 2019, arXiv 1810.02340.
* GraSP -- Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow",
  ICLR 2020, arXiv 2002.07376.
* SynFlow -- Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020, arXiv 2006.05467.

Every method here is a :class:`~cnnkit.pruning._base.ScoredPruner`: it scores the maskable weights ``θ``
(conv and linear weights) of the freshly initialised model on a private copy, keeps exactly
``k = ⌈(1 − sparsity)·N⌉`` of them (global top-k by default) and prunes the rest with core's ``prune``
mask. A score's convention is "higher = keep". ``θ`` is the *effective* weight (other parametrizations,
e.g. a weight compander, are baked into the scoring copy first).

* ``random``: ``s ~ N(0, 1)``, drawn on the CPU from ``ctx.generator()`` (reproducible under ``ctx.seed``).
* ``magnitude``: ``s = |θ|``.
* ``snip``: ``s = |θ ⊙ Σ_b ∂L_b/∂θ|`` over ``batches`` batches of ``ctx.batches`` (official SNIP: one
  training mini-batch; SynFlow's re-implementation sums over its pruning loader), ``L = ctx.loss_fn``.
* ``grasp``: GraSP's score is ``−θ ⊙ Hg`` with ``g = ∇L``, ``H = ∇²L`` on logits divided by ``T = 200``, and
  GraSP *removes* the largest scores. The keep-score returned here is therefore ``θ ⊙ Hg`` (= −GraSP's
  score), whose top-k is GraSP's mask. As in the official code, ``g`` is the sum over all chunks of data of
  the gradient w.r.t. *all* conv and linear weights (also those excluded from masking), taken without graph;
  ``Hg`` is the gradient of ``Σ_chunks ⟨stop_grad(g), ∇L_chunk⟩`` (a double backward). Chunks: the
  ``batches`` batches as given (``samples_per_class=None``, our default), or the official class-balanced
  sample: ``samples_per_class`` examples of each class, sorted by class and split into two halves, drawn
  ``iterations`` times (official CIFAR-10: 10 × 1; CIFAR-100: 5 × 2).
* ``synflow``: data-free. The scoring copy is put in ``eval`` mode and converted to float64, every floating
  parameter and buffer (BN statistics included) is replaced by its absolute value, and for ``t = 1..rounds``
  the masked network gets one all-ones input ``[1, *example_input.shape[1:]]``;
  ``R = Σ output``, ``s = |θ ⊙ ∂R/∂θ|`` (masked entries score 0), and -- for ``t < rounds`` -- the mask is
  re-selected at density ``κ^{t/rounds}`` (exponential schedule) among the entries still kept. The last
  round's scores are returned; the base class keeps their top ``⌈κN⌉``. The model itself never changes
  sign (the official code's ``abs`` / sign restore happens on the copy only).

Interspace Pruning (``interspace=True``, METHODS.md §12, :mod:`cnnkit.pruning.interspace`): every conv with
a K×K kernel, K > 1, is converted before scoring, and its ``weight`` holds the coefficients ``Λ`` of a
filter basis ``F``. Each score above then acts on ``Λ`` through the same code: magnitude ``|Λ|``, SNIP
``|Λ ⊙ ∂L/∂Λ|``, GraSP ``Λ ⊙ H_Λ g_Λ`` (``g`` over all coefficients and spatial weights), SynFlow
``|Λ ⊙ ∂R/∂Λ|`` with ``R`` computed through ``W = |Λ|·|F|`` (``synflow_abs="lambda_and_basis"``, our choice)
or ``|Λ|·F`` (``"lambda_only"``).

Choices where the official code is silent or differs (METHODS.md §9e, §9h), all config options:

* ``scoring_mode="train"`` for SNIP and GraSP (the official codes score the network in training mode, BN on
  batch statistics; the SynFlow harness scores in eval mode: ``scoring_mode="eval"``). SynFlow:
  ``scoring_mode="eval"`` (METHODS.md's ``synflow_bn_mode``), ``dtype="float64"`` (``synflow_dtype``:
  products of ``|W|`` over many layers overflow float32), ``rounds=100``, ``schedule="exponential"``
  (``"linear"``: density ``1 − (1 − κ)·t/rounds``, as in the SynFlow code).
* GraSP: ``temperature=200``, ``reinit_linear=False`` (``grasp_reinit_linear``: ``True`` scores with
  Xavier-normal re-initialised linear weights, drawn from ``ctx.generator``, as the official code does; the
  model keeps its own weights), ``samples_per_class=None``.
* Scores are divided by ``|Σ s|`` (``normalize="sum"``; official SNIP divides by ``Σ s``, GraSP by
  ``|Σ s| + 1e-10``) -- ranking-invariant.
* Ties: exactly ``k`` kept, ties broken by position (the SynFlow code's threshold can prune more).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from itertools import chain
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from cnnkit.core.context import Batch, Context
from cnnkit.core.masks import maskable_modules
from cnnkit.pruning._base import (
    DataPrunerConfig,
    PrunerConfig,
    ScoredPruner,
    scoring_batches,
    select_masks,
    to_model,
)
from cnnkit.pruning.interspace import interspace_modules

__all__ = [
    "SNIP",
    "GraSP",
    "Magnitude",
    "Random",
    "SynFlow",
    "class_balanced_chunks",
    "grasp_scores",
    "magnitude_scores",
    "random_scores",
    "snip_scores",
    "synflow_densities",
    "synflow_scores",
]

Loss = Any  # Callable[[Tensor, Tensor], Tensor]; Any keeps ctx.loss_fn's signature

_RANDOM_OFFSET = 104_729  # ctx.generator offsets: independent streams per use
_XAVIER_OFFSET = 130_363


# --------------------------------------------------------------------------------------------- helpers


def _weights(model: nn.Module, names: Sequence[str]) -> list[Tensor]:
    return [cast(Tensor, model.get_submodule(n).weight) for n in names]


def _differentiable(model: nn.Module, names: Sequence[str]) -> list[Tensor]:
    weights = _weights(model, names)
    for w in weights:
        w.requires_grad_(True)
    return weights


def _grad(output: Tensor, inputs: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    grads = torch.autograd.grad(output, list(inputs), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(inputs, grads, strict=True)]


def _all_weight_names(model: nn.Module) -> list[str]:
    return [name for name, _ in maskable_modules(model)]


# --------------------------------------------------------------------------------------------- functional


def magnitude_scores(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """``|θ|`` per named module."""
    return {n: w.detach().abs() for n, w in zip(names, _weights(model, names), strict=True)}


def random_scores(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> dict[str, Tensor]:
    """``N(0, 1)`` per named module, drawn in order on the CPU from ``generator``."""
    out = {}
    for n, w in zip(names, _weights(model, names), strict=True):
        out[n] = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device)
    return out


def snip_scores(
    model: nn.Module, names: Sequence[str], batches: Iterable[Batch], loss_fn: Loss
) -> dict[str, Tensor]:
    """SNIP: ``|θ ⊙ Σ_b ∂L_b/∂θ|`` (``model`` in the mode the caller set; gradients summed over batches)."""
    weights = _differentiable(model, names)
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        for acc, g in zip(total, _grad(loss_fn(model(x), y), weights), strict=True):
            acc.add_(g)
    return {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, total, strict=True)}


def grasp_scores(
    model: nn.Module,
    names: Sequence[str],
    chunks: Sequence[Batch],
    loss_fn: Loss,
    temperature: float = 200.0,
) -> dict[str, Tensor]:
    """GraSP keep-scores ``θ ⊙ Hg`` (= −GraSP's ``−θ⊙Hg``; keep the largest) for the named modules.

    ``g = Σ_c ∇L_c`` and ``Hg = Σ_c ∇⟨stop_grad(g), ∇L_c⟩`` over *all* conv and linear weights of ``model``,
    ``L_c = loss_fn(model(x_c) / temperature, y_c)``.
    """
    every = _all_weight_names(model)
    weights = _differentiable(model, every)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        out: Tensor = loss_fn(model(x) / temperature, y)
        return out

    g = [torch.zeros_like(w) for w in weights]
    for x, y in chunks:
        for acc, gi in zip(g, _grad(loss(x, y), weights), strict=True):
            acc.add_(gi.detach())
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in chunks:
        grads = _grad(loss(x, y), weights, create_graph=True)
        z = torch.stack([(gi * d).sum() for gi, d in zip(g, grads, strict=True)]).sum()
        if z.requires_grad:
            for acc, h in zip(hg, _grad(z, weights), strict=True):
                acc.add_(h.detach())
    index = {n: i for i, n in enumerate(every)}
    return {n: weights[index[n]].detach() * hg[index[n]] for n in names}


def synflow_densities(density: float | Decimal, rounds: int, schedule: str = "exponential") -> list[float]:
    """The densities of SynFlow's rounds ``1..rounds-1`` (the last round uses ``density`` exactly)."""
    kappa = float(density)
    t = [i / rounds for i in range(1, rounds)]
    if schedule == "exponential":
        return [kappa**f for f in t]
    if schedule == "linear":
        return [1.0 - (1.0 - kappa) * f for f in t]
    raise ValueError(f"schedule must be 'exponential' or 'linear'; got {schedule!r}")


def _linearize(model: nn.Module, dtype: torch.dtype, abs_basis: bool = True) -> None:
    model.to(dtype)
    signed = [] if abs_basis else [m.basis for _, m in interspace_modules(model)]
    keep = {id(t) for t in signed}
    with torch.no_grad():
        for t in chain(model.parameters(), model.buffers()):
            if t.is_floating_point() and id(t) not in keep:
                t.abs_()


def synflow_scores(
    model: nn.Module,
    names: Sequence[str],
    input_shape: Sequence[int],
    *,
    densities: Sequence[float] = (),
    scope: Literal["global", "layerwise"] = "global",
    dtype: torch.dtype = torch.float64,
    abs_basis: bool = True,
) -> dict[str, Tensor]:
    """SynFlow on ``model`` (changed in place: ``abs`` of every state entry, ``dtype``; mode as set).

    One round per entry of ``densities`` (mask re-selected at that density among the kept entries), then
    a final round whose scores ``|θ ⊙ ∂R/∂θ|``, ``R = Σ model(ones)``, are returned. Under Interspace
    Pruning ``θ`` is the coefficients ``Λ``; ``abs_basis=False`` keeps the bases ``F`` signed.
    """
    _linearize(model, dtype, abs_basis)
    weights = _differentiable(model, names)
    base = [w.detach().clone() for w in weights]
    keep = {n: torch.ones_like(w, dtype=torch.bool) for n, w in zip(names, weights, strict=True)}
    ones = torch.ones((1, *input_shape), device=weights[0].device, dtype=dtype)
    for density in (*densities, None):
        with torch.no_grad():
            for w, b, n in zip(weights, base, names, strict=True):
                w.copy_(b * keep[n])
        grads = _grad(model(ones).sum(), weights)
        scores = {n: (w.detach() * g).abs() for n, w, g in zip(names, weights, grads, strict=True)}
        if density is None:
            return scores
        ranked = {n: s.masked_fill(~keep[n], -torch.inf) for n, s in scores.items()}
        keep = select_masks(ranked, scope=scope, density=density)
    raise AssertionError("unreachable")


def class_balanced_chunks(
    batches: Iterable[Batch], samples_per_class: int, num_classes: int, iterations: int = 1
) -> list[Batch]:
    """GraSP's official sampling: per iteration ``samples_per_class`` examples of every class (first come,
    in order), sorted by class and split into two halves; ``2·iterations`` chunks in all."""
    stream = iter(batches)
    chunks: list[Batch] = []
    for _ in range(iterations):
        x, y = _fetch_balanced(stream, samples_per_class, num_classes)
        half = y.shape[0] // 2
        chunks += [(x[:half], y[:half]), (x[half:], y[half:])]
    return chunks


def _fetch_balanced(stream: Iterator[Batch], per_class: int, num_classes: int) -> Batch:
    xs: list[list[Tensor]] = [[] for _ in range(num_classes)]
    ys: list[list[Tensor]] = [[] for _ in range(num_classes)]
    for x, y in stream:
        for i, label in enumerate(y.reshape(-1).tolist()):
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside the model's {num_classes} classes")
            if len(xs[label]) < per_class:
                xs[label].append(x[i : i + 1])
                ys[label].append(y[i : i + 1])
        if all(len(c) == per_class for c in xs):
            return torch.cat([t for c in xs for t in c]), torch.cat([t for c in ys for t in c])
    short = {c: len(v) for c, v in enumerate(xs) if len(v) < per_class}
    raise ValueError(
        f"ctx.batches ran out before {per_class} samples of every class were found (class: found = {short}); "
        "pass more batches or set samples_per_class=None to use the batches as given"
    )


# --------------------------------------------------------------------------------------------- methods


class Random(ScoredPruner):
    """Random pruning: ``s ~ N(0, 1)`` from ``ctx.generator`` (reproducible under ``ctx.seed``).

    Args:
        sparsity, scope, include, exclude, normalize, reinit_after_mask: see :class:`PrunerConfig`.
    """

    name = "random"

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        names = [n for n, _ in self.targets(model)]
        return random_scores(model, names, ctx.generator(_RANDOM_OFFSET))


class Magnitude(ScoredPruner):
    """Magnitude pruning at initialization: ``s = |θ|``.

    Args:
        sparsity, scope, include, exclude, normalize, reinit_after_mask: see :class:`PrunerConfig`.
    """

    name = "magnitude"

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        return magnitude_scores(model, [n for n, _ in self.targets(model)])


class SNIP(ScoredPruner):
    """SNIP (Lee, Ajanthan, Torr, ICLR 2019): ``s = |θ ⊙ ∂L/∂θ|`` on ``batches`` batches of ``ctx.batches``.

    Args:
        batches: number of scoring batches (official: one training mini-batch); gradients are summed.
        scoring_mode: ``"train"`` (official) or ``"eval"`` (the SynFlow harness).
        sparsity, scope, include, exclude, normalize, reinit_after_mask: see :class:`PrunerConfig`.
    """

    name = "snip"
    needs_data = True
    Config: ClassVar[type[PrunerConfig]] = DataPrunerConfig
    config: DataPrunerConfig

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        batches = scoring_batches(ctx, self.config.batches, model)
        model.train(self.config.scoring_mode == "train")
        return snip_scores(model, [n for n, _ in self.targets(model)], batches, ctx.loss_fn)


class GraSP(ScoredPruner):
    """GraSP (Wang, Zhang, Grosse, ICLR 2020): remove the largest ``−θ ⊙ Hg``; keep-score ``θ ⊙ Hg``.

    Args:
        temperature: logits are divided by it (official: 200).
        samples_per_class: ``None`` uses ``batches`` batches as given; an int draws the official
            class-balanced sample from ``ctx.batches`` (two half-chunks per iteration).
        iterations: class-balanced draws (official: 1 on CIFAR-10, 2 on CIFAR-100); only with
            ``samples_per_class``.
        reinit_linear: score with Xavier-normal re-initialised linear weights (official ``reinit=True``).
        batches, scoring_mode: see :class:`DataPrunerConfig`.
        sparsity, scope, include, exclude, normalize, reinit_after_mask: see :class:`PrunerConfig`.
    """

    name = "grasp"
    needs_data = True

    class Config(DataPrunerConfig):
        temperature: float = Field(200.0, gt=0.0, description="logits are divided by T before the loss")
        samples_per_class: int | None = Field(
            None, ge=1, description="None: use `batches` batches; int: official class-balanced sample"
        )
        iterations: int = Field(1, ge=1, description="class-balanced draws (with samples_per_class)")
        reinit_linear: bool = Field(False, description="score with Xavier-normal re-initialised linears")

    config: Config

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        cfg = self.config
        chunks = self._chunks(model, ctx)
        if cfg.reinit_linear:
            _xavier_linears(model, ctx.generator(_XAVIER_OFFSET))
        model.train(cfg.scoring_mode == "train")
        names = [n for n, _ in self.targets(model)]
        return grasp_scores(model, names, chunks, ctx.loss_fn, cfg.temperature)

    def _chunks(self, model: nn.Module, ctx: Context) -> list[Batch]:
        cfg = self.config
        if cfg.samples_per_class is None or ctx.batches is None:
            return scoring_batches(ctx, cfg.batches, model)
        stream = iter(ctx.batches)
        first = next(stream, None)
        if first is None:
            return scoring_batches(ctx, cfg.batches, model)  # the core's "empty" error
        num_classes = _num_classes(model, to_model(first, model)[0])
        chunks = class_balanced_chunks(
            chain([first], stream), cfg.samples_per_class, num_classes, cfg.iterations
        )
        return [to_model(c, model) for c in chunks]


def _num_classes(model: nn.Module, x: Tensor) -> int:
    model.eval()
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


def _xavier_linears(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                fresh = torch.empty(module.weight.shape, dtype=module.weight.dtype)
                nn.init.xavier_normal_(fresh, generator=generator)
                module.weight.copy_(fresh)


class SynFlow(ScoredPruner):
    """SynFlow (Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020): iterative, data-free synaptic flow.

    Args:
        rounds: scoring/pruning rounds (official: 100).
        schedule: density of round ``t``: ``κ^{t/rounds}`` (``"exponential"``, official) or
            ``1 − (1 − κ)·t/rounds`` (``"linear"``).
        scoring_mode: ``"eval"`` (official; BN uses its absolute running statistics) or ``"train"``.
        dtype: ``"float64"`` (our choice, against overflow) or ``"float32"``.
        synflow_abs: under ``interspace``, which tensors are replaced by their absolute values:
            ``"lambda_and_basis"`` (our choice, METHODS.md §12e) or ``"lambda_only"`` (bases stay signed).
            ``|ΛF| ≠ |Λ||F|``, so the choice matters; without ``interspace`` it has no effect.
        sparsity, scope, include, exclude, normalize, reinit_after_mask, interspace, ...: see
            :class:`PrunerConfig`.
    """

    name = "synflow"
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({"rounds": 5})

    class Config(PrunerConfig):
        rounds: int = Field(100, ge=1, description="iterative pruning rounds")
        schedule: Literal["exponential", "linear"] = Field("exponential", description="density schedule")
        scoring_mode: Literal["eval", "train"] = Field("eval", description="model mode while scoring")
        dtype: Literal["float64", "float32"] = Field("float64", description="scoring precision")
        synflow_abs: Literal["lambda_and_basis", "lambda_only"] = Field(
            "lambda_and_basis", description="IP: abs of coefficients and bases, or of coefficients only"
        )

    config: Config

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        cfg = self.config
        model.train(cfg.scoring_mode == "train")
        density = Decimal(1) - Decimal(repr(cfg.sparsity))
        return synflow_scores(
            model,
            [n for n, _ in self.targets(model)],
            tuple(ctx.example_input.shape[1:]),
            densities=synflow_densities(density, cfg.rounds, cfg.schedule),
            scope=cfg.scope,
            dtype=getattr(torch, cfg.dtype),
            abs_basis=cfg.synflow_abs == "lambda_and_basis",
        )
