"""Weight masks: one ``torch.nn.utils.parametrize`` parametrization with two modes (METHODS.md §1.8).

A mask ``m`` (1 = kept / trained, 0 = masked) is attached to a tensor of a module (``weight`` by default):

* ``prune``:  ``w = m⊙θ``                      -- masked entries are exactly zero;
* ``freeze``: ``w = m⊙θ + (1−m)⊙θ₀``           -- masked entries keep their frozen values ``θ₀``.

``θ`` is the trainable ``module.parametrizations.<name>.original`` (the very ``Parameter`` the module had
before, so an optimizer built earlier keeps working); ``θ₀`` is the ``frozen`` buffer. Masked entries of the
*effective* weight never move, whatever the optimizer does, because they do not depend on ``θ``. To keep the
raw ``θ`` (and therefore momentum and weight decay) clean as well, the module

1. imposes ``θ ← m⊙θ + (1−m)⊙θ₀`` when a mask is applied or changed (prune: ``θ₀ = 0``),
2. registers a gradient hook on ``θ`` that zeroes masked gradient entries, and
3. offers :func:`enforce_masks`, the safety net to call after every ``optimizer.step()``: coupled weight decay
   (``torch.optim.SGD(weight_decay=…)``) adds ``λθ`` inside the optimizer, which a gradient mask cannot stop.

In ``prune`` mode steps 1–2 already keep the raw masked entries *and* the optimizer state at exactly zero
(``λ·0 = 0``). In ``freeze`` mode coupled weight decay moves the raw masked entries (``λθ₀ ≠ 0``) while the
effective weight stays exactly ``θ₀``; :func:`enforce_masks` resets them and :func:`mask_optimizer_state`
clears the optimizer state there.

State. :class:`WeightMask` keeps three buffers, all in ``state_dict`` under
``<module>.parametrizations.<name>.0.{mask,frozen,seed}``:

* ``mask`` -- same shape, dtype and device as the weight, values exactly 0.0 / 1.0 (a float mask, so
  ``mask.sum()``, ``mask.mean()`` and ``w * mask`` work directly; ``mask.bool()`` gives the boolean view);
* ``frozen`` -- ``θ₀``, ``freeze`` mode only (so the mode can be read off a state dict);
* ``seed`` -- 0-dim int64, the seed ``θ₀`` was generated from (FreezeNet's compact checkpoints), -1 = none.

The mode itself is not stored: a ``frozen`` entry means ``freeze``. :func:`restore_masks` re-attaches masks to
a fresh model from a state dict so that ``load_state_dict`` works. :func:`bake_masks` turns masked tensors
into plain parameters for deployment.

Limitations. Masks compose with other parametrizations of the same tensor, but the raw-value guarantees
(imposition, gradient hook, :func:`enforce_masks`) only apply when the mask is the *first* parametrization
(index 0); otherwise only the effective weight is guaranteed. Parametrized modules cannot be pickled
(a ``torch`` rule); use ``state_dict``. ``copy.deepcopy`` works; the copy re-registers its gradient hook on
its first forward (or on the next :func:`enforce_masks` / :func:`set_mask`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

__all__ = [
    "MODES",
    "WeightMask",
    "apply_mask",
    "bake_masks",
    "enforce_masks",
    "get_mask",
    "get_weight_mask",
    "is_masked",
    "keep_masks",
    "mask_gradients",
    "mask_optimizer_state",
    "maskable_modules",
    "masked_modules",
    "remove_parametrizations",
    "restore_masks",
    "set_mask",
]

MODES: tuple[str, ...] = ("prune", "freeze")
"""The allowed values of ``mode``."""

_KINDS: tuple[str, ...] = ("conv", "linear")
_SPECIAL_EXCLUDES: tuple[str, ...] = ("first", "last")
_MASK_KEY = re.compile(r"^(?:(?P<module>.*)\.)?parametrizations\.(?P<tensor>[^.]+)\.(?P<index>\d+)\.mask$")


class WeightMask(nn.Module):
    """The mask parametrization: ``w = m⊙θ`` (``prune``) or ``w = m⊙θ + (1−m)⊙θ₀`` (``freeze``).

    Usually created by :func:`apply_mask`, which converts and validates its arguments.

    Args:
        mask: the mask, already a 0/1 float tensor of the weight's shape, dtype and device.
        mode: ``"prune"`` or ``"freeze"``.
        frozen: ``θ₀`` (required in ``freeze`` mode, not allowed in ``prune`` mode).
        seed: the seed ``θ₀`` was generated from, if any (stored as a 0-dim int64 buffer, -1 = none).

    Attributes:
        mask: buffer, 1.0 = kept/trained, 0.0 = masked.
        frozen: buffer, ``θ₀`` (``freeze`` mode only).
        seed: buffer, 0-dim int64; see :attr:`seed_value`.
        mode: ``"prune"`` or ``"freeze"``.
    """

    mask: Tensor
    frozen: Tensor
    seed: Tensor

    def __init__(
        self, mask: Tensor, *, mode: str = "prune", frozen: Tensor | None = None, seed: int | None = None
    ) -> None:
        super().__init__()
        _check_mode(mode)
        _check_frozen_for_mode(mode, frozen, mask.shape)
        self.mode = mode
        self.register_buffer("mask", mask)
        if frozen is not None:
            self.register_buffer("frozen", frozen)
        self.register_buffer("seed", torch.tensor(_check_seed(seed), dtype=torch.int64))
        self._hooked: weakref.ref[Tensor] | None = None
        self._hook_handle: RemovableHandle | None = None

    @property
    def density(self) -> float:
        """Fraction of kept entries, ``‖m‖₀ / N``."""
        return float(self.mask.count_nonzero()) / max(self.mask.numel(), 1)

    @property
    def seed_value(self) -> int | None:
        """The seed ``θ₀`` was generated from, or ``None``."""
        value = int(self.seed)
        return None if value < 0 else value

    def keep(self) -> Tensor:
        """The mask as a boolean tensor (True = kept)."""
        return self.mask != 0

    def impose(self, x: Tensor) -> Tensor:
        """``m⊙x + (1−m)⊙θ_fixed``, ``θ_fixed`` = 0 (prune) or ``θ₀`` (freeze), exactly (by selection)."""
        if self.mode == "prune":
            return x.masked_fill(~self.keep(), 0)
        return torch.where(self.keep(), x, self.frozen.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        self.ensure_grad_hook(x)
        return self.impose(x)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning ``module.weight = value`` stores ``value`` with the masked entries imposed."""
        return self.impose(value)

    def ensure_grad_hook(self, original: Tensor) -> None:
        """Register the gradient-masking hook on ``original`` unless it already carries it.

        Called on every forward, so a hook lost by ``copy.deepcopy`` (which does not copy tensor hooks)
        comes back by itself. Only leaf tensors that require grad get a hook.
        """
        if not (original.is_leaf and original.requires_grad):
            return
        if self._hooked is not None and self._hooked() is original:
            return
        self.remove_grad_hook()
        self._hook_handle = original.register_hook(self._mask_grad)  # type: ignore[no-untyped-call]
        self._hooked = weakref.ref(original)

    def remove_grad_hook(self) -> None:
        """Remove the gradient hook (done by :func:`bake_masks`)."""
        if self._hook_handle is not None:
            self._hook_handle.remove()
        self._hook_handle = None
        self._hooked = None

    def _mask_grad(self, grad: Tensor) -> Tensor:
        return grad.masked_fill(~self.keep(), 0)

    def __getstate__(self) -> dict[str, Any]:
        state = cast(dict[str, Any], super().__getstate__())  # type: ignore[no-untyped-call]
        state["_hooked"] = None  # a weakref / hook handle belongs to the original tensor, not to a copy
        state["_hook_handle"] = None
        return state

    def extra_repr(self) -> str:
        seed = self.seed_value
        return f"mode={self.mode!r}, density={self.density:.4f}" + ("" if seed is None else f", seed={seed}")


