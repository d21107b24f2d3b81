"""Interspace Pruning (IP): prune the coefficients of an adaptive filter basis (METHODS.md §12).

Paper: Wimmer, Mehnert, Condurache, "Interspace Pruning: Using Adaptive Filter Representations to Improve
Training of Sparse CNNs", CVPR 2022, arXiv 2203.07808 (abstract only; the parametrization follows the Weight
Compander paper's related work and the patent application US 2023/0086617 A1).

IP is a *representation*, not a pruner: every pruner of cnnkit-pruning takes ``interspace=True``. Each conv
with a ``K_h×K_w`` kernel, ``K_h·K_w = K² > 1``, becomes an :class:`InterspaceConv2d` whose filters are linear
combinations of ``K²`` basis filters:

* coefficients ``Λ ∈ R^{c_out×c_in×K²}``, stored as the module's ``weight`` (laid out like a filter,
  ``c_out×c_in×K_h×K_w``), so that core's masks, ``maskable_modules``, every score, ``count_params`` and
  ``count_flops`` act on ``Λ`` unchanged; the mask ``M`` acts on ``Λ``;
* a dense, trainable per-layer basis ``F ∈ R^{K²×K²}`` (row ``n`` = the flattened basis filter ``g⁽ⁿ⁾``),
  the extra parameter ``basis``;
* the spatial filters ``W = ((M⊙Λ).view(o, i, K²) @ F).view(o, i, K_h, K_w)``, rebuilt every forward pass;
  the convolution itself is unchanged. Gradients (``G = ∂L/∂W`` as ``(o, i, K²)``):
  ``∂L/∂Λ = M⊙(G·Fᵀ)`` and ``∂L/∂F = Σ_{o,i} (M⊙Λ)[o,i]ᵀ ⊗ G[o,i]``.

Initialisation [METHODS.md §12e]: ``F₀`` = the orthonormal 2-D DCT-II basis ``C_h ⊗ C_w`` with
``C[k, n] = √(2/K)·cos(πk(2n+1)/(2K))`` (row 0 scaled by ``1/√2``), i.e.
``scipy.fft.dct(np.eye(K), norm='ortho', axis=0)``; ``Λ₀ = W₀F₀ᵀ`` (computed in float64), so the network's
initial function is unchanged, and i.i.d. coefficients map to i.i.d. filter entries of the same variance.
``basis_init="identity"`` (``F₀ = I``) is standard pruning (SP); with ``train_basis=False`` it *is* SP, step
for step. Standard pruning is the special case ``F = I`` held fixed.

Choices [METHODS.md §12d, §12e, §12h], all config options of :class:`~cnnkit.pruning._base.PrunerConfig`:

* ``basis_init = "dct"`` (or ``"identity"``); ``train_basis = True`` (``F`` is trained jointly with ``Λ``).
* ``basis_weight_decay = 0``: the bases get their own optimizer group without weight decay
  (:func:`interspace_param_groups`); ``Λ`` keeps the run's weight decay.
* ``basis_scope = "layer"``: one basis per conv layer (the only scope implemented).
* ``pointwise_layers = "sp"``: 1×1 convs and linear layers stay in the spatial representation, in the same
  global pool of maskable weights as the coefficients.
* Only modules whose type is exactly ``nn.Conv2d`` are converted (subclasses may have their own forward);
  non-square kernels ``K_h×K_w`` (``K_h·K_w > 1``) get the basis ``C_h ⊗ C_w`` (the patent allows them).
* Conversion swaps the module's class in place (like ``torch.nn.utils.parametrize``): module objects,
  hooks and the ``weight``/``bias`` ``Parameter`` objects stay the same; ``weight`` now holds ``Λ``.
* When gradients are disabled (inference, ``torch.no_grad``) ``W`` is rebuilt by an element-wise product and
  sum, which ``torch.utils.flop_counter`` does not count: the MAC count of an IP model is that of its convs,
  as for a deployed model, whose ``W`` is precomputed by :func:`from_interspace` (METHODS.md §12f: equal
  inference cost; rebuilding ``W`` costs ``c_out·c_in·K⁴`` MACs per training step).

Accounting: ``basis_params`` (``K⁴`` per layer) are dense trained parameters; pruners report the sparsity
with and without them (:func:`interspace_stats`). In the survey's trained count ``D`` a basis row that no
unmasked coefficient uses is left out (:func:`idle_basis_params`): it receives no gradient and does not act
on the network [choice].

Compute path: :func:`factored_forward` evaluates the layer as a depthwise conv with the ``K²`` basis filters
followed by a 1×1 conv with the sparse ``Λ`` (METHODS.md §12b; by linearity equal to the dense
reconstruction), the form in which coefficient sparsity can cut compute.

Export (:func:`from_interspace`): after the masks are baked, every :class:`InterspaceConv2d` becomes a plain
``nn.Conv2d`` holding its spatial filters ``W`` -- exact (the same arithmetic as the inference forward).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from cnnkit.core.masks import get_weight_mask
from cnnkit.core.method import MethodNotApplicableError

if TYPE_CHECKING:
    from cnnkit.core.config import MethodConfig

__all__ = [
    "BasisInit",
    "InterspaceConv2d",
    "basis_params",
    "dct_matrix",
    "factored_forward",
    "from_interspace",
    "idle_basis_params",
    "initial_basis",
    "interspace_modules",
    "interspace_param_groups",
    "interspace_stats",
    "prepare_interspace",
    "spatial_weight",
    "to_interspace",
]

BasisInit = Literal["dct", "identity"]
BASIS_INITS: tuple[str, ...] = ("dct", "identity")


# --------------------------------------------------------------------------------------------- bases


def dct_matrix(k: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix ``C`` (``k×k``, row ``j`` = the ``j``-th cosine), as
    ``scipy.fft.dct(np.eye(k), norm='ortho', axis=0)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    j = torch.arange(k, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(k, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * j * (2 * n + 1) / (2 * k)) * math.sqrt(2.0 / k)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype)


def initial_basis(
    kernel_size: tuple[int, int],
    basis_init: str = "dct",
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """``F₀`` (``K²×K²``, rows = flattened basis filters) for a ``K_h×K_w`` kernel: ``C_h ⊗ C_w`` or ``I``."""
    kh, kw = kernel_size
    if basis_init == "dct":
        basis = torch.kron(dct_matrix(kh), dct_matrix(kw))
    elif basis_init == "identity":
        basis = torch.eye(kh * kw, dtype=torch.float64)
    else:
        raise ValueError(f"basis_init must be one of {', '.join(map(repr, BASIS_INITS))}; got {basis_init!r}")
    return basis.to(dtype=dtype, device=device)


def spatial_weight(coefficients: Tensor, basis: Tensor) -> Tensor:
    """``W = (Λ.view(o, i, K²) @ F).view(o, i, K_h, K_w)``.

    With gradients disabled the product is an element-wise multiply-and-sum (same value up to rounding;
    not seen by the FLOP counter, see the module docstring).
    """
    o, i, kh, kw = coefficients.shape
    flat = coefficients.reshape(o, i, kh * kw)
    w = flat @ basis if torch.is_grad_enabled() else (flat.unsqueeze(-1) * basis).sum(dim=-2)
    return w.reshape(o, i, kh, kw)


# --------------------------------------------------------------------------------------------- module


class InterspaceConv2d(nn.Conv2d):
    """A Conv2d whose ``weight`` holds the coefficients ``Λ`` and whose filters are ``Λ @ basis``.

    Takes ``nn.Conv2d``'s arguments, plus:

    Args:
        basis_init: ``"dct"`` (orthonormal 2-D DCT-II) or ``"identity"`` (standard pruning).
        train_basis: whether the ``basis`` parameter ``F`` requires grad.

    Attributes:
        basis: ``Parameter`` ``F`` (``K²×K²``, rows = flattened basis filters).
        basis_init: how ``F`` is (re-)initialised by :meth:`reset_parameters`.
    """

    basis: Tensor
    basis_init: str

    def __init__(
        self, *args: Any, basis_init: BasisInit = "dct", train_basis: bool = True, **kwargs: Any
    ) -> None:
        self.basis_init = basis_init
        super().__init__(*args, **kwargs)
        _check_kernel(self)
        self._add_basis(basis_init, train_basis)
        self.reset_parameters()

    @classmethod
    def convert(cls, conv: nn.Conv2d, *, basis_init: BasisInit = "dct", train_basis: bool = True) -> None:
        """Turn ``conv`` (a plain ``nn.Conv2d``) into an :class:`InterspaceConv2d` in place, keeping its
        function: ``Λ₀ = W₀F₀ᵀ``."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"only plain nn.Conv2d modules can be converted; got {type(conv).__name__}")
        _check_kernel(conv)
        conv.__class__ = cls
        ip = cast(InterspaceConv2d, conv)
        ip.basis_init = basis_init
        ip._add_basis(basis_init, train_basis)
        ip._to_coefficients()

    def _add_basis(self, basis_init: str, train_basis: bool) -> None:
        w = self.weight
        f0 = initial_basis(_kernel(self), basis_init, dtype=w.dtype, device=w.device)
        self.register_parameter("basis", nn.Parameter(f0, requires_grad=train_basis))

    def _to_coefficients(self) -> None:
        """``Λ ← W·Fᵀ`` (float64), assuming ``weight`` holds spatial filters and ``F`` is orthonormal."""
        w = self.weight
        o, i, kh, kw = w.shape
        with torch.no_grad():
            lam = w.double().reshape(o, i, kh * kw) @ self.basis.double().T
            w.copy_(lam.reshape(w.shape).to(w.dtype))

    def reset_parameters(self) -> None:
        """Re-initialise like ``nn.Conv2d`` (same random draws, same spatial filters), then ``F ← F₀`` and
        ``Λ ← W·F₀ᵀ``."""
        super().reset_parameters()
        if "basis" not in self._parameters:
            return  # called from nn.Conv2d.__init__, before the basis exists
        with torch.no_grad():
            self.basis.copy_(initial_basis(_kernel(self), self.basis_init, dtype=self.basis.dtype))
        self._to_coefficients()

    def forward(self, input: Tensor) -> Tensor:
        out: Tensor = self._conv_forward(input, spatial_weight(self.weight, self.basis), self.bias)
        return out

    def extra_repr(self) -> str:
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return f"{base}, basis_init={self.basis_init!r}"


