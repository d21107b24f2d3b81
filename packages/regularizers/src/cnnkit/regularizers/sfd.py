"""Spectral "Fourier" Dropout (1D-SFD, 2D-SFD): dropout on DCT coefficients of feature maps.

Paper: Khan, Hayat, Porikli, "Regularization of Deep Neural Networks with Spectral Dropout", Neural
Networks 110:82–90, 2019 (arXiv 1711.08591); implemented, placed and tuned as the SWD paper (Cakaj,
Mehnert, Yang, "Spectral Wavelet Dropout", ICMLA 2024, arXiv 2409.18951) describes it. METHODS.md §4.

Training (per sample b and channel c): c = DCT-II(x) (2-D over H×W, or 1-D over the flattened map),
zero the ⌊η·n⌋ coefficients of smallest magnitude, keep each other coefficient with probability 1 − p
(kept ones scaled by 1/(1 − p)), y = inverse DCT(c). Inference: the identity (export removes the layers).

Where the papers are silent, our choices (each a :class:`SFD.Config` field, defaults METHODS.md §4h):

- ``p``/``eta`` = 0.2/0.1 (the SWD paper's ImageNet R50 2D-SFD), ``variant`` = ``"2d"``.
- ``stages`` = (4,) (CIFAR: module 4 for every model). ``position``: ``"auto"`` = 2-D before every conv;
  1-D after every conv at low resolution (CIFAR) and before every conv at high resolution (example input's
  shorter side ≥ :data:`HIGH_RESOLUTION_PX`, ImageNet), as for SWD. ``include_shortcuts`` = True (the
  projection convs of residual shortcuts get a layer too).
- ``quantile_scope`` = ``"sample_channel"``: weakest coefficients ranked within each (sample, channel);
  ``"batch_channel"`` ranks within each channel over the whole batch. k = ⌊η·n⌋ exactly (n = coefficients
  in the scope; computed as ⌊η·n + 1e-9⌋ against floating error); ties are broken by position, so exactly
  k coefficients are zeroed. The ranking uses the magnitudes of the ``norm`` coefficients.
- ``rescale`` = True (1/(1 − p) on kept coefficients, as SWD). ``norm`` = ``"ortho"``.
- ``mask_granularity`` = ``"coefficient"`` (independent per sample, channel and coefficient); ``"batch"``
  draws one mask over coefficient positions per call, shared by all samples and channels.
- ``dct_impl`` = ``"auto"`` (cached DCT matrices for small maps, an FFT beyond; see ``_dct``).
- Computation in at least float32 with autocast disabled inside the layer; output in the input's dtype.

Khan et al.'s original rule (a fixed threshold τ on the coefficients; a transform over channels as well as
space, learned jointly with the network) is **not** reproduced: this is the SWD paper's baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from cnnkit.core.config import MethodConfig
from cnnkit.regularizers._dct import DctImpl, DctNorm, dct, dct_2d, idct, idct_2d
from cnnkit.regularizers._placement import HIGH_RESOLUTION_PX, ConvSiteLayerMethod

__all__ = ["HIGH_RESOLUTION_PX", "SFD", "SpectralFourierDropout", "num_pruned", "spectral_fourier_dropout"]

Variant = Literal["1d", "2d"]
QuantileScope = Literal["sample_channel", "batch_channel"]
MaskGranularity = Literal["coefficient", "batch"]


# ---------------------------------------------------------------------------------------------------------
# Functional form


def _forward_dct(x: torch.Tensor, variant: Variant, norm: DctNorm, impl: DctImpl) -> torch.Tensor:
    """(B, C, H, W) → (B, C, n) coefficients."""
    if variant == "1d":
        return dct(x.flatten(2), norm, impl=impl)
    return dct_2d(x, norm, impl=impl).flatten(2)


def _inverse_dct(
    c: torch.Tensor, shape: torch.Size, variant: Variant, norm: DctNorm, impl: DctImpl
) -> torch.Tensor:
    if variant == "1d":
        return idct(c, norm, impl=impl).reshape(shape)
    return idct_2d(c.reshape(shape), norm, impl=impl)


def num_pruned(eta: float, n: int) -> int:
    """k = ⌊η·n⌋, the number of weakest coefficients zeroed among n (tolerant of floating error)."""
    return min(n, math.floor(eta * n + 1e-9))


def _prune_mask(c: torch.Tensor, eta: float, scope: QuantileScope) -> torch.Tensor | None:
    """A 0/1 mask zeroing exactly the k weakest |c| per scope, or None when k == 0."""
    magnitude = c.detach().abs()
    if scope == "batch_channel":
        magnitude = magnitude.transpose(0, 1).flatten(1)  # (C, B·n)
    k = num_pruned(eta, magnitude.shape[-1])
    if k == 0:
        return None
    weakest = magnitude.topk(k, dim=-1, largest=False, sorted=False).indices
    mask = torch.ones_like(magnitude).scatter_(-1, weakest, 0.0)
    if scope == "batch_channel":
        mask = mask.view(c.shape[1], c.shape[0], c.shape[2]).transpose(0, 1)
    return mask


def _dropout_mask(
    c: torch.Tensor, p: float, granularity: MaskGranularity, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    shape = c.shape if granularity == "coefficient" else (1, 1, c.shape[-1])
    mask = torch.empty(shape, dtype=c.dtype, device=c.device).bernoulli_(1.0 - p, generator=generator)
    return mask / (1.0 - p) if rescale else mask


def _check_rates(p: float, eta: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p={p!r} is out of range: the drop rate must satisfy 0 <= p < 1")
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"eta={eta!r} is out of range: the pruning rate must satisfy 0 <= eta < 1")


def spectral_fourier_dropout(
    x: torch.Tensor,
    p: float,
    eta: float,
    variant: Variant = "2d",
    *,
    norm: DctNorm = "ortho",
    quantile_scope: QuantileScope = "sample_channel",
    rescale: bool = True,
    mask_granularity: MaskGranularity = "coefficient",
    dct_impl: DctImpl = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SFD in training mode on ``x`` of shape (B, C, H, W): DCT, prune ⌊η·n⌋ weakest, dropout, inverse.

    Always transforms (no shortcut for ``p == eta == 0``); see :class:`SpectralFourierDropout` for the layer.
    ``generator`` (on ``x``'s device) draws the dropout mask: ``bernoulli_(1 - p)`` over the coefficient
    tensor (B, C, n), or over (1, 1, n) with ``mask_granularity="batch"``.
    """
    _check_rates(p, eta)
    if x.dim() != 4:
        raise ValueError(f"SFD expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        c = _forward_dct(x.to(dtype), variant, norm, dct_impl)
        keep = _prune_mask(c, eta, quantile_scope)
        if p > 0.0:
            drop = _dropout_mask(c, p, mask_granularity, rescale, generator)
            keep = drop if keep is None else keep * drop
        if keep is not None:
            c = c * keep
        y = _inverse_dct(c, x.shape, variant, norm, dct_impl)
    return y.to(x.dtype)


class SpectralFourierDropout(nn.Module):
    """The SFD layer: :func:`spectral_fourier_dropout` in training mode, the identity in eval mode.

    Args:
        p: drop rate of the coefficients that survive pruning, 0 <= p < 1.
        eta: fraction of weakest coefficients zeroed per scope, 0 <= eta < 1.
        variant: ``"1d"`` (flattened map) or ``"2d"`` (H×W).
        norm, quantile_scope, rescale, mask_granularity, dct_impl: see the module docstring.
    """

    def __init__(
        self,
        p: float,
        eta: float,
        variant: Variant = "2d",
        *,
        norm: DctNorm = "ortho",
        quantile_scope: QuantileScope = "sample_channel",
        rescale: bool = True,
        mask_granularity: MaskGranularity = "coefficient",
        dct_impl: DctImpl = "auto",
    ) -> None:
        super().__init__()
        _check_rates(p, eta)
        self.p, self.eta, self.variant = p, eta, variant
        self.norm, self.quantile_scope, self.rescale = norm, quantile_scope, rescale
        self.mask_granularity, self.dct_impl = mask_granularity, dct_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.p == 0.0 and self.eta == 0.0):
            return x
        return spectral_fourier_dropout(
            x,
            self.p,
            self.eta,
            self.variant,
            norm=self.norm,
            quantile_scope=self.quantile_scope,
            rescale=self.rescale,
            mask_granularity=self.mask_granularity,
            dct_impl=self.dct_impl,
        )

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, p={self.p}, eta={self.eta}"