# --------------------------------------------------------------------------------------------- validation


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return -1
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
    return seed


def _check_frozen_for_mode(mode: str, frozen: Tensor | None, shape: torch.Size) -> None:
    if mode == "freeze" and frozen is None:
        raise ValueError("mode='freeze' needs frozen values (frozen=θ₀)")
    if mode == "prune" and frozen is not None:
        raise ValueError("frozen= is only valid with mode='freeze'; got mode='prune'")
    if frozen is not None and frozen.shape != shape:
        raise ValueError(f"frozen shape {tuple(frozen.shape)} must equal the weight shape {tuple(shape)}")


def _as_mask(mask: Tensor, like: Tensor, what: str) -> Tensor:
    """Validate ``mask`` against ``like`` and return a 0/1 copy in ``like``'s dtype and device."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor; got {type(mask).__name__}")
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the shape of {what} {tuple(like.shape)}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be binary: bool or values in {0, 1}")
    return mask.detach().to(device=like.device, dtype=like.dtype, copy=True)


def _as_frozen(frozen: Tensor, like: Tensor, what: str) -> Tensor:
    if not isinstance(frozen, Tensor):
        raise TypeError(f"frozen must be a torch.Tensor; got {type(frozen).__name__}")
    if frozen.shape != like.shape:
        raise ValueError(
            f"frozen shape {tuple(frozen.shape)} must equal the shape of {what} {tuple(like.shape)}"
        )
    return frozen.detach().to(device=like.device, dtype=like.dtype, copy=True)


def _tensor_of(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name, None)
    if not isinstance(value, Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor named {name!r} to mask")
    return value


# --------------------------------------------------------------------------------------------- lookup


def _parametrization_list(module: nn.Module, name: str) -> parametrize.ParametrizationList | None:
    if not parametrize.is_parametrized(module, name):
        return None
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists[name])


def get_weight_mask(module: nn.Module, name: str = "weight") -> WeightMask | None:
    """The :class:`WeightMask` on ``module.<name>``, or ``None`` when that tensor is not masked."""
    plist = _parametrization_list(module, name)
    if plist is None:
        return None
    for p in plist:
        if isinstance(p, WeightMask):
            return p
    return None


def _masked_original(module: nn.Module, name: str, wm: WeightMask) -> Tensor | None:
    """The raw tensor the mask acts on directly (only when the mask is the first parametrization)."""
    plist = _parametrization_list(module, name)
    if plist is None or not plist.is_tensor or plist[0] is not wm:
        return None
    return plist.original


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a :class:`WeightMask`."""
    return get_weight_mask(module, name) is not None


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The live mask buffer of ``module.<name>`` (change it with :func:`set_mask`), or ``None``."""
    wm = get_weight_mask(module, name)
    return None if wm is None else wm.mask


def masked_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(qualified module name, module, tensor name)`` for every masked tensor, in model order."""
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in cast(nn.ModuleDict, module.parametrizations):
            if is_masked(module, tensor_name):
                yield module_name, module, tensor_name


