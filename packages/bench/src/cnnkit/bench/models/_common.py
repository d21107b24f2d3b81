"""Helpers shared by the model zoo: the stage-declaration type and weight initialization."""

from __future__ import annotations

from typing import TypeAlias

from torch import nn

__all__ = ["Stages", "declare_stages", "init_weights", "replace_conv_in_channels"]

#: The value of a model's ``cnnkit_stages`` attribute (see :func:`cnnkit.core.sites.stage_names`): per stage,
#: one submodule name or a tuple of the qualified names of the consecutive modules forming it.
Stages: TypeAlias = tuple[str | tuple[str, ...], ...]


def declare_stages(model: nn.Module, stages: Stages) -> None:
    """Set ``model.cnnkit_stages`` (a plain tuple attribute, not a submodule) on a model built elsewhere."""
    setattr(model, "cnnkit_stages", stages)  # noqa: B010 (nn.Module's __setattr__ is typed for tensors/modules)


def init_weights(model: nn.Module, *, linear_std: float | None = None) -> None:
    """He (fan-out) init for convolutions, BN weight 1 / bias 0; linear layers get ``N(0, linear_std²)``
    with zero bias when ``linear_std`` is given, else PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def replace_conv_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh :class:`~torch.nn.Conv2d` like ``conv`` (kernel, stride, padding, dilation, groups, bias,
    padding mode, dtype, device) but with ``in_channels`` inputs, He-initialized."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
