"""Squeeze-and-Remember (SR): a learned, input-weighted memory added after a deep stage (METHODS.md §2).

Paper: Cakaj, Mehnert, Yang, "Squeeze-and-Remember Block", ICMLA 2024, arXiv 2410.00823.

After the output of stage M (before stage M+1) the block computes, for an input ``X`` of shape B×C×H×W::

    s = flatten(Conv1×1_{C→1}(X))                  # B × HW
    α = softmax(FC_{U→P}(φ(FC_{HW→U}(s))))         # B × P
    X̂ = X + Σ_p α_p · M_p                          # memory M: P × C × H × W, zero-initialized

so the block is exactly the identity at init, the same function in training and evaluation, and has no
extra loss [paper]. It adds ``C + HW·U + U·P + P·CHW`` parameters (no biases): 2,011,360 = 7.87 % on
ImageNet ResNet-50 with M=3, P=10, U=16. ``H, W`` are found by running ``ctx.example_input`` through the
model (a forward hook on the site's module), so the block is tied to that input size.

Defaults: M=3, P=10, U=16, the paper's best ImageNet ResNet-50 setting [choice, METHODS.md §2c]. The paper
uses U=8 on CIFAR ResNets (VGG: not stated, 8 [choice]) and per-model (M, P) from {3, 4} × {2..12}.
Initialization [paper]: squeeze conv U(−√k, √k), k = 1/C (PyTorch's default for a 1×1 conv); memory zeros.
The companion regularizers of the paper's tables (dropout, dropout2d, DropBlock) are separate methods.

Choices where the paper is silent (all options of :class:`SR.Config`, defaults from METHODS.md §2h):

* ``hidden_activation``: ``identity`` (the text only says "the first layer linearly transforms"); ``relu``.
* ``bias``: ``False`` (the paper's overhead formula counts no biases).
* ``fcn_init``: ``torch_default`` (PyTorch's ``Linear`` init, k = 1/fan_in); ``paper_literal`` reads "the
  same uniform distribution" literally, U(−√k, √k) with the squeeze conv's k = 1/C.
* ``site``: ``stage_output``; ``bottleneck_inner`` puts the block inside the stage's last bottleneck, after
  its 3×3 conv + BN (before the ReLU), which reproduces the CIFAR ResNet-50 overheads.
* ``on_size_mismatch``: ``error`` (the parameters are tied to (C, H, W); the message names both sizes);
  ``interpolate`` resizes the squeezed map to H×W and the memory to the input's size, bilinearly.
* ``memory_weight_decay``: ``None`` = the global weight decay, like every other SR parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Context
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.sites import Site, find_sites, insert_at

__all__ = ["SR", "SqueezeRemember"]


class SqueezeRemember(nn.Module):
    """The SR block for inputs of shape B×C×H×W.

    Args:
        channels: C.
        height: H.
        width: W.
        memory_blocks: P, the number of memory tensors (each C×H×W, zero-initialized).
        hidden: U, the width of the first fully connected layer.
        hidden_activation: ``"identity"`` or ``"relu"`` between the two fully connected layers.
        bias: whether the squeeze conv and the fully connected layers have biases.
        fcn_init: ``"torch_default"`` or ``"paper_literal"`` (U(−√k, √k), k = 1/C).
        on_size_mismatch: ``"error"`` or ``"interpolate"`` for inputs of another H×W.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        memory_blocks: int = 10,
        hidden: int = 16,
        hidden_activation: Literal["identity", "relu"] = "identity",
        bias: bool = False,
        fcn_init: Literal["torch_default", "paper_literal"] = "torch_default",
        on_size_mismatch: Literal["error", "interpolate"] = "error",
    ) -> None:
        super().__init__()
        self.size = (channels, height, width)
        self.on_size_mismatch = on_size_mismatch
        self.squeeze = nn.Conv2d(channels, 1, 1, bias=bias)
        self.fc1 = nn.Linear(height * width, hidden, bias=bias)
        self.act: nn.Module = nn.ReLU() if hidden_activation == "relu" else nn.Identity()
        self.fc2 = nn.Linear(hidden, memory_blocks, bias=bias)
        self.memory = nn.Parameter(torch.zeros(memory_blocks, channels, height, width))
        if fcn_init == "paper_literal":
            bound = math.sqrt(1.0 / channels)
            for p in (*self.fc1.parameters(), *self.fc2.parameters()):
                nn.init.uniform_(p, -bound, bound)

    def weights(self, x: Tensor) -> Tensor:
        """The softmax weights α (B × P) over the memory blocks."""
        s = self.squeeze(x)
        if s.shape[-2:] != self.size[1:]:
            s = F.interpolate(s, size=self.size[1:], mode="bilinear", align_corners=False)
        return torch.softmax(self.fc2(self.act(self.fc1(s.flatten(1)))), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        alpha = self.weights(x)
        memory: Tensor = self.memory
        if x.shape[-2:] != memory.shape[-2:]:
            memory = F.interpolate(memory, size=x.shape[-2:], mode="bilinear", align_corners=False)
        recalled = (alpha @ memory.flatten(1)).view(x.shape[0], *memory.shape[1:])
        return x + recalled

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:  # batched only, like the stages around it (the memory is mixed per sample)
            raise ValueError(
                f"SR block expects a 4-D (N, C, H, W) input, got {x.dim()}-D shape {tuple(x.shape)}"
                + ("; add a batch dimension, e.g. x.unsqueeze(0)" if x.dim() == 3 else "")
            )
        got = tuple(x.shape[1:])
        if got[0] != self.size[0]:
            raise ValueError(
                f"SR block built for inputs of shape (C, H, W) = {self.size} got an input of shape "
                f"{tuple(x.shape)}; the channel count must match"
            )
        if got != self.size and self.on_size_mismatch == "error":
            raise ValueError(
                f"SR block built for inputs of shape (C, H, W) = {self.size} (from the example input) "
                f"got (C, H, W) = {got}: feed inputs of the size of the example input, or set "
                "on_size_mismatch='interpolate' to resize the memory bilinearly"
            )

    def extra_repr(self) -> str:
        return f"size={self.size}, on_size_mismatch={self.on_size_mismatch!r}"


class SR(Method):
    """Squeeze-and-Remember block after stage ``stage``.

    Args:
        stage: M, the stage after which the block sits (1-based; negative counts from the last).
        memory_blocks: P, the number of memory tensors.
        hidden: U, the hidden width of the fully connected network.
        hidden_activation, bias, fcn_init, site, on_size_mismatch, memory_weight_decay: see the module
            docstring.
    """

    name = "sr"
    kind = "regularizer"

    class Config(MethodConfig):
        stage: int = Field(3, ge=-16, le=16, description="M: the block sits after stage M (not 0)")
        memory_blocks: int = Field(10, ge=1, le=1024, description="P: number of memory tensors")
        hidden: int = Field(16, ge=1, le=4096, description="U: hidden width of the FC network")
        hidden_activation: Literal["identity", "relu"] = "identity"
        bias: bool = False
        fcn_init: Literal["torch_default", "paper_literal"] = "torch_default"
        site: Literal["stage_output", "bottleneck_inner"] = "stage_output"
        on_size_mismatch: Literal["error", "interpolate"] = "error"
        memory_weight_decay: float | None = Field(
            None, ge=0.0, le=1.0, description="None: the global weight decay"
        )

        @field_validator("stage")
        @classmethod
        def _nonzero(cls, value: int) -> int:
            if value == 0:
                raise ValueError("stage is 1-based (negative counts from the last stage); 0 is not a stage")
            return value

    config: Config
    contract_config = MappingProxyType({"stage": 2, "memory_blocks": 3, "hidden": 4})

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        site = self._site(model, ctx)
        channels, height, width = _traced_size(model, site.module, ctx.example_input, site.name)
        cfg = self.config
        block = SqueezeRemember(
            channels,
            height,
            width,
            memory_blocks=cfg.memory_blocks,
            hidden=cfg.hidden,
            hidden_activation=cfg.hidden_activation,
            bias=cfg.bias,
            fcn_init=cfg.fcn_init,
            on_size_mismatch=cfg.on_size_mismatch,
        )
        param = next(model.parameters(), None)
        if param is not None:
            block.to(device=param.device)
            if param.is_floating_point():
                block.to(dtype=param.dtype)
        return insert_at(model, site, block)

    def _site(self, model: nn.Module, ctx: Context) -> Site:
        try:
            kind: Literal["stage", "block"] = "stage" if self.config.site == "stage_output" else "block"
            sites = find_sites(
                model,
                stages=[self.config.stage],
                kind=kind,
                position="after",
                example_input=ctx.example_input,
            )
        except (ValueError, TypeError) as exc:
            raise MethodNotApplicableError(
                f"SR cannot be placed after stage {self.config.stage}: {exc}"
            ) from exc
        if not sites:
            raise MethodNotApplicableError(f"SR: stage {self.config.stage} has no site")
        return sites[-1] if self.config.site == "stage_output" else _bottleneck_site(sites[-1])

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.config.memory_weight_decay is None:
            return []
        memories = [m.memory for m in model.modules() if isinstance(m, SqueezeRemember)]
        return [{"params": memories, "weight_decay": self.config.memory_weight_decay}] if memories else []

    def stats(self, model: nn.Module) -> dict[str, float]:
        blocks = [m for m in model.modules() if isinstance(m, SqueezeRemember)]
        with torch.no_grad():
            return {
                "sr_blocks": float(len(blocks)),
                "sr_params": float(sum(p.numel() for b in blocks for p in b.parameters())),
                "sr_memory_norm": float(sum(float(b.memory.norm()) for b in blocks)),
            }


def _bottleneck_site(block: Site) -> Site:
    """The site after the 3×3 conv's BN (``bn2``) of a bottleneck block (``conv1..conv3``, ``bn1..bn3``)."""
    module = block.module
    if not all(hasattr(module, n) for n in ("conv3", "bn2")):
        raise MethodNotApplicableError(
            f"SR site='bottleneck_inner' needs bottleneck blocks (with conv3 and bn2); the last block of "
            f"stage {block.stage} ({block.name!r}) is a {type(module).__name__}"
        )
    bn2 = module.get_submodule("bn2")
    return Site(name=f"{block.name}.bn2", module=bn2, stage=block.stage, kind="bn", position="after")


def _traced_size(
    model: nn.Module, module: nn.Module, example_input: Tensor, where: str
) -> tuple[int, int, int]:
    """(C, H, W) of ``module``'s output for ``example_input[:1]`` (eval mode, no grad, flags restored)."""
    shapes: list[tuple[int, ...]] = []
    handle = module.register_forward_hook(_recorder(shapes))
    training = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    x = example_input[:1] if param is None else example_input[:1].to(param.device)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        for m, flag in training:
            m.training = flag
    if not shapes or len(shapes[0]) != 4:
        got = "was not called" if not shapes else f"gave shape {shapes[0]}"
        raise MethodNotApplicableError(f"SR needs a B×C×H×W feature map at {where!r}, but the module {got}")
    _, c, h, w = shapes[0]
    return c, h, w


def _recorder(shapes: list[tuple[int, ...]]) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not shapes and isinstance(output, Tensor):
            shapes.append(tuple(output.shape))
        elif not shapes:
            shapes.append(())

    return hook
