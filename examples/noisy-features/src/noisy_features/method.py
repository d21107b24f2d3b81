"""FeatureNoise: additive Gaussian noise after chosen stages, training only.

An example of a cnnkit method written by a third party: a pydantic ``Config`` with validated ranges,
placement through :func:`cnnkit.core.sites.find_sites`, and an ``export`` that removes what it inserted.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cnnkit.core import Context, Method, MethodConfig
from cnnkit.core.sites import find_sites, insert_at, unwrap_inserted


class GaussianNoise(nn.Module):
    """x + σ·ε (ε ~ N(0, 1)) in training mode; identity in eval mode."""

    def __init__(self, sigma: float, relative: bool) -> None:
        super().__init__()
        self.sigma = sigma
        self.relative = relative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0.0:
            return x
        scale = self.sigma
        if self.relative:
            scale = self.sigma * x.detach().flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))
        return x + scale * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, relative={self.relative}"


class FeatureNoise(Method):
    """Gaussian feature noise after the selected stages.

    Args:
        sigma: noise standard deviation (relative to the feature std when ``relative``).
        stages: stage numbers (1-based, negative counts from the end) after which noise is added.
        relative: scale the noise by each sample's feature standard deviation.
    """

    name = "feature_noise"
    kind = "regularizer"

    class Config(MethodConfig):
        sigma: float = Field(0.1, ge=0.0, le=10.0, description="noise standard deviation")
        stages: tuple[int, ...] = Field((-1,), min_length=1, description="stages to act after")
        relative: bool = True
        position: Literal["after"] = "after"

    config: Config

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        sites = find_sites(
            model,
            stages=self.config.stages,
            kind="stage",
            position=self.config.position,
            example_input=ctx.example_input,
        )
        for site in sites:
            insert_at(model, site, GaussianNoise(self.config.sigma, self.config.relative))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return unwrap_inserted(model, lambda module: isinstance(module, GaussianNoise))

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"noise_sites": float(sum(isinstance(m, GaussianNoise) for m in model.modules()))}