# ---------------------------------------------------------------------------------------------------------
# The method


def _check_stages(stages: tuple[int, ...]) -> tuple[int, ...]:
    if 0 in stages:
        raise ValueError("stage numbers are 1-based (negative counts from the last stage); 0 is not a stage")
    return stages


class SFD(ConvSiteLayerMethod):
    """Spectral Fourier Dropout layers at every conv of the chosen stages (training only).

    Args:
        variant: ``"1d"`` (DCT of the flattened map) or ``"2d"`` (2-D DCT over H×W).
        p: drop rate, 0 <= p < 1.
        eta: pruning rate (fraction of weakest coefficients zeroed), 0 <= eta < 1.
        stages: 1-based stage numbers (negative counts from the last).
        position: ``"auto"``, ``"before"`` or ``"after"`` each conv.
        Other fields: see the module docstring.
    """

    name = "sfd"
    kind = "regularizer"
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({"stages": (3,)})

    class Config(MethodConfig):
        variant: Variant = Field("2d", description="'1d': DCT of the flattened map; '2d': 2-D DCT over H×W")
        p: float = Field(0.2, ge=0.0, lt=1.0, description="drop rate of the coefficients")
        eta: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of weakest coefficients zeroed")
        stages: tuple[int, ...] = Field((4,), min_length=1, description="stages (1-based; negative from end)")
        position: Literal["auto", "before", "after"] = Field("auto", description="relative to each conv")
        include_shortcuts: bool = Field(True, description="also at the convs of residual shortcuts")
        quantile_scope: QuantileScope = Field("sample_channel", description="where |c| is ranked")
        rescale: bool = Field(True, description="scale kept coefficients by 1/(1-p)")
        norm: DctNorm = Field("ortho", description="DCT normalization")
        mask_granularity: MaskGranularity = Field("coefficient", description="dropout mask sharing")
        dct_impl: DctImpl = Field("auto", description="DCT implementation")

        @field_validator("stages")
        @classmethod
        def _nonzero_stages(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
            return _check_stages(stages)

    config: Config
    layer_type = SpectralFourierDropout

    def make_layer(self) -> SpectralFourierDropout:
        cfg = self.config
        return SpectralFourierDropout(
            cfg.p,
            cfg.eta,
            cfg.variant,
            norm=cfg.norm,
            quantile_scope=cfg.quantile_scope,
            rescale=cfg.rescale,
            mask_granularity=cfg.mask_granularity,
            dct_impl=cfg.dct_impl,
        )
