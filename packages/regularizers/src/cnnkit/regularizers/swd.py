"""Spectral Wavelet Dropout (1D-SWD, 2D-SWD).

Paper: R. Cakaj, J. Mehnert, B. Yang, "Spectral Wavelet Dropout: Regularization in the Wavelet Domain",
ICMLA 2024, arXiv 2409.18951 (Algorithms 1 and 2; METHODS.md §3).

In training mode each channel of a feature map is decomposed with a DWT: 1D-SWD flattens the map to
N = H·W values and takes a 3-level db3 DWT, 2D-SWD a 1-level 2-D db3 DWT. Each of the three detail bands
(1-D: levels 1 = finest, 2, 3; 2-D: LH, HL, HH) is dropped with probability ``p`` and kept bands are
scaled by 1/(1−p); the approximation band is always kept; the map is transformed back and cropped to its
size (odd sizes reconstruct one sample too long). In eval mode the layer is the identity. The layer is
linear and unbiased: E[y] = x.

Placement [paper]: deep modules only; for CIFAR ResNets 1D-SWD after every convolution of the chosen
modules (Conv → SWD → BN, main and residual path), 2D-SWD before every convolution (SWD → Conv), for
high-resolution (ImageNet) ResNets 1D-SWD also before every convolution (pass ``position="before"``).

Choices where the paper is silent (each a :class:`SWD.Config` option; defaults per METHODS.md §3h):

- ``mode="zero"``: the signal extension of the DWT. The paper used Cotter's pytorch_wavelets, whose
  default is zero padding; ``"symmetric"`` and ``"periodization"`` (PyWavelets modes) are optional.
- ``bands=(1, 2, 3)``: the detail bands that may be dropped; ``(3,)`` reproduces the paper's ablation that
  drops only the level-3 band (the other bands pass unscaled).
- ``mask_granularity="batch"``: one Bernoulli 3-vector per forward call, shared by every sample and
  channel, as in the paper's algorithms; ``"sample"`` (one per sample) and ``"sample_channel"`` (one per
  sample and channel) are extensions.
- ``stages=(4,)``: the paper picks module 3 or 4 per model and dataset; 4 is its choice for most rows
  (every CIFAR-100 model, CIFAR-10 R50 and VGG16, the ImageNet ablation "1D-SWD4"); CIFAR-10 R18 used 3.
  ``position="auto"`` resolves to the paper's CIFAR placement: "after" each conv for 1-D, "before" for
  2-D. ``include_shortcuts=True`` [paper]: the residual-path (downsample/shortcut) convolutions too.
- ``p=0.1``: the paper tuned p per model in {0.1, ..., 0.5}; 0.1 is its most common choice.
- The transform is our own torch DWT built from the PyWavelets filter bank (:mod:`._dwt`), not
  pytorch_wavelets; its coefficients equal PyWavelets' in every mode. With a fixed mask the layer is a
  linear map y = x·(I + Σ_k w_k Q_k) (Q_k: keep only detail band k, w_k = scale − 1), so it need not run
  the transform at all. ``impl`` picks one of four equal implementations:

  - ``"matmul"``: one GEMM with the dense (N×N) band projections, N = H·W (built once from the conv
    transform, cached);
  - ``"structured"``: the same operator in O(N) form (:mod:`._dwt`): for 2-D the separable form
    y = X + w_cV·X·P_H + P_Hᵀ·X·(w_cH·I + (w_cD − w_cH − w_cV)·P_H) with the per-axis high-band
    projections P_H (one GEMM and one batched GEMM); for 1-D, mode ``"zero"`` only, one polyphase
    ``conv1d`` (8 → 8 channels, 9 taps for db3) whose kernels are the shift-invariant blocks of the
    operator;
  - ``"conv"``: DWT → scale the bands → inverse DWT with strided convolutions;
  - ``"auto"`` [choice, measured on CPU]: ``matmul`` for N ≤ ``DENSE_MAX_N`` (256 for 1-D, 64 for 2-D),
    else ``structured`` where it applies, else ``matmul`` up to N = 1024 and ``conv`` beyond.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from cnnkit.core import MethodConfig
from cnnkit.regularizers import _dwt
from cnnkit.regularizers._placement import ConvSiteLayerMethod

__all__ = ["SWD", "SpectralWaveletDropout"]

Variant = Literal["1d", "2d"]
Granularity = Literal["batch", "sample", "sample_channel"]
Impl = Literal["auto", "conv", "matmul", "structured"]
Path = Literal["conv", "matmul", "structured"]

LEVELS_1D = 3
"""Decomposition levels of 1D-SWD [paper] (2D-SWD: one level)."""


def _check_structured(impl: str, variant: str, mode: str) -> None:
    if impl == "structured" and variant == "1d" and mode != "zero":
        raise ValueError(
            f"impl='structured' with variant='1d' needs mode='zero' (got mode={mode!r}); "
            "use impl='auto', 'matmul' or 'conv'"
        )


def _check_bands(bands: tuple[int, ...]) -> tuple[int, ...]:
    if not bands or any(b not in (1, 2, 3) for b in bands) or len(set(bands)) != len(bands):
        raise ValueError(f"bands={bands!r} must be distinct detail bands from 1, 2, 3")
    return tuple(sorted(bands))


class SpectralWaveletDropout(nn.Module):
    """Drop whole wavelet detail bands of each channel (training only).

    Args:
        p: drop probability of each detail band, 0 ≤ p < 1; kept bands are scaled by 1/(1−p).
        variant: ``"1d"`` (3-level DWT of the flattened map) or ``"2d"`` (1-level 2-D DWT).
        wavelet: a discrete PyWavelets wavelet.
        mode: DWT signal extension: ``"zero"``, ``"symmetric"`` or ``"periodization"``.
        bands: the detail bands that may be dropped (1-D: levels, 1 = finest; 2-D: 1, 2, 3 = LH, HL, HH).
        mask_granularity: one mask per call (``"batch"``), per sample, or per sample and channel.
        impl: ``"auto"``, ``"conv"``, ``"matmul"`` or ``"structured"`` (see the module docstring).
        generator: optional random generator for the masks (default: torch's global one).
    """

    def __init__(
        self,
        p: float = 0.1,
        variant: str = "1d",
        *,
        wavelet: str = "db3",
        mode: str = "zero",
        bands: tuple[int, ...] = (1, 2, 3),
        mask_granularity: str = "batch",
        impl: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p={p!r} must satisfy 0 <= p < 1")
        for what, value, allowed in (
            ("variant", variant, ("1d", "2d")),
            ("mode", mode, _dwt.MODES),
            ("mask_granularity", mask_granularity, ("batch", "sample", "sample_channel")),
            ("impl", impl, ("auto", "conv", "matmul", "structured")),
        ):
            if value not in allowed:
                raise ValueError(f"{what}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        _check_structured(impl, variant, mode)
        self.p = float(p)
        self.variant = variant
        self.wavelet = _dwt.check_wavelet(wavelet)
        self.mode = mode
        self.bands = _check_bands(tuple(bands))
        self.mask_granularity = mask_granularity
        self.impl = impl
        self.generator = generator
        self._fixed = [b - 1 for b in (1, 2, 3) if b not in self.bands]

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, variant={self.variant!r}, wavelet={self.wavelet!r}, mode={self.mode!r}, "
            f"bands={self.bands}, mask_granularity={self.mask_granularity!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return self.transform(x, self.sample_keep(x))

    def sample_keep(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A boolean keep mask for the three detail bands, ``True`` with probability 1−p.

        Shape (3,) for ``"batch"``, (B, 1, 3) for ``"sample"``, (B, C, 3) for ``"sample_channel"``;
        bands outside ``bands`` are always kept.
        """
        _check_input(x)
        b, c = x.shape[:2]
        shape = {"batch": (3,), "sample": (b, 1, 3), "sample_channel": (b, c, 3)}[self.mask_granularity]
        gen = generator if generator is not None else self.generator
        device = gen.device if gen is not None else x.device
        keep = (torch.rand(shape, generator=gen, device=device) >= self.p).to(x.device)
        if self._fixed:
            keep[..., self._fixed] = True
        return keep

    def transform(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Apply a given keep mask (as from :meth:`sample_keep`, broadcastable to (B, C, 3)) to ``x``:
        dropped detail bands become zero, kept droppable bands are scaled by 1/(1−p)."""
        _check_input(x)
        if keep.shape[-1] != 3:
            raise ValueError(f"keep must have 3 entries (one per detail band) last, got {tuple(keep.shape)}")
        keep = keep.to(device=x.device, dtype=torch.bool)
        index = [b - 1 for b in self.bands]
        droppable = keep if len(index) == 3 else keep[..., index]
        # scale − 1 of each droppable band: 1/(1−p) − 1 when kept, −1 when dropped
        weight = droppable.to(x.dtype) * (1.0 / (1.0 - self.p)) - 1.0
        path = self.path(x)
        if path == "matmul":
            return self._matmul(x, weight)
        if path == "structured":
            return self._structured_1d(x, weight) if self.variant == "1d" else self._structured_2d(x, weight)
        scale = torch.ones(*keep.shape, dtype=x.dtype, device=x.device)
        scale[..., index] = weight + 1.0
        return self._conv(x, scale)

    # -- implementations ----------------------------------------------------------------------------
    def path(self, x: torch.Tensor) -> Path:
        """The implementation used for maps shaped like ``x`` (see the module docstring)."""
        if self.impl != "auto":
            return cast(Path, self.impl)
        n = x.shape[-2] * x.shape[-1]
        if n <= _dwt.DENSE_MAX_N[self.variant]:
            return "matmul"
        if self.variant == "2d" or (self.mode == "zero" and self._kernels(x) is not None):
            return "structured"
        return "matmul" if n <= _dwt.AUTO_MATMUL_MAX_N else "conv"

    def _projections(self, x: torch.Tensor) -> torch.Tensor:
        level = LEVELS_1D if self.variant == "1d" else 1
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return _dwt.band_projections(
            self.variant, size, self.wavelet, level, self.mode, self.bands, x.dtype, x.device
        )

    def _matmul(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """y = x (I + Σ_k w_k Q_k) with the dense band projections Q_k (``weight`` = w, (..., k))."""
        b, c, h, w = x.shape
        n = h * w
        proj = self._projections(x)
        k = proj.shape[0]
        if weight.dim() == 1:  # one mask for the batch: one (N, N) operator
            eye = _flat_identity(n, x.dtype, x.device)
            operator = torch.addmm(eye, weight.view(1, k), proj.view(k, n * n)).view(n, n)
            if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                rows = x.permute(0, 2, 3, 1).reshape(b, n, c)  # a view: no copy for channels_last
                return (operator.mT @ rows).view(b, h, w, c).permute(0, 3, 1, 2)
            return (x.reshape(b, c, n) @ operator).view(b, c, h, w)
        flat = x.reshape(b, c, n)
        parts = (flat @ proj.permute(1, 0, 2).reshape(n, k * n)).view(b, c, k, n)
        return (flat + (weight.unsqueeze(-2) @ parts).squeeze(-2)).view(b, c, h, w)

    def _kernels(self, x: torch.Tensor) -> torch.Tensor | None:
        return _dwt.polyphase_kernels(self.wavelet, LEVELS_1D, self.bands, x.dtype, x.device)

    def _structured_1d(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x·(I + Σ_k w_k Q_k) as one polyphase conv1d (zero mode; see :func:`._dwt.polyphase_kernels`)."""
        kernels = self._kernels(x)
        if kernels is None:
            raise ValueError(f"impl='structured' does not support wavelet={self.wavelet!r} in 1-D")
        b, c, h, w = x.shape
        n = h * w
        k, period, _, taps = kernels.shape
        blocks = -(-n // period)
        flat = x.reshape(b * c, n)
        if blocks * period != n:
            flat = F.pad(flat, (0, blocks * period - n))
        phases = flat.view(b * c, blocks, period).transpose(1, 2)  # (R, P, blocks): x[j·P + c] → (c, j)
        if weight.dim() == 1:  # one mask for the batch: one kernel
            eye = _identity_kernel(period, taps, x.dtype, x.device)
            kernel = torch.addmm(eye, weight.view(1, k), kernels.view(k, -1)).view(period, period, taps)
            y = cast(torch.Tensor, _SelfAdjointConv.apply(phases, kernel))
        else:
            parts = F.conv1d(phases, kernels.view(k * period, period, taps), padding=taps // 2)
            scaled = weight.expand(b, c, k).reshape(b * c, k, 1, 1) * parts.view(b * c, k, period, blocks)
            y = phases + scaled.sum(1)
        return y.transpose(1, 2).reshape(b * c, blocks * period)[:, :n].reshape(b, c, h, w)

    def _structured_2d(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """y = X + w_cH·P_hᵀX P_L + w_cV·X P_H + w_cD·P_hᵀX P_H (separable, P_L = I − P_H)."""
        b, c, h, w = x.shape
        full = torch.zeros(*weight.shape[:-1], 3, dtype=x.dtype, device=x.device)
        full[..., [band - 1 for band in self.bands]] = weight
        col = _dwt.axis_projection(h, self.wavelet, self.mode, x.dtype, x.device).mT  # left factor P_hᵀ
        row = _dwt.axis_projection(w, self.wavelet, self.mode, x.dtype, x.device)
        rows = x.reshape(b * c * h, w)
        if full.dim() == 1:  # y = X + w_cV·X P_H + P_hᵀ·X·(w_cH·I + (w_cD − w_cH − w_cV)·P_H)
            w_h, w_v, w_d = full.unbind()
            eye = _identity(w, x.dtype, x.device)
            right = torch.addcmul(eye * w_h, row, w_d - w_h - w_v)
            base = torch.addmm(rows, rows, row * w_v).view(b * c, h, w)
            inner = (rows @ right).view(b * c, h, w)
            return torch.baddbmm(base, col.expand(b * c, h, h), inner).view(b, c, h, w)
        # per-sample weights: y = X + w_cH·P_hᵀX + w_cV·U + (w_cD − w_cH − w_cV)·P_hᵀU, U = X P_H
        u = (rows @ row).view(b * c, h, w)
        both = torch.matmul(col, torch.cat([x.reshape(b * c, h, w), u], dim=-1)).view(b, c, h, 2 * w)
        w_h, w_v, w_d = (t.expand(b, c)[..., None, None] for t in full.unbind(-1))
        return x + w_h * both[..., :w] + w_v * u.view(b, c, h, w) + (w_d - w_h - w_v) * both[..., w:]

    def _conv(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """DWT → scale the detail bands (``scale``: (..., 3)) → inverse DWT → crop."""
        b, c, h, w = x.shape
        if self.variant == "1d":
            approx, details = _dwt.dwt1d(x.reshape(b, c, h * w), self.wavelet, LEVELS_1D, self.mode)
            details = [d * scale[..., i, None] for i, d in enumerate(details)]
            y = _dwt.idwt1d(approx, details, self.wavelet, self.mode, length=h * w)
            return y.reshape(b, c, h, w)
        coeffs = _dwt.dwt2d(x, self.wavelet, self.mode)
        full = torch.cat([torch.ones_like(scale[..., :1]), scale], dim=-1)
        return _dwt.idwt2d(coeffs * full[..., None, None], self.wavelet, self.mode, size=(h, w))


@lru_cache(maxsize=32)
def _flat_identity(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.eye(n, dtype=dtype, device=device).view(1, n * n)


class _SelfAdjointConv(torch.autograd.Function):
    """``conv1d(x, K, padding=T)`` whose input gradient is the forward conv with the adjoint kernel
    K*[i, o, t] = K[o, i, 2T − t] (measured on CPU: autograd's conv1d backward for 8→8 channels took
    3-5× the forward). No gradient for ``K``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(kernel)
        return F.conv1d(x, kernel, padding=kernel.shape[-1] // 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (kernel,) = ctx.saved_tensors
        adjoint = kernel.transpose(0, 1).flip(-1).contiguous()
        return F.conv1d(grad.contiguous(), adjoint, padding=kernel.shape[-1] // 2), None


@lru_cache(maxsize=32)
def _identity(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.eye(n, dtype=dtype, device=device)


@lru_cache(maxsize=32)
def _identity_kernel(period: int, taps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, P·P·taps): the identity as a P→P-channel conv1d kernel (centre tap), flattened."""
    with torch.inference_mode(False):
        kernel = torch.zeros(period, period, taps, dtype=dtype, device=device)
        kernel[:, :, taps // 2] = torch.eye(period, dtype=dtype, device=device)
        return kernel.view(1, -1)


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"SpectralWaveletDropout expects (B, C, H, W) feature maps, got shape {tuple(x.shape)}"
        )


class SWD(ConvSiteLayerMethod):
    """Spectral Wavelet Dropout: :class:`SpectralWaveletDropout` layers at every convolution of the chosen
    stages.

    Args:
        p: drop probability of each detail band (0 ≤ p < 1).
        variant: ``"1d"`` (1D-SWD, 3-level DWT of the flattened map) or ``"2d"`` (2D-SWD, 1-level 2-D DWT).
        stages: stage (module) numbers, 1-based, negative from the end.
        position: ``"before"`` or ``"after"`` each convolution; ``"auto"``: after for 1-D, before for 2-D.
        include_shortcuts: also at the residual-path (downsample/shortcut) convolutions.
        wavelet, mode, bands, mask_granularity, impl: see :class:`SpectralWaveletDropout`.
    """

    name = "swd"
    kind = "regularizer"

    class Config(MethodConfig):
        p: float = Field(0.1, ge=0.0, lt=1.0, description="drop probability of each detail band")
        variant: Variant = Field(
            "1d", description="1d: 3-level DWT of the flattened map; 2d: 1-level 2-D DWT"
        )
        stages: tuple[int, ...] = Field((4,), min_length=1, description="stages (modules) to act in")
        position: Literal["auto", "before", "after"] = Field(
            "auto", description="relative to each conv; auto = paper's rule by variant and resolution"
        )
        include_shortcuts: bool = Field(True, description="also at downsample/shortcut convolutions")
        wavelet: str = Field("db3", description="a discrete PyWavelets wavelet")
        mode: _dwt.Mode = Field("zero", description="DWT signal extension (PyWavelets mode)")
        bands: tuple[Literal[1, 2, 3], ...] = Field(
            (1, 2, 3), min_length=1, max_length=3, description="detail bands that may be dropped"
        )
        mask_granularity: Granularity = Field("batch", description="one mask per batch/sample/channel")
        impl: Impl = Field(
            "auto", description="auto: dense matmul for small maps, else structured (or conv); see docs"
        )

        @field_validator("wavelet")
        @classmethod
        def _known_wavelet(cls, value: str) -> str:
            return _dwt.check_wavelet(value)

        @field_validator("bands")
        @classmethod
        def _distinct_bands(cls, value: tuple[int, ...]) -> tuple[int, ...]:
            return _check_bands(value)

        @model_validator(mode="after")
        def _structured_needs_zero_mode(self) -> SWD.Config:
            _check_structured(self.impl, self.variant, self.mode)
            return self

    config: Config
    layer_type = SpectralWaveletDropout
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({"stages": (3,)})

    def make_layer(self) -> SpectralWaveletDropout:
        """One SWD layer with this method's configuration."""
        cfg = self.config
        return SpectralWaveletDropout(
            cfg.p,
            cfg.variant,
            wavelet=cfg.wavelet,
            mode=cfg.mode,
            bands=cfg.bands,
            mask_granularity=cfg.mask_granularity,
            impl=cfg.impl,
        )
