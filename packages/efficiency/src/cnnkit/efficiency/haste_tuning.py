"""Per-layer L for HASTE, chosen from measured sensitivities [choice: an extension, not in the paper].

The paper steers one L for the whole network. Layers differ a lot in how much merging they tolerate: on the
CIFAR ResNet-34 of benchmarks/haste_cifar.py (patch 2 from stage 1), one layer at L = 8 alone costs from
0.0001 to 0.037 nats of KL divergence to the dense model while saving 0.5 to 2.5 % of the model's FLOPs.
So a FLOPs budget is better spent unevenly (measured there: 40.3 % of the FLOPs cut at −1.48 pp on held-out
images, against 38.4 % at −1.84 with one L; see :mod:`cnnkit.efficiency.haste`):

1. :func:`layer_sensitivity` runs validation inputs through a HASTE model with one HASTE conv active at a
   time (the others run as their plain convs) for each candidate L, and records per layer and L the mean
   KL divergence of the outputs to the dense model's and the FLOPs that layer saves per image (dense minus
   needed, hashing and merging overhead counted, as in :meth:`~cnnkit.efficiency.haste.HASTE.stats`).
2. :func:`allocate_hyperplanes` picks one L per layer for a target FLOPs reduction of the whole model:
   the Lagrangian relaxation of "least summed KL with at least the target saving" (each layer takes the L
   maximising ``saved − λ·KL``; the largest λ that still meets the target). The pick is optimal among all
   allocations that save at least as much (see the function); summing per-layer KLs assumes the layers'
   errors add, so check the allocation on held-out data.
3. Apply it with ``create_method("haste", layer_hyperplanes=...)`` or
   :func:`~cnnkit.efficiency.haste.set_hyperplanes` ``(model, {name: L})``.

HASTE itself stays data-free; this tuning needs unlabelled validation inputs (no labels, no training).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.efficiency.haste import HASTEConv2d, _dense_macs, haste_layers


@dataclass(frozen=True)
class LayerCost:
    """One HASTE conv alone at one L.

    Attributes:
        kl: mean KL divergence ``KL(dense ‖ HASTE)`` of the softmax outputs per input (nats).
        saved_flops: dense minus needed FLOPs of the layer per input (overhead counted; negative when the
            overhead exceeds the saving).
    """

    kl: float
    saved_flops: float


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`layer_sensitivity` measured.

    Attributes:
        model_flops: dense FLOPs of the whole model per input.
        layers: ``{conv name: {L: LayerCost}}`` in model order.
    """

    model_flops: float
    layers: dict[str, dict[int, LayerCost]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (L keys as strings); :meth:`from_dict` reads it back."""
        return {
            "model_flops": self.model_flops,
            "layers": {
                name: {str(planes): [cost.kl, cost.saved_flops] for planes, cost in options.items()}
                for name, options in self.layers.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        layers = {
            name: {
                int(planes): LayerCost(kl=float(kl), saved_flops=float(saved))
                for planes, (kl, saved) in options.items()
            }
            for name, options in data["layers"].items()
        }
        return cls(model_flops=float(data["model_flops"]), layers=layers)


def layer_sensitivity(
    model: nn.Module, inputs: Tensor, candidates: Sequence[int] = (8, 10, 12, 14, 16), batch_size: int = 250
) -> Sensitivity:
    """Measure each HASTE conv of ``model`` alone at each L of ``candidates`` on ``inputs``.

    ``model`` holds HASTE convs (after :meth:`~cnnkit.efficiency.haste.HASTE.apply`) and returns logits
    ``(N, classes)``. Its HASTE convs keep their L and mode; their cost tallies are reset.

    Raises:
        ValueError: no HASTE conv in ``model``, a bad ``candidates`` or ``batch_size``, empty ``inputs``,
            outputs that are not ``(N, classes)`` logits, or a HASTE conv that the forward never runs.
    """
    layers = haste_layers(model)
    if not layers:
        raise ValueError("model has no HASTE convs: apply the 'haste' method first")
    _check_candidates(candidates)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is empty: pass at least one validation input")
    planes = {name: layer.hyperplanes for name, layer in layers}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _all_plain(layers):
            reference = _log_probs(model, inputs, batch_size)
            costs = {
                name: _layer_costs(model, name, layer, inputs, reference, candidates, batch_size)
                for name, layer in layers
            }
        model_flops = 2.0 * _dense_macs(model, inputs[:1])[0]  # output shapes: dense MACs of any conv
    finally:
        for name, layer in layers:
            layer.set_hyperplanes(planes[name])
        model.train(was_training)
    return Sensitivity(model_flops=model_flops, layers=costs)


def _check_candidates(candidates: Sequence[int]) -> None:
    if not candidates or not all(isinstance(v, int) and 1 <= v <= 64 for v in candidates):
        raise ValueError(
            f"candidates must be a non-empty list of integers in 1..64, got {list(candidates)!r}"
        )


@contextmanager
def _all_plain(layers: list[tuple[str, HASTEConv2d]]) -> Iterator[None]:
    """Run every HASTE conv as its plain conv (their training-mode path) inside the block."""
    for _, layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for _, layer in layers:
            layer.training = False


def _log_probs(model: nn.Module, inputs: Tensor, batch_size: int) -> Tensor:
    outs = [model(part) for part in torch.split(inputs, batch_size)]
    logits = torch.cat(outs)
    if logits.dim() != 2:
        raise ValueError(f"the model must return (N, classes) logits, got shape {tuple(logits.shape)}")
    return logits.float().log_softmax(dim=1)


def _layer_costs(
    model: nn.Module,
    name: str,
    layer: HASTEConv2d,
    inputs: Tensor,
    reference: Tensor,
    candidates: Sequence[int],
    batch_size: int,
) -> dict[int, LayerCost]:
    """``layer`` active alone (the others are plain convs) at each candidate L."""
    costs: dict[int, LayerCost] = {}
    layer.training = False
    try:
        for planes in candidates:
            layer.set_hyperplanes(planes)  # also resets the tally
            got = _log_probs(model, inputs, batch_size)
            kl = F.kl_div(got, reference, log_target=True, reduction="sum").item() / inputs.shape[0]
            tally = layer.tally
            if tally.images == 0:
                raise ValueError(f"{name}: the model's forward never ran this HASTE conv; remove it first")
            costs[planes] = LayerCost(kl=kl, saved_flops=(tally.dense - tally.needed) / tally.images)
    finally:
        layer.training = True
    return costs


def allocate_hyperplanes(sensitivity: Sensitivity, flops_reduction: float) -> dict[str, int]:
    """One L per layer whose summed saving is at least ``flops_reduction`` of the model's dense FLOPs, with
    the least summed KL that the Lagrangian relaxation finds.

    Each layer takes the L maximising ``saved_flops − λ·kl`` (ties: the larger L); λ is the largest value
    whose picks still meet the target (bisection). Such a pick ``A`` minimises ``KL − saving/λ``, so every
    allocation that saves at least as much as ``A`` has at least ``A``'s summed KL. An allocation saving
    less than ``A`` but still meeting the target may exist with a smaller KL (the relaxation's duality gap).

    Raises:
        ValueError: ``flops_reduction`` outside (0, 1), or more than the candidates can reach (the message
            gives the most they can).
    """
    if not 0.0 < flops_reduction < 1.0:
        raise ValueError(f"flops_reduction must be in (0, 1), got {flops_reduction!r}")
    target = flops_reduction * sensitivity.model_flops
    most = predicted_reduction(sensitivity, _pick(sensitivity, 0.0))
    if most < flops_reduction:
        raise ValueError(
            f"flops_reduction={flops_reduction:.4f} is out of reach: the candidates' largest L-saving picks "
            f"reach {most:.4f}; add smaller L to the candidates or lower the target"
        )
    low, high = 0.0, _steepest_trade(sensitivity)
    if _saving(sensitivity, _pick(sensitivity, high)) >= target:
        return _pick(sensitivity, high)
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _saving(sensitivity, _pick(sensitivity, mid)) >= target:
            low = mid
        else:
            high = mid
    return _pick(sensitivity, low)


def predicted_reduction(sensitivity: Sensitivity, allocation: Mapping[str, int]) -> float:
    """The model's FLOPs reduction that ``allocation`` (``{name: L}``) predicts: its layers' savings summed,
    over the model's dense FLOPs."""
    return _saving(sensitivity, allocation) / sensitivity.model_flops


def predicted_kl(sensitivity: Sensitivity, allocation: Mapping[str, int]) -> float:
    """The summed per-layer KL of ``allocation``."""
    return sum(sensitivity.layers[name][planes].kl for name, planes in allocation.items())


def _saving(sensitivity: Sensitivity, allocation: Mapping[str, int]) -> float:
    return sum(sensitivity.layers[name][planes].saved_flops for name, planes in allocation.items())


def _pick(sensitivity: Sensitivity, lam: float) -> dict[str, int]:
    return {
        name: max(
            options, key=lambda planes: (options[planes].saved_flops - lam * options[planes].kl, planes)
        )
        for name, options in sensitivity.layers.items()
    }


def _steepest_trade(sensitivity: Sensitivity) -> float:
    """A λ above every pairwise saving/KL trade of each layer's options: there every layer picks its
    least-KL option."""
    steepest = 1.0
    for options in sensitivity.layers.values():
        for a in options.values():
            for b in options.values():
                if a.kl > b.kl:
                    steepest = max(steepest, abs(a.saved_flops - b.saved_flops) / (a.kl - b.kl))
    return 2.0 * steepest
