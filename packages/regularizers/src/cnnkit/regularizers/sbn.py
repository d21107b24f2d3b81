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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

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

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _compute_dtype(x: torch.Tensor, compute_dtype: ComputeDtype) -> torch.dtype:
    return torch.promote_types(x.dtype, _DTYPES[compute_dtype])


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None]


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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.fft_norm, self.unbiased_n, self.compute_dtype = fft_norm, unbiased_n, compute_dtype
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, 2, **factory))  # (real, imag)
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def _batch_statistics(self, spectrum: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = spectrum.mean(dim=(0, 2, 3))
        var = (spectrum - _per_channel(mean)).abs().square().mean(dim=(0, 2, 3))
        with torch.no_grad():
            unbiased = var * _bessel(x.shape[0], x.shape[1], x.shape[2], x.shape[3], self.unbiased_n)
            lam = self.momentum
            self.running_mean.mul_(1.0 - lam).add_(torch.view_as_real(mean).to(self.running_mean), alpha=lam)
            self.running_var.mul_(1.0 - lam).add_(unbiased.to(self.running_var), alpha=lam)
        return mean, var

    def _running_statistics(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.view_as_complex(self.running_mean.to(dtype).contiguous())
        return mean, self.running_var.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SpectralBatchNorm2d expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        dtype = _compute_dtype(x, self.compute_dtype)
        h, w = x.shape[-2], x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            spectrum = torch.fft.rfft2(x.to(dtype), norm=self.fft_norm)
            if self.training:
                mean, var = self._batch_statistics(spectrum, x)
            else:
                mean, var = self._running_statistics(dtype)
            scale = _per_channel(self.weight.to(dtype) * torch.rsqrt(var + self.eps))
            shift = _per_channel(self.bias.to(dtype))  # real: enters the real part of every bin
            normalized = (spectrum - _per_channel(mean)) * scale + shift
            y: torch.Tensor = torch.fft.irfft2(normalized, s=(h, w), norm=self.fft_norm)
        return y.to(x.dtype)

    @torch.no_grad()
    def fold(self) -> FoldedSpectralBatchNorm2d:
        """The eval-mode function as a :class:`FoldedSpectralBatchNorm2d` (running statistics frozen)."""
        dtype = torch.promote_types(self.weight.dtype, _DTYPES[self.compute_dtype])
        mean, var = self._running_statistics(dtype)
        scale = self.weight.to(dtype) * torch.rsqrt(var + self.eps)
        offset = self.bias.to(dtype) - scale * mean
        return FoldedSpectralBatchNorm2d(scale, torch.view_as_real(offset), self.fft_norm, self.compute_dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, fft_norm={self.fft_norm!r}, "
            f"unbiased_n={self.unbiased_n!r}, compute_dtype={self.compute_dtype!r}"
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
        offset = torch.view_as_complex(self.offset.to(dtype).contiguous())
        ones = torch.ones(h, w // 2 + 1, dtype=offset.dtype, device=offset.device)
        pattern: torch.Tensor = torch.fft.irfft2(_per_channel(offset) * ones, s=(h, w), norm=self.fft_norm)
        return pattern

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