def keep_masks(model: nn.Module) -> dict[str, Tensor]:
    """A boolean copy of every mask (True = kept), keyed by module name (``"name.tensor"`` for a masked
    tensor other than ``weight``), in model order."""
    out: dict[str, Tensor] = {}
    for module_name, module, tensor_name in masked_modules(model):
        key = module_name if tensor_name == "weight" else f"{module_name}.{tensor_name}"
        out[key] = cast(Tensor, get_mask(module, tensor_name)).bool().clone()
    return out


def _masks(model: nn.Module) -> Iterator[tuple[nn.Module, str, WeightMask]]:
    for _, module, tensor_name in masked_modules(model):
        wm = get_weight_mask(module, tensor_name)
        assert wm is not None
        yield module, tensor_name, wm


# --------------------------------------------------------------------------------------------- mutation


def _impose_original(module: nn.Module, name: str, wm: WeightMask) -> None:
    original = _masked_original(module, name, wm)
    if original is None:
        return
    wm.ensure_grad_hook(original)
    with torch.no_grad():
        original.copy_(wm.impose(original))


def apply_mask(
    module: nn.Module,
    mask: Tensor,
    *,
    name: str = "weight",
    mode: str = "prune",
    frozen: Tensor | None = None,
    seed: int | None = None,
) -> WeightMask:
    """Mask ``module.<name>`` (1 = kept/trained) and return the new :class:`WeightMask`.

    The tensor's current values are changed at once: ``θ ← m⊙θ`` (prune) or ``θ ← m⊙θ + (1−m)⊙θ₀``
    (freeze); the ``Parameter`` object stays the same, so an existing optimizer keeps working. A gradient
    hook on it zeroes the gradient at masked entries.

    Args:
        module: the module owning the tensor (e.g. an ``nn.Conv2d``).
        mask: bool or 0/1 tensor of exactly the tensor's shape; copied (to the weight's dtype and device).
        name: the tensor to mask.
        mode: ``"prune"`` (masked entries are 0) or ``"freeze"`` (masked entries stay at ``frozen``).
        frozen: ``θ₀`` for ``freeze`` mode; by default the tensor's current values.
        seed: the seed ``θ₀`` was generated from, kept in the state dict (FreezeNet's compact checkpoints).

    Raises:
        ValueError: bad ``mode``, wrong mask/frozen shape, non-binary mask, ``frozen`` in prune mode, or the
            tensor is already masked (use :func:`set_mask` to change a mask).
    """
    _check_mode(mode)
    if is_masked(module, name):
        raise ValueError(
            f"{type(module).__name__}.{name} is already masked; use set_mask() to change its "
            "mask, or bake_masks() to remove it"
        )
    weight = _tensor_of(module, name)
    what = f"{type(module).__name__}.{name}"
    m = _as_mask(mask, weight, what)
    if mode == "freeze":
        theta0 = weight.detach().clone() if frozen is None else _as_frozen(frozen, weight, what)
    elif frozen is not None:
        raise ValueError("frozen= is only valid with mode='freeze'; got mode='prune'")
    else:
        theta0 = None
    wm = WeightMask(m, mode=mode, frozen=theta0, seed=seed)
    parametrize.register_parametrization(module, name, wm)
    _impose_original(module, name, wm)
    return wm


