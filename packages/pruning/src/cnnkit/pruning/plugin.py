"""cnnkit-pruning's plugin: the table of contents of this distribution.

It imports only ``cnnkit.core`` and adds specs; each method's module is imported on first use.
"""

from __future__ import annotations

from typing import Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.specs import MethodSpec

_SCORES = "cnnkit.pruning.scores"

METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="grasp",
        kind="pruner",
        target=f"{_SCORES}:GraSP",
        summary="GraSP: remove the weights with the largest -θ⊙Hg (gradient flow, T=200) at init.",
        paper="Wang, Zhang, Grosse. Picking Winning Tickets Before Training by Preserving Gradient Flow. "
        "ICLR 2020. arXiv:2002.07376",
        tags=("pruning-at-init", "data", "hessian", "unstructured"),
    ),
    MethodSpec(
        name="magnitude",
        kind="pruner",
        target=f"{_SCORES}:Magnitude",
        summary="Magnitude pruning at initialization: keep the k largest |θ|.",
        tags=("pruning-at-init", "data-free", "baseline", "unstructured"),
    ),
    MethodSpec(
        name="random",
        kind="pruner",
        target=f"{_SCORES}:Random",
        summary="Random pruning at initialization: an exact random top-k, seeded by the run's seed.",
        tags=("pruning-at-init", "data-free", "baseline", "unstructured"),
    ),
    MethodSpec(
        name="snip",
        kind="pruner",
        target=f"{_SCORES}:SNIP",
        summary="SNIP: keep the k largest connection sensitivities |θ⊙∂L/∂θ| from a batch at init.",
        paper="Lee, Ajanthan, Torr. SNIP: Single-shot Network Pruning based on Connection Sensitivity. "
        "ICLR 2019. arXiv:1810.02340",
        tags=("pruning-at-init", "data", "gradient", "unstructured", "demo"),
    ),
    MethodSpec(
        name="synflow",
        kind="pruner",
        target=f"{_SCORES}:SynFlow",
        summary="SynFlow: data-free iterative synaptic-flow pruning (100 rounds, exponential) at init.",
        paper="Tanaka, Kunin, Yamins, Ganguli. Pruning neural networks without any data by iteratively "
        "conserving synaptic flow. NeurIPS 2020. arXiv:2006.05467",
        tags=("pruning-at-init", "data-free", "iterative", "unstructured"),
    ),
)


@hookimpl
def cnnkit_register_methods(registry: Any) -> None:
    for spec in METHOD_SPECS:
        registry.add(spec)
