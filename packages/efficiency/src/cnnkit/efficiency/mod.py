"""CNN Mixture-of-Depths (MoD): every second ResNet block computes on its top-k channels only (METHODS.md §7).

Paper: Cakaj, Mehnert, Yang, "CNN Mixture-of-Depths", ACCV 2024, arXiv 2409.17016.

A MoD block replaces a standard residual block that keeps its input shape. For an input ``X`` (B×C×H×W)
[paper]::

    s = σ(W_b·φ(W_a·GAP(X)))               # channel selector, W_a: (C/r)×C, W_b: C×(C/r), r = 16, no bias
    (v, idx) = top-k(s),  k = ⌊C/c⌋        # c = 64 for ResNets: k = 4/8/16/32 (bottleneck), 1/2/4/8 (basic)
    X_sel = gather(X, idx)                 # B×k×H×W
    X̂ = f(X_sel) ⊙ v                       # f: bottleneck 1×1 k→k/4, 3×3, 1×1 k/4→k; or basic 3×3 k→k twice
    X̄[:, :k] = X[:, :k] + X̂,  X̄[:, k:] = X[:, k:]

Every conv of ``f`` is followed by BN, with ReLU between (not after the last BN). The multiplication by the
scores is the only gradient path into the selector. All tensor sizes are fixed (hard top-k, k constant),
so the graph is static: no auxiliary loss, the same computation in training and inference [paper].

Placement [paper]: each stage keeps its first (standard) block, which changes stride and width; then MoD
and standard blocks alternate (block indices 1, 3, 5, ... are MoD), so depth is unchanged.
:class:`MoD` converts a ResNet (torchvision, the bench's CIFAR ResNets, ``cnnkit.core.testing.TinyResNet``)
in place; :mod:`cnnkit.efficiency.models` builds the paper's ResNet-MoD family (R18- to R152-MoD).

Initialization: selector PyTorch's default [choice, §7e]; the reduced block's convs Kaiming-uniform with
default arguments and BN γ = 1, β = 0 (the papers' ResNet init, §1.2) [choice]. No extra loss, global weight
decay [choice].

Choices where the paper is silent (all options of :class:`MoD.Config`, defaults from METHODS.md §7h):

* ``selector_activation``: ``relu`` (SE-like) | ``identity``; ``selector_bias``: ``False`` (with biases
  R75-MoD would have 23.11 M parameters, not the paper's 23.10 M).
* ``inner_residual``: ``False`` — the reduced block has no shortcut of its own, the fusion add is the
  residual; ``post_fusion_relu``: ``False`` (literal reading: the sum is "passed on without additional
  adjustments"). The last BN and the score multiplication come before the fusion.
* ``selected_order``: ``score`` (``topk`` order: the most important channel lands on channel 0) | ``index``
  (the selected channels in their original order).
* ``fuse_to``: ``first`` (the paper) | ``last`` ("MoD-lk") | ``original`` (add back at the selected
  channels' own positions, the paper's Table 10 ablation).
* ``selection``: ``learned`` | ``random`` (k channels drawn uniformly per sample and forward pass, scores 1,
  no selector parameters: the paper's "MoD50 random selection").
* ``c`` = 64 (ResNets), ``min_k`` = 1: a block with ``⌊C/c⌋ < min_k`` raises an error naming ``c`` and C.
  The bottleneck's inner width is ``max(1, k // 4)`` [choice].
* ``placement``: ``alternate`` (the paper) | ``every`` (every block that keeps its input shape, the paper's
  "MoD in every block" ablation); ``stages``: ``None`` = all stages.
* ``min_blocks`` = 1: :meth:`MoD.apply` raises :class:`~cnnkit.core.method.MethodNotApplicableError` if
  fewer blocks can be converted (e.g. on a VGG); 0 lets such a model pass unchanged.
* ``block_init``: ``kaiming_uniform`` | ``kaiming_normal_fan_out`` (torchvision's ResNet init).
* ``inplace_fusion``: ``True``. Outside autograd (inference) the fusion adds ``X̂`` into ``X`` itself, like
  ``nn.ReLU(inplace=True)``: the block's input tensor is overwritten. Inside a ResNet nothing else reads it
  (a MoD block is never first in its stage, so its input is the previous block's fresh output); a caller
  that keeps the input, or a forward hook that stores the previous block's output, needs ``False``, which
  adds into a copy. The copy cost 6 % of an R50-MoD CPU forward at batch 16 (fresh 51 MB buffers per
  block; 0.3 % at batch 1): the fusion bottleneck the paper's profiler found. With autograd (training) the
  fusion is always a ``cat``: autograd needs ``X`` (the previous ReLU's output) unchanged.

Speed (``benchmarks/mod_latency.py``): with the in-place fusion the MoD-specific work (selector, top-k,
gather, reduced block, fusion) is below 2 % of an R50-MoD CPU forward; the gather is an ``index_select`` at
batch 1 and advanced indexing otherwise (the fastest of ``gather``, sorted indices and advanced indexing).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Context
from cnnkit.core.cost import count_flops
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.sites import stage_names

__all__ = ["MoD", "MoDBlock", "ReducedBlock", "convert_resnet", "mod_blocks"]

BlockKind = Literal["basic", "bottleneck"]
Order = Literal["score", "index"]
FuseTo = Literal["first", "last", "original"]
Selection = Literal["learned", "random"]
Placement = Literal["alternate", "every"]
BlockInit = Literal["kaiming_uniform", "kaiming_normal_fan_out"]


class ReducedBlock(nn.Module):
    """The block ``f`` on the k selected channels: bottleneck (1×1 k→m, 3×3 m→m, 1×1 m→k, m = max(1, k//4))
    or basic (3×3 k→k twice); every conv followed by BN, ReLU between, none after the last BN.

    Args:
        kind: ``"bottleneck"`` or ``"basic"``.
        k: number of selected channels.
        init: conv weight init (``"kaiming_uniform"`` or ``"kaiming_normal_fan_out"``).
    """

    def __init__(self, kind: BlockKind, k: int, init: BlockInit = "kaiming_uniform") -> None:
        super().__init__()
        m = max(1, k // 4) if kind == "bottleneck" else k
        convs = (
            [nn.Conv2d(k, m, 1, bias=False), _conv3x3(m, m), nn.Conv2d(m, k, 1, bias=False)]
            if kind == "bottleneck"
            else [_conv3x3(k, k), _conv3x3(k, k)]
        )
        self.depth = len(convs)
        for i, conv in enumerate(convs, 1):
            _init_conv(conv, init)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", nn.BatchNorm2d(conv.out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            if i < self.depth:
                x = self.relu(x)
        return x


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


def _init_conv(conv: nn.Conv2d, init: BlockInit) -> None:
    if init == "kaiming_uniform":
        nn.init.kaiming_uniform_(conv.weight)
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class ChannelSelector(nn.Module):
    """SE-like channel scores ``σ(fc2(φ(fc1(GAP(x)))))`` (B×C), fc1: C→max(1, C/r).

    Args:
        channels: C.
        reduction: r.
        activation: φ, ``"relu"`` or ``"identity"``.
        bias: whether the fully connected layers have biases.
    """

    def __init__(
        self, channels: int, reduction: int = 16, activation: str = "relu", bias: bool = False
    ) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.act: nn.Module = nn.ReLU(inplace=True) if activation == "relu" else nn.Identity()
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3))))))


def k_for(channels: int, c: int, min_k: int = 1) -> int:
    """k = ⌊C/c⌋; raises ``ValueError`` (naming c and C) when it is below ``min_k``."""
    if c < 1:
        raise ValueError(f"MoD: c must be >= 1, got {c}")
    k = channels // c
    if k < min_k:
        raise ValueError(
            f"MoD: c={c} is too large for a block with {channels} channels: k = {channels}//{c} = {k} < "
            f"min_k={min_k}; choose c <= {channels // max(min_k, 1)}"
        )
    return k


class MoDBlock(nn.Module):
    """A CNN Mixture-of-Depths block on C channels (input and output B×C×H×W).

    Args:
        channels: C.
        kind: the reduced block, ``"bottleneck"`` or ``"basic"``.
        c: k = ⌊C/c⌋ channels are processed.
        reduction: the selector's r.
        min_k, selector_activation, selector_bias, inner_residual, post_fusion_relu, selected_order,
            fuse_to, selection, block_init, inplace_fusion: see the module docstring.
    """

    def __init__(
        self,
        channels: int,
        kind: BlockKind,
        *,
        c: int = 64,
        reduction: int = 16,
        min_k: int = 1,
        selector_activation: Literal["relu", "identity"] = "relu",
        selector_bias: bool = False,
        inner_residual: bool = False,
        post_fusion_relu: bool = False,
        selected_order: Order = "score",
        fuse_to: FuseTo = "first",
        selection: Selection = "learned",
        block_init: BlockInit = "kaiming_uniform",
        inplace_fusion: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("basic", "bottleneck"):
            raise ValueError(f"MoD: kind must be 'basic' or 'bottleneck', got {kind!r}")
        self.channels, self.kind = channels, kind
        self.k = k_for(channels, c, min_k)
        self.selected_order, self.fuse_to, self.selection = selected_order, fuse_to, selection
        self.inner_residual, self.post_fusion_relu = inner_residual, post_fusion_relu
        self.inplace_fusion = inplace_fusion
        self.selector: ChannelSelector | None = None
        if selection == "learned":
            self.selector = ChannelSelector(channels, reduction, selector_activation, selector_bias)
        self.block = ReducedBlock(kind, self.k, block_init)

    def select(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, idx)``: the scores (B×k) and indices (B×k, int64) of the selected channels."""
        if self.selector is None:
            scores = torch.rand(x.shape[0], self.channels, device=x.device)
            idx = scores.topk(self.k, dim=1).indices
            v = torch.ones(idx.shape, device=x.device, dtype=x.dtype)
        else:
            v, idx = self.selector(x).topk(self.k, dim=1)
        if self.selected_order == "index":
            idx, order = idx.sort(dim=1)
            v = v.gather(1, order)
        return v, idx

    def forward(self, x: Tensor) -> Tensor:
        v, idx = self.select(x)
        xs = gather_channels(x, idx)
        y = self.block(xs)
        if self.inner_residual:
            y = y + xs
        y = y * v[:, :, None, None].to(y.dtype)
        out = self.fuse(x, y, idx)
        return torch.relu(out) if self.post_fusion_relu else out

    def fuse(self, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """``x`` with ``y`` (B×k×H×W) added onto the first / last k channels or the selected ones."""
        autograd = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
        if self.fuse_to == "original":
            index = idx[:, :, None, None].expand_as(y)
            if autograd or not self.inplace_fusion:
                return x.scatter_add(1, index, y)
            return x.scatter_add_(1, index, y)
        k, c = self.k, self.channels
        lo, hi = (0, k) if self.fuse_to == "first" else (c - k, c)
        if autograd or torch.compiler.is_compiling():  # inductor turns the cat into in-place writes itself
            parts = [x[:, :lo], x[:, lo:hi] + y, x[:, hi:]]
            return torch.cat([p for p in parts if p.shape[1] > 0], dim=1)
        out = x if self.inplace_fusion else x.clone()
        out[:, lo:hi].add_(y)
        return out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, k={self.k}, kind={self.kind!r}, selection={self.selection!r}, "
            f"order={self.selected_order!r}, fuse_to={self.fuse_to!r}"
        )


def gather_channels(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for each sample: B×C×H×W, B×k → B×k×H×W (``index_select`` at B = 1, else advanced
    indexing, which copies whole H×W planes: 3× faster than ``gather`` with broadcast indices on CPU)."""
    if x.shape[0] == 1:
        return x.index_select(1, idx[0])
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


# --------------------------------------------------------------------------------------------- conversion


def block_kind(block: nn.Module) -> tuple[BlockKind, int] | str:
    """``(kind, C)`` for a residual block MoD can replace, else the reason why it cannot."""
    convs = [getattr(block, f"conv{i}", None) for i in (1, 2, 3)]
    if not all(isinstance(conv, nn.Conv2d) for conv in convs[:2]):
        return f"{type(block).__name__} is not a ResNet BasicBlock/Bottleneck (no conv1/conv2)"
    used = [conv for conv in convs if isinstance(conv, nn.Conv2d)]
    if any(s != 1 for conv in used for s in conv.stride):
        return "it is strided (changes the resolution)"
    if used[0].in_channels != used[-1].out_channels:
        return f"it changes the width ({used[0].in_channels} -> {used[-1].out_channels} channels)"
    for name in ("downsample", "shortcut"):
        shortcut = getattr(block, name, None)
        if shortcut is not None and not isinstance(shortcut, nn.Identity):
            return f"its {name} is not the identity"
    return ("bottleneck" if len(used) == 3 else "basic"), used[0].in_channels


def _stage_blocks(model: nn.Module, stages: Sequence[int] | None) -> list[list[tuple[str, nn.Module]]]:
    try:
        names = stage_names(model)
    except ValueError as exc:
        raise MethodNotApplicableError(f"MoD needs a ResNet with stages layer1, layer2, ...: {exc}") from exc
    chosen = range(1, len(names) + 1) if stages is None else stages
    result = []
    for s in chosen:
        if not -len(names) <= s <= len(names) or s == 0:
            raise MethodNotApplicableError(
                f"MoD: config field 'stages' names stage {s}; this model has stages 1..{len(names)}"
            )
        members = [(n, model.get_submodule(n)) for n in names[s - 1 if s > 0 else s]]
        if len(members) == 1 and isinstance(members[0][1], nn.Sequential):
            prefix = members[0][0]
            members = [(f"{prefix}.{i}", child) for i, child in enumerate(members[0][1].children())]
        result.append(members)
    return result


def _targets(
    blocks: list[tuple[str, nn.Module]], placement: Placement
) -> list[tuple[str, BlockKind, int] | tuple[str, str]]:
    out: list[tuple[str, BlockKind, int] | tuple[str, str]] = []
    for i, (name, block) in enumerate(blocks):
        if placement == "alternate" and i % 2 == 0:
            continue
        found = block_kind(block)
        out.append((name, found) if isinstance(found, str) else (name, *found))
    return out


def convert_resnet(
    model: nn.Module,
    *,
    placement: Placement = "alternate",
    stages: Sequence[int] | None = None,
    strict: bool = True,
    **block_options: Any,
) -> list[str]:
    """Replace, in place, the blocks of each stage by :class:`MoDBlock` s; returns their qualified names.

    ``placement="alternate"``: block indices 1, 3, 5, ... of each stage (the paper); ``"every"``: every block
    that keeps its input shape. ``block_options`` go to :class:`MoDBlock` (``c``, ``fuse_to``, ...).
    With ``strict`` a block of the ``alternate`` pattern that cannot be converted raises
    :class:`~cnnkit.core.method.MethodNotApplicableError`; ``"every"`` skips blocks that change the shape.
    """
    plan: list[tuple[str, MoDBlock]] = []
    for blocks in _stage_blocks(model, stages):
        for target in _targets(blocks, placement):
            if len(target) == 2:
                if strict and placement == "alternate":
                    raise MethodNotApplicableError(f"MoD cannot replace block {target[0]!r}: {target[1]}")
                continue
            name, kind, channels = target
            try:
                plan.append((name, MoDBlock(channels, kind, **block_options)))
            except ValueError as exc:
                raise MethodNotApplicableError(f"{exc} (block {name!r})") from exc
    param = next(model.parameters(), None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    nhwc = conv is not None and _is_channels_last(conv.weight)
    for name, new in plan:
        if param is not None:
            new.to(device=param.device, dtype=param.dtype)
        if nhwc:
            new.to(memory_format=torch.channels_last)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
    return [name for name, _ in plan]


def _is_channels_last(weight: Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def mod_blocks(model: nn.Module) -> list[tuple[str, MoDBlock]]:
    """The :class:`MoDBlock` s of ``model`` with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoDBlock)]


# --------------------------------------------------------------------------------------------- method


class MoD(Method):
    """Convert a ResNet in place into its Mixture-of-Depths form (every second block of each stage).

    Args:
        c: k = ⌊C/c⌋ channels per MoD block (64 for ResNets).
        reduction: r of the selector.
        placement, stages, min_blocks, min_k, selector_activation, selector_bias, inner_residual,
            post_fusion_relu, selected_order, fuse_to, selection, block_init, inplace_fusion: see the module
            docstring.
    """

    name = "mod"
    kind = "efficiency"

    class Config(MethodConfig):
        c: int = Field(64, ge=1, le=65536, description="k = C // c channels are processed per MoD block")
        reduction: int = Field(16, ge=1, le=4096, description="r: selector reduction C -> C/r")
        min_k: int = Field(1, ge=1, le=65536, description="smallest allowed k (else an error)")
        placement: Placement = "alternate"
        stages: tuple[int, ...] | None = Field(None, min_length=1, description="1-based stages; None: all")
        min_blocks: int = Field(1, ge=0, description="fewer convertible blocks raise; 0 allows none")
        selector_activation: Literal["relu", "identity"] = "relu"
        selector_bias: bool = False
        inner_residual: bool = False
        post_fusion_relu: bool = False
        selected_order: Order = "score"
        fuse_to: FuseTo = "first"
        selection: Selection = "learned"
        block_init: BlockInit = "kaiming_uniform"
        inplace_fusion: bool = True

        @field_validator("stages")
        @classmethod
        def _nonzero(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
            if value is not None and 0 in value:
                raise ValueError("stages are 1-based (negative counts from the last stage); 0 is not a stage")
            return value

    config: Config
    # The contract's tiny models have one block per stage and 8-32 channels: TinyResNet gets its shape-keeping
    # layer1.0 converted (k = 2); TinyVGG has no residual block: the contract skips it (not applicable).
    contract_config: ClassVar[MappingProxyType[str, Any]] = MappingProxyType({"c": 4, "placement": "every"})

    def __init__(self, *, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._dense_macs: float | None = None
        self._example: Tensor | None = None

    def block_options(self) -> dict[str, Any]:
        """The :class:`MoDBlock` keyword arguments of this config."""
        skip = {"placement", "stages", "min_blocks"}
        return {k: v for k, v in self.config.model_dump().items() if k not in skip}

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        cfg = self.config
        example = ctx.example_input[:1] if ctx.example_input is not None else None
        dense = count_flops(model, example).macs if example is not None else None
        converted = convert_resnet(model, placement=cfg.placement, stages=cfg.stages, **self.block_options())
        if len(converted) < cfg.min_blocks:
            raise MethodNotApplicableError(
                f"MoD converted {len(converted)} block(s) of {type(model).__name__}, fewer than "
                f"min_blocks={cfg.min_blocks}: it needs residual stages with blocks that keep their shape "
                f"(placement={cfg.placement!r})"
            )
        self._dense_macs = float(dense) if dense is not None else None
        self._example = example.detach().cpu() if example is not None else None
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        blocks = mod_blocks(model)
        out = {"mod_blocks": float(len(blocks))}
        out.update({f"mod_k.{name}": float(block.k) for name, block in blocks})
        if self._example is not None:
            param = next(model.parameters(), None)
            example = self._example if param is None else self._example.to(param.device)
            macs = float(count_flops(model, example).macs)
            out["mod_macs"] = macs
            if self._dense_macs:
                out["dense_macs"] = self._dense_macs
                out["mod_macs_ratio"] = macs / self._dense_macs
        return out
