"""Cost counting: parameters (total, non-zero, trainable) and sparsity-aware MACs (METHODS.md §1.1, §1.8).

* :func:`count_params` counts the *effective* tensors a model computes with: a masked (or otherwise
  parametrized) weight counts once, with its own shape, not as ``original`` plus buffers.
* :func:`count_flops` runs one forward pass inside ``torch.utils.flop_counter.FlopCounterMode``. cnnkit
  reports MACs with FLOPs = 2·MACs. Like the counter, only convolution / matmul-type ops are counted (no BN,
  ReLU, pooling or additions); the Cakaj papers' GMACs include those too (≈0.04 G more for ImageNet ResNets).
  The "effective" count scales each weighted layer by the density of its effective weight
  (``Σ_l MAC_l·κ_l``, METHODS.md §1.8).
* :func:`report_macs` is the hook for methods whose cost depends on the data (HASTE, mixture-of-depths,
  channel merging, ...): their forward reports the MACs the counter cannot see.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.core.masks import get_weight_mask

__all__ = ["FlopCount", "ParamCount", "count_flops", "count_params", "report_macs", "reporting_macs"]


# --------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a model.

    Attributes:
        total: entries of all effective parameters (a masked weight counts ``weight.numel()`` once).
        nonzero: non-zero entries of the effective parameters (pruning lowers it, freezing does not).
        trainable: entries that receive updates: ``mask.sum()`` for a masked tensor whose raw tensor requires
            grad (either mode), ``numel`` for any other parameter that requires grad.
        masked_total: entries of the masked tensors (the "maskable weights" papers quote density over).
        masked_kept: kept (mask = 1) entries of the masked tensors.
    """

    total: int
    nonzero: int
    trainable: int
    masked_total: int = 0
    masked_kept: int = 0

    @property
    def density(self) -> float:
        """Non-zero fraction over all parameters."""
        return self.nonzero / self.total if self.total else 1.0

    @property
    def masked_density(self) -> float:
        """Kept fraction over the masked tensors (1.0 if nothing is masked)."""
        return self.masked_kept / self.masked_total if self.masked_total else 1.0

    def as_dict(self) -> dict[str, float]:
        """The counts plus ``density`` and ``masked_density``, as a flat dict of numbers."""
        out: dict[str, float] = {k: float(v) for k, v in asdict(self).items()}
        out["density"] = self.density
        out["masked_density"] = self.masked_density
        return out


@dataclass
class _ParamTally:
    total: int = 0
    nonzero: int = 0
    trainable: int = 0
    masked_total: int = 0
    masked_kept: int = 0
    seen: set[int] = field(default_factory=set)

    def freeze(self) -> ParamCount:
        return ParamCount(self.total, self.nonzero, self.trainable, self.masked_total, self.masked_kept)


def count_params(model: nn.Module) -> ParamCount:
    """Count the model's effective parameters: total, non-zero and trainable (see :class:`ParamCount`).

    Parametrized tensors (masks, reparametrizations) count as their effective tensor; learnable parameters
    inside a parametrization (e.g. a compander's scalars) count as ordinary parameters. Shared tensors are
    counted once.
    """
    tally = _ParamTally()
    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                _tally_parametrized(module, tally)
        for p in model.parameters():
            if id(p) in tally.seen:
                continue
            tally.seen.add(id(p))
            tally.total += p.numel()
            tally.nonzero += int(p.count_nonzero())
            tally.trainable += p.numel() if p.requires_grad else 0
    return tally.freeze()


def _tally_parametrized(module: nn.Module, tally: _ParamTally) -> None:
    plists = cast(nn.ModuleDict, module.parametrizations)
    for name, plist in plists.items():
        originals = [t for n, t in plist.named_parameters(recurse=False) if n.startswith("original")]
        new = [t for t in originals if id(t) not in tally.seen]
        tally.seen.update(id(t) for t in originals)
        if not originals or not new:
            continue  # a buffer reparametrized (not a parameter), or a tensor already counted
        effective = cast(Tensor, getattr(module, name))
        requires_grad = any(t.requires_grad for t in originals)
        tally.total += effective.numel()
        tally.nonzero += int(effective.count_nonzero())
        wm = get_weight_mask(module, name)
        if wm is None:
            tally.trainable += effective.numel() if requires_grad else 0
            continue
        kept = int(wm.mask.count_nonzero())
        tally.trainable += kept if requires_grad else 0
        tally.masked_total += wm.mask.numel()
        tally.masked_kept += kept


# --------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCount:
    """MACs / FLOPs of one forward pass.

    Attributes:
        macs: dense multiply-accumulates (``flops // 2``) of conv/matmul-type ops.
        flops: the ``FlopCounterMode`` total (FLOPs = 2·MACs).
        effective_macs: ``Σ_l MAC_l·κ_l`` over weighted leaf modules (``κ_l`` = non-zero fraction of the
            effective weight), plus the MACs outside those modules at full value, plus :attr:`reported`.
        by_module: dense MACs per weighted leaf module (conv, linear, ...), keyed by qualified name; a module
            called twice counts twice.
        reported: MACs reported through :func:`report_macs`, summed per note.
    """

    macs: int
    flops: int
    effective_macs: float
    by_module: dict[str, int] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """``macs``, ``flops``, ``effective_macs`` and ``reported_macs`` (the sum of :attr:`reported`)."""
        return {
            "macs": float(self.macs),
            "flops": float(self.flops),
            "effective_macs": float(self.effective_macs),
            "reported_macs": float(sum(self.reported.values())),
        }


