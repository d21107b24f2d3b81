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
        name="cops",
        kind="pruner",
        target="cnnkit.pruning.cops:COPS",
        summary="COPS: combine n >= 2 pruning scores by an LP (max <s1,m> s.t. <sj,m> >= gj*Bj), exactly.",
        paper="Wimmer, Mehnert, Condurache. COPS: Controlled Pruning Before Training Starts. IJCNN 2021. "
        "arXiv:2107.12673",
        tags=("pruning-at-init", "combined", "lp", "unstructured"),
    ),
    MethodSpec(
        name="freezenet",
        kind="pruner",
        target="cnnkit.pruning.freezenet:FreezeNet",
        summary="FreezeNet: train only the top SNIP-scored weights; the rest stay at init (never zeroed).",
        paper="Wimmer, Mehnert, Condurache. FreezeNet: Full Performance by Reduced Storage Costs. ACCV 2020. "
        "arXiv:2011.14087",
        tags=("freezing-at-init", "data", "gradient", "unstructured"),
    ),
    MethodSpec(
        name="imp",
        kind="pruner",
        target="cnnkit.pruning.imp:IMP",
        summary="Lottery tickets: iterative magnitude pruning, 20% per round globally, rewinding to step k.",
        paper="Frankle, Carbin. The Lottery Ticket Hypothesis. ICLR 2019. arXiv:1803.03635; Frankle et al. "
        "Linear Mode Connectivity and the Lottery Ticket Hypothesis. ICML 2020. arXiv:1912.05671",
        tags=("lottery-ticket", "iterative", "rewinding", "unstructured"),
    ),
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
        name="rigl",
        kind="pruner",
        target="cnnkit.pruning.dst:RigL",
        summary="RigL: dynamic sparse training; drop smallest magnitudes, grow largest dense gradients.",
        paper="Evci, Gale, Menick, Castro, Elsen. Rigging the Lottery: Making All Tickets Winners. "
        "ICML 2020. arXiv:1911.11134",
        tags=("dynamic-sparse-training", "gradient", "unstructured"),
    ),
    MethodSpec(
        name="set",
        kind="pruner",
        target="cnnkit.pruning.dst:SET",
        summary="SET: dynamic sparse training; drop smallest magnitudes, regrow at random.",
        paper="Mocanu et al. Scalable training of artificial neural networks with adaptive sparse "
        "connectivity inspired by network science. Nature Communications 2018. arXiv:1707.04780",
        tags=("dynamic-sparse-training", "data-free", "unstructured"),
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