def set_mask(
    module: nn.Module,
    mask: Tensor,
    name: str = "weight",
    *,
    frozen: Tensor | None = None,
    seed: int | None = None,
) -> None:
    """Replace the mask of an already masked tensor (e.g. a dynamic-sparse-training topology update).

    The mode is kept and the values are re-imposed at once: in ``prune`` mode newly masked entries become 0
    and newly kept entries start from their raw value (0 if the raw tensor was kept clean); in ``freeze`` mode
    newly masked entries return to ``θ₀``. ``frozen`` (freeze mode only) replaces ``θ₀``, with ``seed`` as
    its new seed (``None`` = none). The optimizer state is not touched; see :func:`mask_optimizer_state`.
    """
    wm = get_weight_mask(module, name)
    if wm is None:
        raise ValueError(f"{type(module).__name__}.{name} is not masked; use apply_mask() first")
    what = f"{type(module).__name__}.{name}"
    m = _as_mask(mask, wm.mask, what)
    if frozen is not None and wm.mode != "freeze":
        raise ValueError(f"frozen= is only valid with mode='freeze'; {what} has mode={wm.mode!r}")
    with torch.no_grad():
        wm.mask.copy_(m)
        if frozen is not None:
            wm.frozen.copy_(_as_frozen(frozen, wm.frozen, what))
            wm.seed.fill_(_check_seed(seed))
    _impose_original(module, name, wm)


def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of every masked raw tensor at its masked entries (safety net; hooks do it too)."""
    for module, name, wm in _masks(model):
        original = _masked_original(module, name, wm)
        if original is not None and original.grad is not None:
            original.grad.masked_fill_(~wm.keep(), 0)


def enforce_masks(model: nn.Module) -> None:
    """Re-impose ``θ ← m⊙θ + (1−m)⊙θ_fixed`` on every masked raw tensor (``θ_fixed`` = 0 or ``θ₀``).

    The METHODS.md §1.8 safety net, to call after every ``optimizer.step()``: it undoes what coupled weight
    decay did to the raw masked entries. Runs under ``torch.no_grad()``; exact (no arithmetic).
    """
    for module, name, wm in _masks(model):
        _impose_original(module, name, wm)


def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Zero the optimizer state (momentum, Adam moments, ...) at the masked entries of every masked tensor.

    Affects every state tensor with the parameter's shape (``momentum_buffer``, ``exp_avg``,
    ``exp_avg_sq``, ...). Useful after :func:`set_mask` and for ``freeze`` mode under coupled weight decay.
    """
    for module, name, wm in _masks(model):
        original = _masked_original(module, name, wm)
        if original is None or original not in optimizer.state:
            continue
        for value in optimizer.state[original].values():
            if isinstance(value, Tensor) and value.shape == original.shape:
                value.masked_fill_(~wm.keep(), 0)


def remove_parametrizations(module: nn.Module, name: str, *, leave_parametrized: bool = True) -> None:
    """``torch.nn.utils.parametrize.remove_parametrizations`` that is safe on a ``copy.deepcopy``'d module.

    torch gives each parametrized module a generated class holding one property per parametrized tensor;
    ``deepcopy`` shares that class between the copy and the original, and removing a parametrization deletes
    the property from the shared class -- which breaks the original (``no attribute 'weight'``). The module
    gets a private copy of its class first.
    """
    cls = type(module)
    if parametrize.is_parametrized(module):
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.remove_parametrizations(module, name, leave_parametrized=leave_parametrized)


def bake_masks(model: nn.Module) -> nn.Module:
    """Replace every masked tensor by a plain parameter equal to its effective weight; return ``model``.

    Uses ``parametrize.remove_parametrizations(..., leave_parametrized=True)``, which keeps the
    ``Parameter`` objects (optimizers stay valid) and restores the module's original class. The gradient hooks
    are removed. Note that *all* parametrizations of a masked tensor are baked, not only the mask.
    """
    for module, name, wm in list(_masks(model)):
        remove_parametrizations(module, name)
        wm.remove_grad_hook()  # afterwards: computing the baked value ran the parametrization's hook check
    return model