_REPORTS: contextvars.ContextVar[tuple[dict[str, float], ...]] = contextvars.ContextVar(
    "cnnkit_reported_macs", default=()
)


def report_macs(macs: float, *, note: str = "") -> None:
    """Report MACs the FLOP counter cannot see, from inside a module's forward pass.

    This is the hook for data-dependent cost. A method whose cost depends on the input (a router that skips
    tokens or blocks, channel merging, a hash-based approximation) calls ``report_macs(x)`` during its
    forward: a positive ``x`` *adds* MACs (work the counter misses), a negative one *subtracts* MACs the
    counter saw densely but that a real implementation would skip. Reports are summed per ``note`` into
    :attr:`FlopCount.reported` and added to :attr:`FlopCount.effective_macs`, never to the dense ``macs``.
    Outside :func:`count_flops` this is a no-op, so it costs nothing in training.
    """
    for sink in _REPORTS.get():
        sink[note] = sink.get(note, 0.0) + float(macs)


def reporting_macs() -> bool:
    """Whether a :func:`count_flops` is collecting :func:`report_macs` calls right now (so a method can skip
    computing what it would report when nobody listens)."""
    return bool(_REPORTS.get())


@contextmanager
def _collect_reports() -> Iterator[dict[str, float]]:
    sink: dict[str, float] = {}
    token = _REPORTS.set((*_REPORTS.get(), sink))
    try:
        yield sink
    finally:
        _REPORTS.reset(token)


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """Attention's fused eval/no-grad kernels (``_native_multi_head_attention``, the fused encoder layer) are
    invisible to ``FlopCounterMode``; the unfused path computes the same with countable matmuls."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _weighted_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a tensor ``weight`` and no children other than their parametrizations."""
    leaves = []
    for name, module in model.named_modules():
        children = [n for n, _ in module.named_children() if n != "parametrizations"]
        if not children and isinstance(getattr(module, "weight", None), Tensor):
            leaves.append((name, module))
    return leaves


@contextmanager
def _per_module_flops(
    counter: FlopCounterMode, leaves: list[tuple[str, nn.Module]]
) -> Iterator[dict[str, int]]:
    """Attribute the counter's FLOPs between each leaf's forward pre-hook and forward hook to that leaf."""
    flops: dict[str, int] = {}
    handles = []
    for name, module in leaves:
        start: list[int] = []

        def pre(_m: nn.Module, _args: Any, start: list[int] = start) -> None:
            start.append(counter.get_total_flops())

        def post(_m: nn.Module, _args: Any, _out: Any, name: str = name, start: list[int] = start) -> None:
            flops[name] = flops.get(name, 0) + counter.get_total_flops() - start.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield flops
    finally:
        for h in handles:
            h.remove()


def _nonzero_fraction(module: nn.Module) -> tuple[int, int]:
    """``(non-zero entries, numel)`` of the module's effective weight."""
    weight = cast(Tensor, module.weight)
    return int(weight.count_nonzero()), max(weight.numel(), 1)


def count_flops(model: nn.Module, example_input: Tensor | Sequence[Tensor]) -> FlopCount:
    """Count the MACs of one forward pass ``model(example_input)`` (or ``model(*example_input)``).

    The pass runs in eval mode under ``torch.no_grad()``; the train/eval flags of all modules are restored
    afterwards. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts only conv and
    matmul-type ops (not BN, ReLU, pooling or additions, METHODS.md §1.1); ``macs = flops // 2``. Attention's
    fused fast path, which that counter cannot see, is switched off during the pass.

    ``by_module`` attributes MACs to weighted leaf modules (those with a ``weight`` and no children, e.g.
    conv and linear) via forward hooks; a weight used outside its module's ``forward`` (functional calls)
    is not attributed and enters ``effective_macs`` at full value. ``effective_macs`` =
    ``Σ_l by_module[l]·κ_l + (macs − Σ_l by_module[l]) + Σ reported`` with ``κ_l`` the non-zero fraction of
    the effective weight (a pruned layer of density 0.25 counts a quarter; frozen weights count fully).
    Modules report data-dependent cost with :func:`report_macs`.
    """
    inputs = (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)
    leaves = _weighted_leaves(model)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), _mha_fastpath_off(), _collect_reports() as reported:
        with _per_module_flops(counter, leaves) as leaf_flops, counter:
            model(*inputs)
        fractions = {name: _nonzero_fraction(module) for name, module in leaves if name in leaf_flops}
    flops = int(counter.get_total_flops())
    by_module = {name: f // 2 for name, f in leaf_flops.items() if f > 0}
    attributed = sum(by_module.values())
    effective = sum(macs * fractions[n][0] / fractions[n][1] for n, macs in by_module.items())
    effective += (flops // 2 - attributed) + sum(reported.values())
    return FlopCount(
        macs=flops // 2, flops=flops, effective_macs=effective, by_module=by_module, reported=dict(reported)
    )
