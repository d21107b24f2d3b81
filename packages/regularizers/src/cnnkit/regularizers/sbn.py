"""Spectral Batch Normalization (SBN): batch normalization of the 2-D Fourier coefficients of feature maps.

Paper: Cakaj, Mehnert, Yang, "Spectral Batch Normalization: Normalization in the Frequency Domain",
IJCNN 2023 (arXiv 2306.16999). METHODS.md §5.

Algorithm 1, per channel c: X = rfft2(x) (unnormalized, ``norm="backward"``); training: µ_c = mean of X over
batch and frequencies (complex), σ²_c = mean |X − µ_c|² (real), running statistics
µ_r ← λµ + (1 − λ)µ_r, σ²_r ← λσ²·n/(n − 1) + (1 − λ)σ²_r; eval uses µ_r, σ²_r. Then
Y = γ_c (X − µ_c)/√(σ²_c + ε) + β_c with real γ, β (β enters the real part of every bin), and
y = irfft2(Y, s=(H, W)). One layer right after each BN of the chosen stages (Conv → BN → SBN → ReLU).

Closed form (METHODS.md §5b): with s = √(σ² + ε), a = γ/s, z = β − γµ/s, the layer is
y = a·x + irfft2(z·1, s=(H, W)), a per-channel scale plus a fixed offset pattern (an impulse at pixel (0, 0)
from Re z and an odd pattern in row 0 from Im z). ``export="fold"`` uses it with the running statistics.

Where the paper is silent, our choices (each a :class:`SBN.Config` field, defaults METHODS.md §5c/§5h):

- ``stages`` = (3, 4) (SBN34, the paper's choice for CIFAR ResNets; VGG16-BN and ImageNet R50 use (4,)).
- ``momentum`` λ = 0.1, ``eps`` = 1e-5 (BN's defaults); µ_r = 0, σ²_r = 1, γ = 1, β = 0 at start.
- ``include_shortcut_bn`` = True ("each BN layer", the BNs of projection shortcuts included).
- ``fft_norm`` = ``"backward"`` (the convention is part of the method: σ² scales with H·W).
- ``unbiased_n`` = ``"count"``: n = B·H·(⌊W/2⌋ + 1), the number of averaged values; ``"paper"``: n = C·H·W/2.
- ``compute_dtype`` = ``"float32"``: the FFTs and statistics run in at least this precision with autocast
  disabled inside the layer (cuFFT in half precision needs power-of-two sizes); output in the input dtype.
- ``export`` = ``"keep_fft"`` (SBN is part of the function and stays); ``"fold"`` replaces each layer by the
  closed form with frozen running statistics (no FFT over the batch at inference).
- The running mean is stored as (real, imaginary) pairs, shape (C, 2), not as a complex buffer.
- ``impl`` = ``"closed_form"``: the same function as Algorithm 1 without FFTs (many tiny FFTs made SBN slow).
  By linearity irfft2(γ/s·(rfft2(x) − µ) + β) = (γ/s)·x + irfft2(z·1, s=(H, W)), with the offset pattern
  irfft2(z·1) = Re z·irfft2(1) + Im z·irfft2(i·1) computed once per size (cached). The statistics need only
  three reductions of x: Σ over the kept half-spectrum of X = H·Σ_w x[0, w]·g_w with
  g_w = Σ_{l ≤ W/2} e^{−2πi·lw/W} (the sum over k of X[k, l] is H times the row-0 DFT); and, from Parseval
  and the Hermitian symmetry of the full spectrum, Σ_half |X|² = (HW·Σx² + H·Σ_h r_h² + H·Σ_h q_h²)/2 with
  row sums r_h = Σ_w x[h, w] (the l = 0 column) and, for even W, alternating row sums
  q_h = Σ_w (−1)^w x[h, w] (the l = W/2 column). Then σ² = mean |X|² − |µ|² (clamped at 0); other
  ``fft_norm`` values scale X by 1/√(HW) or 1/(HW). Autograd differentiates these few reductions instead of
  two FFTs. ``"fft"`` runs Algorithm 1 literally (rfft2, statistics, irfft2); both agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator
from torch import nn

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Context
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.sites import Inserted, insert_at, require_sites

__all__ = ["SBN", "FoldedSpectralBatchNorm2d", "SpectralBatchNorm2d"]

FftNorm = Literal["backward", "ortho", "forward"]
UnbiasedN = Literal["count", "paper"]
ComputeDtype = Literal["float32", "float64"]
Impl = Literal["closed_form", "fft"]

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _compute_dtype(x: torch.Tensor, compute_dtype: ComputeDtype) -> torch.dtype:
    return torch.promote_types(x.dtype, _DTYPES[compute_dtype])


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None]


def _norm_factor(h: int, w: int, norm: FftNorm) -> float:
    """α with rfft2(x, norm) = α·rfft2(x, "backward")."""
    return {"backward": 1.0, "ortho": 1.0 / math.sqrt(h * w), "forward": 1.0 / (h * w)}[norm]


@lru_cache(maxsize=64)
def _row_vectors(w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(W, 4): ones, (−1)^w (zero for odd W: no Nyquist column), Re g_w, Im g_w with
    g_w = Σ_{l=0}^{W//2} exp(−2πi·l·w/W)."""
    with torch.inference_mode(False):
        cols = torch.arange(w, dtype=torch.float64)
        freqs = torch.arange(w // 2 + 1, dtype=torch.float64)
        angle = -2.0 * math.pi * torch.outer(freqs, cols) / w
        alternating = (1.0 - 2.0 * (cols % 2)) if w % 2 == 0 else torch.zeros(w, dtype=torch.float64)
        vectors = torch.stack(
            [torch.ones(w, dtype=torch.float64), alternating, angle.cos().sum(0), angle.sin().sum(0)]
        )
        return vectors.T.contiguous().to(dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _offset_patterns(h: int, w: int, norm: FftNorm, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2, H, W): irfft2(1, s=(H, W)) and irfft2(i·1, s=(H, W)), the responses to a constant real and
    imaginary offset on every bin (with ``norm="backward"``: an impulse at (0, 0) and a pattern in row 0)."""
    with torch.inference_mode(False):
        ones = torch.ones(2, h, w // 2 + 1, dtype=torch.complex128)
        ones[1] *= 1j
        patterns: torch.Tensor = torch.fft.irfft2(ones, s=(h, w), norm=norm)
        return patterns.to(dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _offset_rows(h: int, w: int, norm: FftNorm, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2, W): row 0 of :func:`_offset_patterns`, its only non-zero row (Σ_k e^{2πi·kh/H} = 0 for h ≠ 0)."""
    with torch.inference_mode(False):
        return _offset_patterns(h, w, norm, torch.float64, torch.device("cpu"))[:, 0].to(
            dtype=dtype, device=device
        )


def _pair_sums(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Row sums for the l = 0 and l = W/2 columns of rfft2: (sums, k) with Σ_h (r_h² + q_h²) = k·Σ sums².

    Even W: sums = (e, o), the sums over even and odd w (r = e + o, q = e − o, so r² + q² = 2(e² + o²)).
    Odd W (no Nyquist column): sums = r, shape (B, C, H, 1). (Strided sums: measured several times faster
    on CPU than a matmul with the (W, 2) sum vectors or a reduction over a reshaped axis.)"""
    if x.shape[-1] % 2:
        return x.sum(-1, keepdim=True), 1.0
    return torch.stack([x[..., ::2].sum(-1), x[..., 1::2].sum(-1)], dim=-1), 2.0


def _add_pair_terms(grad: torch.Tensor, terms: torch.Tensor) -> None:
    """``grad[..., w] += terms[..., w % 2]`` (even W) or ``+= terms[..., 0]`` (odd W), in place."""
    if terms.shape[-1] == 1:
        grad.add_(terms)
    else:
        grad[..., ::2].add_(terms[..., :1])
        grad[..., 1::2].add_(terms[..., 1:])


class _TrainClosedForm(torch.autograd.Function):
    """Training-mode SBN in closed form with a hand-written backward (fewer passes over the maps than
    autograd of the same expressions). Returns y and the batch statistics (µ as (C, 2), σ²), the latter
    without gradient. Checked against autograd of ``impl="fft"`` in the tests."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, norm: FftNorm
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        bins = h * (w // 2 + 1)
        alpha = _norm_factor(h, w, norm)
        k_mean, k_power = alpha * h / (b * bins), alpha * alpha / (2 * b * bins)
        first_row = _row_vectors(w, x.dtype, x.device)[:, 2:]  # (W, 2): Re g, Im g
        sums, k_sums = _pair_sums(x)
        mean = (x[:, :, 0, :] @ first_row).sum(0) * k_mean  # (C, 2)
        flat = x.reshape(b, c, 1, h * w)
        energy = (flat @ flat.mT).sum(0).view(c) * (h * w) + sums.square().sum(dim=(0, 2, 3)) * (h * k_sums)
        var = energy * k_power - mean.square().sum(-1)
        positive = var > 0
        var = var.clamp(min=0.0)
        inv = torch.rsqrt(var + eps)
        scale = weight * inv
        offset = torch.stack([bias - scale * mean[:, 0], -scale * mean[:, 1]], dim=-1)  # z = β − a·µ
        y = x * _per_channel(scale)
        y[:, :, 0, :] += offset @ _offset_rows(h, w, norm, x.dtype, x.device)
        ctx.save_for_backward(x, weight, sums, mean, inv, scale, positive)
        ctx.constants = (k_mean, k_power, k_sums, norm)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_y: torch.Tensor, *_: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, sums, mean, inv, scale, positive = ctx.saved_tensors
        k_mean, k_power, k_sums, norm = ctx.constants
        b, c, h, w = x.shape
        grad_y = grad_y.contiguous()
        rows = _offset_rows(h, w, norm, x.dtype, x.device)
        grad_offset = grad_y[:, :, 0, :].sum(0) @ rows.T  # (C, 2)
        grad_scale = (grad_y.reshape(b, c, 1, h * w) @ x.reshape(b, c, h * w, 1)).sum(0).view(c)
        grad_scale = grad_scale - (grad_offset * mean).sum(-1)
        grad_var = grad_scale * weight * (-0.5) * inv**3 * positive
        grad_mean = -scale[:, None] * grad_offset - 2.0 * mean * grad_var[:, None]
        # ∂/∂x of k_power·(HW·Σx² + H·k_sums·Σ sums²) and of k_mean·Σ_b x[:, :, 0] @ g
        grad_x = grad_y * _per_channel(scale)
        grad_x.addcmul_(x, _per_channel(grad_var * (2.0 * k_power * h * w)))
        _add_pair_terms(grad_x, sums * (grad_var * (2.0 * k_power * h * k_sums))[:, None, None])
        grad_x[:, :, 0, :] += (grad_mean * k_mean) @ _row_vectors(w, x.dtype, x.device)[:, 2:].T
        return grad_x, grad_scale * inv, grad_offset[:, 0], None, None


def _bessel(batch: int, channels: int, h: int, w: int, rule: UnbiasedN) -> float:
    """n/(n − 1) for the running variance, with n per ``rule``; 1 when n <= 1."""
    n = batch * h * (w // 2 + 1) if rule == "count" else channels * h * w / 2
    return n / (n - 1) if n > 1 else 1.0


class SpectralBatchNorm2d(nn.Module):
    """Batch normalization in the 2-D Fourier domain (Algorithm 1 of the SBN paper).

    Args:
        num_features: channels C.
        momentum: λ of the running statistics, 0 < λ <= 1.
        eps: ε added to the variance.
        fft_norm: ``torch.fft`` normalization of rfft2/irfft2.
        unbiased_n: ``"count"`` or ``"paper"``, the n of the running variance's n/(n − 1).
        compute_dtype: the least precision of the FFTs and statistics.
        impl: ``"closed_form"`` (no FFT per call) or ``"fft"`` (Algorithm 1 literally); same function.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        fft_norm: FftNorm = "backward",
        unbiased_n: UnbiasedN = "count",
        compute_dtype: ComputeDtype = "float32",
        impl: Impl = "closed_form",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if impl not in ("closed_form", "fft"):
            raise ValueError(f"impl={impl!r} is not one of 'closed_form', 'fft'")
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.fft_norm, self.unbiased_n, self.compute_dtype = fft_norm, unbiased_n, compute_dtype
        self.impl = impl
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, 2, **factory))  # (real, imag)
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, shape: torch.Size) -> None:
        """µ_r ← λµ + (1 − λ)µ_r, σ²_r ← λσ²·n/(n − 1) + (1 − λ)σ²_r (``mean`` as (C, 2) real pairs)."""
        with torch.no_grad():
            unbiased = var * _bessel(shape[0], shape[1], shape[2], shape[3], self.unbiased_n)
            lam = self.momentum
            self.running_mean.mul_(1.0 - lam).add_(mean.to(self.running_mean), alpha=lam)
            self.running_var.mul_(1.0 - lam).add_(unbiased.to(self.running_var), alpha=lam)

    def _running_statistics(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(µ_r as (C, 2) real pairs, σ²_r) in ``dtype``."""
        return self.running_mean.to(dtype), self.running_var.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SpectralBatchNorm2d expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        dtype = _compute_dtype(x, self.compute_dtype)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            if x.shape[0] == 0:
                y = self._empty_batch(xc)
            else:
                y = self._closed_form(xc) if self.impl == "closed_form" else self._fft(xc)
        return y.to(x.dtype)

    def _empty_batch(self, x: torch.Tensor) -> torch.Tensor:
        """As ``nn.BatchNorm2d`` on an empty batch: an empty output (connected to x, γ and β, whose gradients
        are then zero) and the running statistics unchanged, in training and in eval mode."""
        return x * _per_channel(self.weight.to(x.dtype)) + _per_channel(self.bias.to(x.dtype))

    def _closed_form(self, x: torch.Tensor) -> torch.Tensor:
        """y = a·x + Re z·irfft2(1) + Im z·irfft2(i·1), a = γ/√(σ² + ε), z = β − a·µ (module docstring)."""
        if self.training:  # statistics and backward in _TrainClosedForm
            weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
            y, mean, var = _TrainClosedForm.apply(x, weight, bias, self.eps, self.fft_norm)
            self._update_running(mean, var, x.shape)
            return cast(torch.Tensor, y)
        mean, var = self._running_statistics(x.dtype)
        scale = self.weight.to(x.dtype) * torch.rsqrt(var + self.eps)
        offset = -scale[:, None] * mean  # (C, 2): z = β − a·µ, β added to the real part below
        offset = offset + torch.stack([self.bias.to(x.dtype), torch.zeros_like(scale)], dim=-1)
        y = x * _per_channel(scale)
        y[:, :, 0, :] += offset @ _offset_rows(x.shape[-2], x.shape[-1], self.fft_norm, x.dtype, x.device)
        return y

    def _fft(self, x: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 with torch.fft."""
        h, w = x.shape[-2], x.shape[-1]
        spectrum = torch.fft.rfft2(x, norm=self.fft_norm)
        if self.training:
            mean = spectrum.mean(dim=(0, 2, 3))
            var = (spectrum - _per_channel(mean)).abs().square().mean(dim=(0, 2, 3))
            self._update_running(torch.view_as_real(mean).detach(), var.detach(), x.shape)
        else:
            pairs, var = self._running_statistics(x.dtype)
            mean = torch.view_as_complex(pairs.contiguous())
        scale = _per_channel(self.weight.to(x.dtype) * torch.rsqrt(var + self.eps))
        shift = _per_channel(self.bias.to(x.dtype))  # real: enters the real part of every bin
        normalized = (spectrum - _per_channel(mean)) * scale + shift
        y: torch.Tensor = torch.fft.irfft2(normalized, s=(h, w), norm=self.fft_norm)
        return y

    @torch.no_grad()
    def fold(self) -> FoldedSpectralBatchNorm2d:
        """The eval-mode function as a :class:`FoldedSpectralBatchNorm2d` (running statistics frozen)."""
        dtype = torch.promote_types(self.weight.dtype, _DTYPES[self.compute_dtype])
        mean, var = self._running_statistics(dtype)
        scale = self.weight.to(dtype) * torch.rsqrt(var + self.eps)
        offset = -scale[:, None] * mean
        offset[:, 0] += self.bias.to(dtype)
        return FoldedSpectralBatchNorm2d(scale, offset, self.fft_norm, self.compute_dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, fft_norm={self.fft_norm!r}, "
            f"unbiased_n={self.unbiased_n!r}, compute_dtype={self.compute_dtype!r}, impl={self.impl!r}"
        )


class FoldedSpectralBatchNorm2d(nn.Module):
    """SBN in closed form: y = a_c·x + irfft2(z_c·1, s=(H, W)) (eval mode, statistics frozen).

    Args:
        scale: a_c = γ_c/√(σ²_r + ε), shape (C,).
        offset: z_c = β_c − a_c·µ_r as (real, imaginary) pairs, shape (C, 2).
        fft_norm, compute_dtype: as for :class:`SpectralBatchNorm2d`.
    """

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(
        self, scale: torch.Tensor, offset: torch.Tensor, fft_norm: FftNorm, compute_dtype: ComputeDtype
    ) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("offset", offset.detach().clone())
        self.fft_norm, self.compute_dtype = fft_norm, compute_dtype

    def pattern(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """The per-channel offset map irfft2(z_c·1, s=(h, w)), shape (C, h, w)."""
        patterns = _offset_patterns(h, w, self.fft_norm, dtype, self.offset.device)
        return torch.einsum("cr,rhw->chw", self.offset.to(dtype), patterns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x, self.compute_dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = _per_channel(self.scale.to(dtype)) * x.to(dtype) + self.pattern(
                x.shape[-2], x.shape[-1], dtype
            )
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, fft_norm={self.fft_norm!r}"


# ---------------------------------------------------------------------------------------------------------
# The method


def _num_channels(bn: nn.Module) -> int:
    for attr in ("num_features", "weight", "running_mean"):
        value = getattr(bn, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise MethodNotApplicableError(f"sbn: cannot tell the number of channels of {type(bn).__name__}")


def _reference_tensor(bn: nn.Module) -> torch.Tensor | None:
    return next(iter([*bn.parameters(), *bn.buffers()]), None)


class SBN(Method):
    """Spectral Batch Normalization after each BN of the chosen stages.

    Args:
        stages: 1-based stage numbers (negative counts from the last); (3, 4) = the paper's SBN34.
        momentum: λ of the running statistics.
        eps: ε added to the spectral variance.
        include_shortcut_bn: also after the BNs of residual projection shortcuts.
        Other fields: see the module docstring.
    """

    name = "sbn"
    kind = "regularizer"
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({"stages": (2, 3)})

    class Config(MethodConfig):
        stages: tuple[int, ...] = Field(
            (3, 4), min_length=1, description="stages (1-based; negative from end)"
        )
        momentum: float = Field(0.1, gt=0.0, le=1.0, description="λ of the running statistics")
        eps: float = Field(1e-5, gt=0.0, le=1.0, description="added to the spectral variance")
        include_shortcut_bn: bool = Field(True, description="also after BNs of residual shortcuts")
        fft_norm: FftNorm = Field("backward", description="torch.fft normalization")
        unbiased_n: UnbiasedN = Field("count", description="n of the running variance's n/(n-1)")
        compute_dtype: ComputeDtype = Field("float32", description="least precision of FFT and statistics")
        export: Literal["keep_fft", "fold"] = Field("keep_fft", description="what export does with SBN")
        impl: Impl = Field(
            "closed_form", description="closed_form: no FFT per call; fft: Algorithm 1 literally"
        )

        @field_validator("stages")
        @classmethod
        def _nonzero_stages(cls, stages: tuple[int, ...]) -> tuple[int, ...]:
            if 0 in stages:
                raise ValueError(
                    "stage numbers are 1-based (negative counts from the last stage); 0 is not one"
                )
            return stages

    config: Config

    def make_layer(self, bn: nn.Module) -> SpectralBatchNorm2d:
        ref = _reference_tensor(bn)
        cfg = self.config
        return SpectralBatchNorm2d(
            _num_channels(bn),
            momentum=cfg.momentum,
            eps=cfg.eps,
            fft_norm=cfg.fft_norm,
            unbiased_n=cfg.unbiased_n,
            compute_dtype=cfg.compute_dtype,
            impl=cfg.impl,
            device=None if ref is None else ref.device,
            dtype=None if ref is None or not ref.is_floating_point() else ref.dtype,
        )

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        sites = require_sites(
            model,
            method=self.name,
            stages=self.config.stages,
            example_input=ctx.example_input,
            kind="bn",
            position="after",
            include_shortcuts=self.config.include_shortcut_bn,
        )
        for site in sites:
            insert_at(model, site, self.make_layer(site.module))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        if self.config.export == "fold":
            for module in model.modules():
                if isinstance(module, Inserted) and isinstance(module.added, SpectralBatchNorm2d):
                    module.added = module.added.fold()
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = (SpectralBatchNorm2d, FoldedSpectralBatchNorm2d)
        return {"sites": float(sum(isinstance(m, layers) for m in model.modules()))}