def restore_masks(model: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Attach the masks found in ``state_dict`` to a fresh model, so that ``model.load_state_dict`` works.

    Looks for keys ``<module>.parametrizations.<name>.<i>.mask``; a matching ``...frozen`` key means
    ``freeze`` mode (else ``prune``), and ``...seed`` is passed on. Tensors that are already masked are left
    alone if their mode matches. The values of the model are not loaded here: call
    ``model.load_state_dict(state_dict)`` afterwards. Returns the qualified names (``"conv1.weight"``) of the
    tensors newly masked.

    Raises:
        ValueError: a module is missing, a shape differs, the mode of an existing mask differs, or the mask
            sits at a parametrization index the model cannot reproduce (other parametrizations must be
            registered first).
    """
    restored: list[str] = []
    for key, mask in state_dict.items():
        match = _MASK_KEY.match(key)
        if match is None:
            continue
        base = key[: -len(".mask")]
        module_name, name, index = match["module"] or "", match["tensor"], int(match["index"])
        module = _submodule(model, module_name, key)
        frozen = state_dict.get(f"{base}.frozen")
        mode = "prune" if frozen is None else "freeze"
        seed_tensor = state_dict.get(f"{base}.seed")
        seed = None if seed_tensor is None or int(seed_tensor) < 0 else int(seed_tensor)
        if _restore_one(module, name, index, mask, mode, frozen, seed, key):
            restored.append(f"{module_name}.{name}" if module_name else name)
    return restored


def _submodule(model: nn.Module, module_name: str, key: str) -> nn.Module:
    try:
        return model.get_submodule(module_name)
    except AttributeError as exc:
        raise ValueError(
            f"state_dict key {key!r} names module {module_name!r}, which the model lacks"
        ) from exc


def _restore_one(
    module: nn.Module,
    name: str,
    index: int,
    mask: Tensor,
    mode: str,
    frozen: Tensor | None,
    seed: int | None,
    key: str,
) -> bool:
    existing = get_weight_mask(module, name)
    if existing is not None:
        if existing.mode != mode:
            raise ValueError(
                f"{key}: the model's mask has mode={existing.mode!r}, the state dict has {mode!r}"
            )
        return False
    plist = _parametrization_list(module, name)
    present = 0 if plist is None else len(plist)
    if present != index:
        raise ValueError(
            f"{key}: the mask is parametrization #{index} of {name!r}, but the model's {name!r} "
            f"has {present} parametrization(s); register the others first"
        )
    apply_mask(module, mask, name=name, mode=mode, frozen=frozen, seed=seed)
    return True


# --------------------------------------------------------------------------------------------- selection


def maskable_modules(
    model: nn.Module, *, include: Iterable[str] = _KINDS, exclude: Iterable[str] = ()
) -> list[tuple[str, nn.Module]]:
    """Conv (any ``_ConvNd``) and ``nn.Linear`` modules with a weight, in model order (METHODS.md §1.8).

    Args:
        include: kinds to select, a subset of ``("conv", "linear")`` (a single string is accepted).
        exclude: exact qualified module names to leave out, plus the specials ``"first"`` / ``"last"`` (the
            first / last maskable module in model order, e.g. to keep the output layer dense).

    Raises:
        ValueError: an unknown ``include`` kind, or an ``exclude`` name that is not a maskable module.
    """
    kinds = _check_include(include)
    candidates = [(n, m) for n, m in model.named_modules() if _kind_of(m) in kinds]
    names = {n for n, _ in candidates}
    excluded: set[str] = set()
    for entry in [exclude] if isinstance(exclude, str) else exclude:
        if entry in _SPECIAL_EXCLUDES:
            if candidates:
                excluded.add(candidates[0 if entry == "first" else -1][0])
        elif entry in names:
            excluded.add(entry)
        else:
            raise ValueError(
                f"exclude entry {entry!r} is neither 'first'/'last' nor a maskable module; "
                f"maskable modules: {sorted(names)}"
            )
    return [(n, m) for n, m in candidates if n not in excluded]


def _check_include(include: Iterable[str]) -> set[str]:
    kinds = {include} if isinstance(include, str) else set(include)
    unknown = kinds - set(_KINDS)
    if unknown:
        raise ValueError(
            f"include must be a subset of {', '.join(repr(k) for k in _KINDS)}; got {sorted(unknown)}"
        )
    return kinds


def _kind_of(module: nn.Module) -> str | None:
    if not isinstance(getattr(module, "weight", None), Tensor):
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None
