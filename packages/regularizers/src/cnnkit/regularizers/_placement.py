"""Where the spectral dropouts act relative to each convolution (shared by SWD and SFD).

METHODS.md §3d / §4d [paper]: at high resolution (ImageNet) 1-D variants go *before* every conv, at low
resolution (CIFAR) *after* every conv; 2-D variants go before every conv at both resolutions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cnnkit.core.context import Context
from cnnkit.core.method import Method
from cnnkit.core.sites import insert_at, require_sites, unwrap_inserted

HIGH_RESOLUTION_PX = 128
"""An example input whose shorter side is at least this many pixels counts as high resolution (ImageNet)."""


def resolve_position(
    position: Literal["auto", "before", "after"], variant: str, example_input: torch.Tensor
) -> Literal["before", "after"]:
    """``position`` unless it is ``"auto"``; then the paper's rule for ``variant`` at this input size."""
    if position != "auto":
        return position
    if variant == "2d":
        return "before"
    shorter = min(example_input.shape[-2:]) if example_input.dim() >= 3 else 0
    return "before" if shorter >= HIGH_RESOLUTION_PX else "after"


class ConvSiteLayerMethod(Method):
    """Base of SWD and SFD: one train-only layer per conv of the chosen stages, before or after it.

    Subclasses set ``layer_type`` and implement :meth:`make_layer`; their ``Config`` has ``variant``,
    ``stages``, ``position`` and ``include_shortcuts``. ``export`` removes the layers (they are the
    identity in eval mode); ``stats`` counts them.
    """

    layer_type: ClassVar[type[nn.Module]] = nn.Module

    def make_layer(self) -> nn.Module:
        raise NotImplementedError

    def position(self, ctx: Context) -> Literal["before", "after"]:
        """The resolved placement relative to each conv (see :func:`resolve_position`)."""
        cfg: Any = self.config
        return resolve_position(cfg.position, cfg.variant, ctx.example_input)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        cfg: Any = self.config
        sites = require_sites(
            model,
            method=self.name,
            stages=cfg.stages,
            example_input=ctx.example_input,
            kind="conv",
            position=self.position(ctx),
            include_shortcuts=cfg.include_shortcuts,
        )
        for site in sites:
            insert_at(model, site, self.make_layer())
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return unwrap_inserted(model, lambda module: isinstance(module, self.layer_type))

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"sites": float(sum(isinstance(m, self.layer_type) for m in model.modules()))}