def factored_forward(module: InterspaceConv2d, x: Tensor) -> Tensor:
    """The optional compute path (METHODS.md §12b): a depthwise conv of every input channel with the ``K²``
    basis filters, then a 1×1 conv with the (sparse) coefficients ``Λ`` -- equal to ``module(x)`` by
    linearity. Only ``groups=1`` and ``padding_mode="zeros"``."""
    if module.groups != 1 or module.padding_mode != "zeros":
        raise NotImplementedError("factored_forward supports groups=1 and padding_mode='zeros' only")
    lam = module.weight
    o, i, kh, kw = lam.shape
    k2 = kh * kw
    filters = module.basis.reshape(k2, 1, kh, kw).repeat(i, 1, 1, 1)  # channel c·K² + n: g⁽ⁿ⁾ on channel c
    z = F.conv2d(x, filters, None, module.stride, module.padding, module.dilation, groups=i)
    return F.conv2d(z, lam.reshape(o, i * k2, 1, 1), module.bias)


def _kernel(conv: nn.Conv2d) -> tuple[int, int]:
    kh, kw = conv.kernel_size
    return int(kh), int(kw)


def _check_kernel(conv: nn.Conv2d) -> None:
    kh, kw = _kernel(conv)
    if kh * kw < 2:
        raise ValueError(f"interspace needs a kernel with more than one entry; got {kh}×{kw}")


