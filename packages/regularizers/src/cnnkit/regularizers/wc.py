"""Weight Compander (WC): every conv/linear weight becomes ``w = a·arctan(v/b)`` (METHODS.md §6).

Paper: Cakaj, Mehnert, Yang, "Weight Compander: A Simple Weight Reparameterization for Regularization",
IJCNN 2023, arXiv 2306.16993.

Each ``Conv*d`` / ``nn.Linear`` weight (biases, BN parameters untouched; first conv and classifier
included) is reparametrized with ``torch.nn.utils.parametrize``: the trainable tensor is
``module.parametrizations.weight.original`` (``v``, the very ``Parameter`` the module had) and the module
computes with ``w = Ψ(v) = a·arctan(v/b)``. At :meth:`WC.apply` ``v = b·tan(w₀/a)``, so the initial
function is unchanged. :meth:`WC.export` folds ``Ψ(v)`` back into plain weights (plain ``nn.Conv2d`` /
``nn.Linear``, no parametrizations, the original parameter count).

Weight decay [paper]: with fixed ``a, b`` it acts on ``w = Ψ(v)``, not on ``v``; with learnable per-layer
``a, b`` ("fine" variant) it acts on ``v`` only, never on ``a, b``. Implemented as follows:

* ``psi``: :meth:`WC.param_groups` puts every ``v`` in a group with ``weight_decay=0`` and the gradient of
  ``(λ/2)·Σ‖Ψ(v)‖²``, ``λ·Ψ(v)·Ψ′(v)`` (PyTorch's meaning of "weight decay λ", applied to ``w``), is added
  to ``v.grad`` in :meth:`WC.after_backward`, elementwise and without an autograd graph [choice: the same
  gradient as adding the term to the loss, which recomputed ``Ψ(v)`` and its backward each step; the
  reported loss no longer includes the decay term]. Learnable ``a, b`` and weights with inner
  parametrizations (masks) take that gradient from autograd of the same term, also in
  :meth:`WC.after_backward`. ``λ`` is :attr:`WC.Config.weight_decay`, because a method does not know the
  optimizer's value: set it to the run's weight decay (1e-4 ImageNet / CIFAR-10 ResNets, 5e-4 CIFAR-100
  and CIFAR-10 VGGs).
* ``v``: the ``v`` tensors form a group with ``weight_decay=λ`` (the optimizer's own decay), ``a, b`` a group
  with ``weight_decay=0``; no extra loss.

Defaults: ``a = 0.6, b = 0.7`` (the paper's ImageNet ResNet-50 value) for fixed ``a, b``; ``a = 0.5, b = 1.0``
as the initial values of the learnable variant [paper]. Per-model grid values are in METHODS.md §6c.

Choices where the paper is silent (all options of :class:`WC.Config`, defaults from METHODS.md §6h):

* ``function``: ``arctan`` [paper]; ``erf`` and ``arsinh`` (the paper's Table VII) as ``a·f(v/b)``.
* ``positivity``: ``none`` — learnable ``a, b`` are unconstrained (the paper reports absolute values of
  ``a``); ``softplus`` stores pre-softplus values in the ``a`` / ``b`` parameters.
* ``init_clamp`` (1e-3) and ``on_init_overflow`` (``clamp``): a weight with ``|w₀| ≥ a·π/2`` has no
  preimage (``tan`` blows up); ``w₀/a`` is clamped to ``±(π/2 − init_clamp)`` (``±(1 − init_clamp)`` for
  ``erf``), which changes those entries (a warning says how many; ``stats`` reports it), or ``error``
  raises. Standard inits are far inside the bound.
* ``weight_decay_on``: ``auto`` = ``psi`` for fixed, ``v`` for learnable ``a, b`` (the paper per variant).
* ``adaptive_optimizer``: ``off``; ``powerprop_rescale`` applies the Powerpropagation-style modified
  adaptive optimizer the paper proposes but does not evaluate: the optimizer steps on ``∂L/∂w``
  (``v.grad / Ψ′(v)``) and the resulting update of ``v`` is multiplied by ``Ψ′(v)`` (for Adam / AdamW).

A weight that already carries another parametrization (e.g. a mask) gets the compander as its outermost
one, and is re-assigned its current value so that the inner right-inverses run; ``export`` then bakes all
of that tensor's parametrizations (like :func:`cnnkit.core.masks.bake_masks`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Context
from cnnkit.core.masks import maskable_modules, remove_parametrizations
from cnnkit.core.method import Method, MethodNotApplicableError

__all__ = ["WC", "Compander", "compander_layers"]

FunctionName = Literal["arctan", "erf", "arsinh"]

FIXED_A, FIXED_B = 0.6, 0.7
LEARNABLE_A, LEARNABLE_B = 0.5, 1.0


@dataclass(frozen=True)
class _Shape:
    """An S-shape ``f``, its inverse, its derivative and its bound (``|f| < bound``)."""

    f: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    bound: float


def _erf_derivative(z: Tensor) -> Tensor:
    return (2.0 / math.sqrt(math.pi)) * torch.exp(-z * z)


_SHAPES: dict[str, _Shape] = {
    "arctan": _Shape(torch.atan, torch.tan, lambda z: 1.0 / (1.0 + z * z), math.pi / 2),
    "erf": _Shape(torch.erf, torch.erfinv, _erf_derivative, 1.0),
    "arsinh": _Shape(torch.asinh, torch.sinh, lambda z: torch.rsqrt(1.0 + z * z), math.inf),
}


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class Compander(nn.Module):
    """The parametrization ``w = Ψ(v) = a·f(v/b)`` (``f = arctan`` by default).

    Args:
        a: scale (positive). With ``positivity="softplus"`` the effective value; stored pre-softplus.
        b: input scale (positive), likewise.
        like: a tensor whose dtype and device ``a`` and ``b`` take.
        function: ``"arctan"``, ``"erf"`` or ``"arsinh"``.
        learnable: ``a`` and ``b`` are ``nn.Parameter`` (else persistent buffers).
        positivity: ``"none"`` or ``"softplus"`` (``a = softplus(a_stored)``).
        init_clamp: margin below the bound of ``f`` that :meth:`right_inverse` clamps ``w/a`` to.
    """

    a: Tensor
    b: Tensor

    def __init__(
        self,
        a: float,
        b: float,
        like: Tensor,
        *,
        function: FunctionName = "arctan",
        learnable: bool = False,
        positivity: Literal["none", "softplus"] = "none",
        init_clamp: float = 1e-3,
    ) -> None:
        super().__init__()
        self.function = function
        self.shape_fn = _SHAPES[function]
        self.learnable = learnable
        self.positivity = positivity
        self.init_clamp = init_clamp
        for name, value in (("a", a), ("b", b)):
            stored = _inverse_softplus(value) if positivity == "softplus" else value
            tensor = torch.tensor(stored, dtype=like.dtype, device=like.device)
            if learnable:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)

    def scales(self) -> tuple[Tensor, Tensor]:
        """The effective ``(a, b)``."""
        if self.positivity == "softplus":
            return nn.functional.softplus(self.a), nn.functional.softplus(self.b)
        return self.a, self.b

    def forward(self, v: Tensor) -> Tensor:
        a, b = self.scales()
        return a * self.shape_fn.f(v / b)

    def derivative(self, v: Tensor) -> Tensor:
        """``Ψ′(v) = (a/b)·f′(v/b)`` (``a/(b(1+v²/b²))`` for arctan)."""
        a, b = self.scales()
        return (a / b) * self.shape_fn.derivative(v / b)

    def limit(self) -> float:
        """Largest ``|w/a|`` that has a finite preimage after clamping."""
        return self.shape_fn.bound - self.init_clamp

    def overflow(self, w: Tensor) -> Tensor:
        """Boolean mask of the entries of ``w`` that :meth:`right_inverse` clamps."""
        a, _ = self.scales()
        return (w / a.detach()).abs() > self.limit()

    def right_inverse(self, w: Tensor) -> Tensor:
        """``v = b·f⁻¹(clamp(w/a))``: the value of ``v`` that gives ``w``."""
        with torch.no_grad():
            a, b = self.scales()
            u = w / a
            if math.isfinite(self.shape_fn.bound):
                u = u.clamp(-self.limit(), self.limit())
            return b * self.shape_fn.inverse(u)

    def extra_repr(self) -> str:
        a, b = (t.detach() for t in self.scales())
        return (
            f"function={self.function!r}, a={float(a):.4g}, b={float(b):.4g}, learnable={self.learnable}"
            + (f", positivity={self.positivity!r}" if self.positivity != "none" else "")
        )


def compander_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, Compander]]:
    """``(qualified name, module, compander)`` for every weight of ``model`` reparametrized by WC."""
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plists = cast(nn.ModuleDict, module.parametrizations)
        for p in cast(parametrize.ParametrizationList, plists["weight"]):
            if isinstance(p, Compander):
                yield name, module, p


def _raw(module: nn.Module) -> Tensor:
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists["weight"]).original


def _nested(module: nn.Module) -> bool:
    plists = cast(nn.ModuleDict, module.parametrizations)
    return len(cast(parametrize.ParametrizationList, plists["weight"])) > 1


def _fixed_decay_gradient(v: Tensor, compander: Compander, lam: float) -> Tensor:
    """``λ·Ψ(v)·Ψ′(v)`` for fixed ``a, b``; for arctan ``λ·(a²/b)·arctan(z)/(1 + z²)``, ``z = v/b``."""
    a, b = compander.scales()
    z = v / b
    factor = (lam * a * a / b).to(v.dtype)  # 0-dim tensors: no host synchronization on CUDA
    if compander.function == "arctan":
        return torch.atan(z).mul_(factor).div_(z.square_().add_(1.0))
    shape = compander.shape_fn
    return shape.f(z).mul_(shape.derivative(z)).mul_(factor)


class WC(Method):
    """Weight Compander: ``w = a·arctan(v/b)`` on every conv and linear weight.

    Args:
        a: the scale ``a > 0``; ``None``: 0.6 (fixed) or 0.5 (initial value when ``learnable``).
        b: the input scale ``b > 0``; ``None``: 0.7 (fixed) or 1.0 (initial value when ``learnable``).
        learnable: per-layer learnable ``a, b`` (the paper's "fine" variant).
        weight_decay: ``λ`` of the decay WC applies itself (see the module docstring).
        weight_decay_on: ``auto``, ``psi`` or ``v``.
        function, positivity, init_clamp, on_init_overflow, adaptive_optimizer: see the module docstring.
    """

    name = "wc"
    kind = "regularizer"

    class Config(MethodConfig):
        a: float | None = Field(None, gt=0, description="a > 0; None: 0.6 fixed / 0.5 learnable init")
        b: float | None = Field(None, gt=0, description="b > 0; None: 0.7 fixed / 1.0 learnable init")
        learnable: bool = Field(False, description="per-layer learnable a, b (the 'fine' variant)")
        weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="decay WC applies (psi or v)")
        weight_decay_on: Literal["auto", "psi", "v"] = Field(
            "auto", description="auto: psi for fixed a, b; v for learnable"
        )
        function: FunctionName = "arctan"
        positivity: Literal["none", "softplus"] = "none"
        init_clamp: float = Field(1e-3, gt=0.0, lt=0.5, description="margin below the bound of f")
        on_init_overflow: Literal["clamp", "error"] = "clamp"
        adaptive_optimizer: Literal["off", "powerprop_rescale"] = "off"

    config: Config

    def __init__(self, *, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._layers: list[tuple[nn.Module, Compander]] = []
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self.init_clamped = 0

    # -- resolved settings ----------------------------------------------------------------------------
    @property
    def a(self) -> float:
        """The (initial) ``a`` in use."""
        default = LEARNABLE_A if self.config.learnable else FIXED_A
        return default if self.config.a is None else self.config.a

    @property
    def b(self) -> float:
        """The (initial) ``b`` in use."""
        default = LEARNABLE_B if self.config.learnable else FIXED_B
        return default if self.config.b is None else self.config.b

    @property
    def decay_on(self) -> Literal["psi", "v"]:
        """Where the weight decay acts: ``"psi"`` (on ``w``) or ``"v"``."""
        if self.config.weight_decay_on == "auto":
            return "v" if self.config.learnable else "psi"
        return self.config.weight_decay_on

    # -- events ---------------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = maskable_modules(model)
        if not layers:
            raise MethodNotApplicableError(
                f"WC reparametrizes conv and linear weights, but {type(model).__name__} has none"
            )
        for name, module in layers:
            if any(True for _ in compander_layers(module)):
                raise ValueError(f"WC: {name or 'the model'}.weight is already reparametrized by WC")
        overflow = {name: self._check_overflow(name, module) for name, module in layers}
        self._layers = [(module, self._reparametrize(module)) for _, module in layers]
        self.init_clamped = sum(overflow.values())
        if self.init_clamped:
            warnings.warn(
                f"WC: {self.init_clamped} initial weights lie outside the range of Ψ (|w/a| above the bound "
                f"minus init_clamp={self.config.init_clamp}, a={self.a}); they were clamped, so the initial "
                "function changed slightly",
                stacklevel=2,
            )
        return model

    def _compander(self, like: Tensor) -> Compander:
        cfg = self.config
        return Compander(
            self.a,
            self.b,
            like,
            function=cfg.function,
            learnable=cfg.learnable,
            positivity=cfg.positivity,
            init_clamp=cfg.init_clamp,
        )

    def _check_overflow(self, name: str, module: nn.Module) -> int:
        weight = cast(Tensor, module.weight).detach()
        count = int(self._compander(weight).overflow(weight).sum())
        if count and self.config.on_init_overflow == "error":
            bound = self.a * _SHAPES[self.config.function].bound
            raise ValueError(
                f"WC: {count} entries of {name}.weight are outside the range of Ψ (max |w| = "
                f"{float(weight.abs().max()):.4g}, a·bound = {bound:.4g}); raise `a` or set "
                "on_init_overflow='clamp'"
            )
        return count

    def _reparametrize(self, module: nn.Module) -> Compander:
        weight = cast(Tensor, module.weight).detach().clone()
        nested = parametrize.is_parametrized(module, "weight")
        compander = self._compander(weight)
        parametrize.register_parametrization(module, "weight", compander)
        if nested:  # appending does not run right_inverse: re-assign to keep the function
            with torch.no_grad():
                module.weight = weight
        return compander

    def decay_loss(self, model: nn.Module) -> Tensor | float:
        """``(λ/2)·Σ‖Ψ(v)‖²`` over every compander weight of ``model`` (``0.0`` unless decay acts on ``psi``).

        Not part of :meth:`extra_loss`: :meth:`after_backward` adds its gradient directly."""
        lam = self.config.weight_decay
        if self.decay_on != "psi" or lam == 0.0:
            return 0.0
        total: Tensor | float = 0.0
        for _, module, _ in compander_layers(model):
            total = total + cast(Tensor, module.weight).square().sum()
        return 0.5 * lam * total

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        raw = [_raw(m) for _, m, _ in compander_layers(model)]
        raw = [p for p in raw if isinstance(p, nn.Parameter) and p.requires_grad]
        scales = [p for _, _, c in compander_layers(model) for p in c.parameters() if p.requires_grad]
        if self.decay_on == "psi":
            groups = [{"params": raw + scales, "weight_decay": 0.0}]
        else:
            groups = [
                {"params": raw, "weight_decay": self.config.weight_decay},
                {"params": scales, "weight_decay": 0.0},
            ]
        return [g for g in groups if g["params"]]

    def after_backward(self, ctx: Context) -> None:
        self._add_decay_gradient(ctx.model)
        if self.config.adaptive_optimizer != "powerprop_rescale":
            return
        self._pending = []
        with torch.no_grad():
            for module, compander in self._layers:
                v = _raw(module)
                if v.grad is None:
                    continue
                slope = compander.derivative(v)
                v.grad.div_(slope)  # the optimizer sees ∂L/∂w
                self._pending.append((v, v.detach().clone(), slope))

    def _add_decay_gradient(self, model: nn.Module | None) -> None:
        """``v.grad += λ·Ψ(v)·Ψ′(v)``, the gradient of ``(λ/2)‖Ψ(v)‖²`` (decay on ``psi`` only)."""
        lam = self.config.weight_decay
        if self.decay_on != "psi" or lam == 0.0:
            return
        layers = self._layers if model is None else [(m, c) for _, m, c in compander_layers(model)]
        for module, compander in layers:
            v = _raw(module)
            if not v.requires_grad:
                continue
            if compander.learnable or _nested(module):  # a, b or inner parametrizations need autograd
                with torch.enable_grad():
                    decay = 0.5 * lam * cast(Tensor, module.weight).square().sum()
                    inputs = [p for p in (v, *compander.parameters()) if p.requires_grad]
                    decay.backward(inputs=inputs)  # type: ignore[no-untyped-call]
                continue
            with torch.no_grad():
                grad = _fixed_decay_gradient(v, compander, lam)
                if v.grad is None:
                    v.grad = grad
                else:
                    v.grad.add_(grad)

    def after_step(self, ctx: Context) -> None:
        with torch.no_grad():
            for v, before, slope in self._pending:
                v.copy_(before + (v - before) * slope)  # the update of v, rescaled by Ψ′(v)
        self._pending = []

    def export(self, model: nn.Module) -> nn.Module:
        for _, module, _ in list(compander_layers(model)):
            remove_parametrizations(module, "weight")  # core's: safe on a deep copy (torch's is not)
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        companders = [c for _, _, c in compander_layers(model)]
        out = {"wc_layers": float(len(companders)), "wc_init_clamped": float(self.init_clamped)}
        if companders and self.config.learnable:
            with torch.no_grad():
                scales = [tuple(t.detach() for t in c.scales()) for c in companders]
                out["wc_a_mean"] = float(sum(float(a) for a, _ in scales) / len(scales))
                out["wc_b_mean"] = float(sum(float(b) for _, b in scales) / len(scales))
        return out
