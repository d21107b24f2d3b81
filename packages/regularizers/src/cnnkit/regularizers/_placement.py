"""Where the spectral dropouts act relative to each convolution (shared by SWD and SFD).

METHODS.md §3d / §4d [paper]: at high resolution (ImageNet) 1-D variants go *before* every conv, at low
resolution (CIFAR) *after* every conv; 2-D variants go before every conv at both resolutions.
"""

from __future__ import annotations

from typing import Literal

import torch

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
