"""cnnkit-regularizers' plugin: the table of contents of this distribution.

It imports only ``cnnkit.core`` and adds specs; each method's module is imported on first use.
"""

from __future__ import annotations

from typing import Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.specs import MethodSpec

_CAKAJ = "Cakaj, Mehnert, Yang"

METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="sbn",
        kind="regularizer",
        target="cnnkit.regularizers.sbn:SBN",
        summary="Spectral Batch Normalization: normalize the rfft2 coefficients after each BN of a stage.",
        paper=f"{_CAKAJ}. Spectral Batch Normalization: Normalization in the Frequency Domain. IJCNN 2023. "
        "arXiv:2306.16999",
        tags=("normalization", "spectral", "fft"),
    ),
    MethodSpec(
        name="sfd",
        kind="regularizer",
        target="cnnkit.regularizers.sfd:SFD",
        summary="Spectral (DCT) dropout, 1-D or 2-D: zero the weakest eta coefficients, drop the rest.",
        paper="Khan, Hayat, Porikli. Regularization of Deep Neural Networks with Spectral Dropout. Neural "
        "Networks 110:82-90, 2019. arXiv:1711.08591 (as described in the SWD paper, arXiv:2409.18951)",
        tags=("dropout", "spectral", "dct", "training-only"),
    ),
    MethodSpec(
        name="sr",
        kind="regularizer",
        target="cnnkit.regularizers.sr:SR",
        summary="Squeeze-and-Remember: a softmax-weighted sum of learned memory maps added after stage M.",
        paper=f"{_CAKAJ}. Squeeze-and-Remember Block. ICMLA 2024. arXiv:2410.00823",
        tags=("block", "memory", "stage"),
    ),
    MethodSpec(
        name="swd",
        kind="regularizer",
        target="cnnkit.regularizers.swd:SWD",
        summary="Spectral Wavelet Dropout (1D/2D): drops whole wavelet detail bands of features in training.",
        paper=f"{_CAKAJ}. Spectral Wavelet Dropout: Regularization in the Wavelet Domain. ICMLA 2024. "
        "arXiv:2409.18951",
        tags=("dropout", "wavelet", "spectral", "training-only"),
    ),
    MethodSpec(
        name="wc",
        kind="regularizer",
        target="cnnkit.regularizers.wc:WC",
        summary="Weight Compander: every conv/linear weight as w = a·arctan(v/b); folded away at export.",
        paper=f"{_CAKAJ}. Weight Compander: A Simple Weight Reparameterization for Regularization. "
        "IJCNN 2023. arXiv:2306.16993",
        tags=("reparametrization", "weight-decay", "demo"),
    ),
)


@hookimpl
def cnnkit_register_methods(registry: Any) -> None:
    for spec in METHOD_SPECS:
        registry.add(spec)