def _convertible(module: nn.Module) -> bool:
    if not isinstance(module, nn.Conv2d) or isinstance(module, InterspaceConv2d):
        return False
    base = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
    kh, kw = _kernel(module)
    return base is nn.Conv2d and kh * kw > 1


def interspace_modules(model: nn.Module) -> list[tuple[str, InterspaceConv2d]]:
    """The ``(name, module)`` pairs of every :class:`InterspaceConv2d` of ``model``, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, InterspaceConv2d)]


# --------------------------------------------------------------------------------------------- API


def to_interspace(model: nn.Module, *, basis_init: BasisInit = "dct", train_basis: bool = True) -> list[str]:
    """Convert, in place, every plain ``nn.Conv2d`` with a kernel of more than one entry (``K > 1``) that is
    not converted yet into an :class:`InterspaceConv2d`; the network function is unchanged.

    Returns the names of the modules converted now.

    Raises:
        MethodNotApplicableError: the model has no conv with ``K > 1`` (1×1 convs and linear layers stay
            spatial).
        ValueError: a bad ``basis_init``, or such a conv's weight is already parametrized (masks, a
            compander, ...): interspace must be applied first.
    """
    if basis_init not in BASIS_INITS:
        raise ValueError(f"basis_init must be one of {', '.join(map(repr, BASIS_INITS))}; got {basis_init!r}")
    todo = [(n, m) for n, m in model.named_modules() if _convertible(m)]
    if not todo and not interspace_modules(model):
        raise MethodNotApplicableError(
            "interspace=True needs at least one nn.Conv2d with a K×K kernel, K > 1 (1×1 convs and linear "
            f"layers stay in the spatial representation); {type(model).__name__} has none"
        )
    taken = [n for n, m in todo if parametrize.is_parametrized(m)]
    if taken:
        raise ValueError(
            f"interspace: the weights of {taken} are already parametrized (masked or reparametrized); "
            "convert to the interspace representation before attaching masks or other parametrizations"
        )
    for _, module in todo:
        InterspaceConv2d.convert(cast(nn.Conv2d, module), basis_init=basis_init, train_basis=train_basis)
    return [n for n, _ in todo]


def prepare_interspace(model: nn.Module, config: MethodConfig) -> None:
    """``to_interspace(model, ...)`` with the config's ``basis_init`` / ``train_basis`` if
    ``config.interspace``; else nothing."""
    if not getattr(config, "interspace", False):
        return
    to_interspace(
        model,
        basis_init=getattr(config, "basis_init", "dct"),
        train_basis=getattr(config, "train_basis", True),
    )


def interspace_param_groups(model: nn.Module, config: MethodConfig) -> list[dict[str, Any]]:
    """The optimizer group of the trainable bases (``weight_decay = config.basis_weight_decay``, default 0)
    when ``config.interspace``; else ``[]``. For a Method's ``param_groups``."""
    if not getattr(config, "interspace", False):
        return []
    bases = [m.basis for _, m in interspace_modules(model) if m.basis.requires_grad]
    if not bases:
        return []
    return [{"params": bases, "weight_decay": float(getattr(config, "basis_weight_decay", 0.0))}]


def basis_params(model: nn.Module) -> int:
    """Entries of all bases (``K⁴`` per converted layer)."""
    return sum(m.basis.numel() for _, m in interspace_modules(model))


def idle_basis_params(model: nn.Module) -> int:
    """Entries of *trainable* basis rows that no coefficient uses: row ``n`` of a layer's ``F`` is idle when
    every ``Λ[:, :, n]`` is masked out and zero, so ``∂L/∂F[n] = Σ_{o,i} (M⊙Λ)[o,i,n]·G[o,i] = 0`` and the row
    does not act on the network (it is not a trained coordinate in the survey's sense, METHODS.md §15)."""
    idle = 0
    for _, module in interspace_modules(model):
        if not module.basis.requires_grad:
            continue
        wm = get_weight_mask(module)
        with torch.no_grad():
            live = module.weight.ne(0)
            if wm is not None:
                live = live | wm.keep()
        rows = live.flatten(2).any(dim=1).any(dim=0)
        idle += int((~rows).sum()) * module.basis.shape[1]
    return idle


def interspace_stats(model: nn.Module, kept: float, maskable: float) -> dict[str, float]:
    """``basis_params`` and the density/sparsity over maskable weights *with* the bases counted as dense
    kept entries (METHODS.md §12h); ``{}`` when the model has no interspace conv."""
    nb = float(basis_params(model))
    if nb == 0.0:
        return {}
    total = maskable + nb
    density = (kept + nb) / total if total else 1.0
    return {"basis_params": nb, "density_with_basis": density, "sparsity_with_basis": 1.0 - density}


def from_interspace(model: nn.Module) -> nn.Module:
    """Export: every :class:`InterspaceConv2d` becomes, in place, a plain ``nn.Conv2d`` whose ``weight`` is
    its spatial filter ``W`` (the ``Parameter`` object is kept; ``basis`` is removed). Returns ``model``.

    Raises:
        ValueError: a coefficient tensor is still masked/parametrized (bake the masks first).
    """
    modules = interspace_modules(model)
    taken = [n for n, m in modules if parametrize.is_parametrized(m)]
    if taken:
        raise ValueError(f"from_interspace: bake the masks of {taken} first (cnnkit.core.masks.bake_masks)")
    for _, module in modules:
        with torch.no_grad():
            w = spatial_weight(module.weight, module.basis)
            module.weight.copy_(w)
        del module.basis
        del module.basis_init
        cast(nn.Module, module).__class__ = nn.Conv2d
    return model
