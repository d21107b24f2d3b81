"""Sites: where a method acts in a model.

A *site* is a module of the model plus a position ("before" or "after" it) at which a method inserts a
layer (SWD, SFD, SBN, SR), replaces a module (HASTE, MoD) or reads activations. Sites are selected by
*stage* (the papers' "module M", METHODS.md §1.1) and by *kind*::

    find_sites(model, stages=[3, 4], kind="bn", position="after")  # SBN34: after every BN of stages 3, 4

Stages
------
:func:`stage_names` decides the stages of a model by the first rule that applies:

1. **Declared.** The first module (in ``named_modules`` order; usually the model itself) with an attribute
   ``cnnkit_stages`` declares them: a sequence whose items are a submodule name (one module forms the
   stage) or a sequence of submodule names (consecutive modules that together form the stage). Names are
   relative to the declaring module.
2. **ResNet style.** The first module with children named ``layer1``, ``layer2``, ... (consecutive,
   starting at 1): stage k is ``layerk``. This covers torchvision ResNets and CIFAR ResNets (also when
   wrapped, e.g. in DDP's ``module``).
3. **VGG style.** An :class:`~torch.nn.Sequential` with :class:`~torch.nn.MaxPool2d` children (one named
   ``features`` if there is one, else the one with the most max-pools): stage k is the run of its
   children after the (k-1)-th max-pool up to and including the k-th (5 stages in VGG-16). Children after
   the last max-pool form one more stage only if they contain a convolution.
4. **Resolution fallback** (needs ``example_input``, else :class:`ValueError`). The longest
   :class:`~torch.nn.Sequential` in the model (e.g. MobileNetV2's ``features``) is traced: the example
   input is run through the whole model (in eval mode, without gradients; training flags are restored
   afterwards, so BN statistics are not touched) with forward hooks on the Sequential's children, and
   consecutive children with the same output spatial size (H, W) form a stage. For MobileNetV2 at
   224×224 this gives 5 stages at 112/56/28/14/7. Children without a 4-D output join the stage before.

Stage numbers are 1-based; negative numbers count from the end (-1 = last stage).

Site kinds
----------
- ``"stage"``: one site per stage. A stage made of several modules (VGG, fallback) is anchored at its last
  module for position "after" (the max-pool in VGG) and its first module for "before".
- ``"block"``: the blocks of the stage. If the stage is one module with children (``layerk``), its
  children; else the stage's modules. Among those, a module with children (BasicBlock, Bottleneck,
  InvertedResidual, Conv2dNormActivation) is a block. Plain layers are grouped into *conv units*: a
  convolution followed by the normalization and activation layers right after it; a unit's site is its
  last module for "after" (the ReLU in VGG's conv→BN→ReLU) and its convolution for "before". Pools and
  other layers belong to no unit.
- ``"conv"``: every :class:`~torch.nn.Conv2d` inside the stage, ``"bn"``: every
  :class:`~torch.nn.BatchNorm2d` (also ``SyncBatchNorm`` and torchvision's ``FrozenBatchNorm2d``). Modules
  under a child named
  ``downsample`` or ``shortcut`` (residual projections) are left out unless ``include_shortcuts=True``.

Sites come in model order (``named_modules`` order). ``Site.name`` is the qualified name of the module
with :class:`Inserted` wrappers looked through (``"layer3.1.bn2"`` even after something was inserted at
it); ``Site.module`` is the original module, never a wrapper.

Inserting
---------
:func:`insert_at` replaces the module at a site, in its parent, by ``Inserted(original, added, position)``,
which runs ``added`` before or after ``original``. Its ``state_dict`` keys gain ``.original.`` /
``.added.``. Every function here looks through :class:`Inserted` wrappers and skips their ``added``
subtrees, so a second method finds the same sites as the first; inserting twice at one site nests the
wrappers, the later insertion outermost (after: original → first → second; before: second → first →
original). :func:`unwrap_inserted` removes inserted modules again (e.g. train-only layers at export).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "Inserted",
    "Position",
    "Site",
    "SiteKind",
    "find_sites",
    "insert_at",
    "iter_named_modules",
    "require_sites",
    "stage_names",
    "unwrap_inserted",
]

SiteKind = Literal["conv", "bn", "block", "stage"]
Position = Literal["before", "after"]

_KINDS: tuple[str, ...] = ("conv", "bn", "block", "stage")
_POSITIONS: tuple[str, ...] = ("before", "after")
_SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})
_BN_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm)
# Frozen BNs of detection backbones (torchvision.ops.FrozenBatchNorm2d), matched by name: core does not
# import torchvision.
_BN_CLASS_NAMES = frozenset({"FrozenBatchNorm2d"})


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, _BN_TYPES) or type(module).__name__ in _BN_CLASS_NAMES


_POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
)
# Layers that continue a conv unit (conv → norm → activation).
_UNIT_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.InstanceNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)


@dataclass(frozen=True)
class Site:
    """One place in a model where a method acts.

    Attributes:
        name: qualified name of ``module`` in the model, :class:`Inserted` wrappers looked through
            (``"layer3.1.bn2"``); for a multi-module stage, the module the site is anchored at.
        module: the module itself (the original, never an :class:`Inserted` wrapper).
        stage: 1-based stage number.
        kind: ``"conv"``, ``"bn"``, ``"block"`` or ``"stage"``.
        position: ``"before"`` or ``"after"`` the module.
    """

    name: str
    module: nn.Module
    stage: int
    kind: str
    position: str

    def __repr__(self) -> str:
        return (
            f"Site(name={self.name!r}, module={type(self.module).__name__}, stage={self.stage}, "
            f"kind={self.kind!r}, position={self.position!r})"
        )


class Inserted(nn.Module):
    """``original`` with ``added`` run right before or after it (made by :func:`insert_at`).

    Args:
        original: the module that was at the site.
        added: the inserted module.
        position: ``"before"``: ``original(added(x))``; ``"after"``: ``added(original(x))``.
    """

    def __init__(self, original: nn.Module, added: nn.Module, position: str = "after") -> None:
        super().__init__()
        _check_choice("position", position, _POSITIONS)
        self.original: nn.Module = original
        self.added: nn.Module = added
        self.position: str = position

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.position == "before":
            return self.original(self.added(*args, **kwargs))
        return self.added(self.original(*args, **kwargs))

    def extra_repr(self) -> str:
        return f"position={self.position!r}"


# ---------------------------------------------------------------------------------------------------------
# Looking through Inserted wrappers


def _innermost(module: nn.Module) -> nn.Module:
    while isinstance(module, Inserted):
        module = module.original
    return module


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of ``module`` (wrappers looked through), as they sit in their slots (maybe wrapped)."""
    return list(_innermost(module).named_children())


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in _innermost(module).children())


def iter_named_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Like ``model.named_modules()``, but looking through :class:`Inserted` wrappers.

    A wrapper is reported under its slot's name as its original module; the ``added`` subtrees are
    skipped. Each module is reported once.
    """
    memo: set[int] = set()

    def visit(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
        inner = _innermost(module)
        if id(inner) in memo:
            return
        memo.add(id(inner))
        yield name, inner
        for child_name, child in inner.named_children():
            yield from visit(child, _join(name, child_name))

    yield from visit(model, prefix)


def _walk(model: nn.Module, name: str) -> tuple[nn.Module | None, str, nn.Module]:
    """Find the slot of ``name``: ``(parent, attribute, module in the slot)``; the slot's module may be a
    wrapper. ``name`` is a qualified name with wrappers looked through (real paths through ``original``
    work too). ``""`` is the model itself, with no parent."""
    parent: nn.Module | None = None
    attr = ""
    current = model
    for part in name.split(".") if name else []:
        chain = [current]
        while isinstance(chain[-1], Inserted):
            chain.append(chain[-1].original)
        for holder in reversed(chain):
            child = holder._modules.get(part)
            if child is not None:
                parent, attr, current = holder, part, child
                break
        else:
            raise ValueError(f"{type(_innermost(model)).__name__} has no submodule {name!r}")
    return parent, attr, current


def _resolve(model: nn.Module, name: str) -> nn.Module:
    return _innermost(_walk(model, name)[2])


# ---------------------------------------------------------------------------------------------------------
# Stages


def stage_names(model: nn.Module, example_input: torch.Tensor | None = None) -> list[list[str]]:
    """Per stage (index 0 = stage 1), the qualified names of the consecutive modules forming it.

    The rules, in order of precedence, are in the module docstring: declared ``cnnkit_stages``, ResNet
    ``layer1..``, VGG max-pool segments, then the resolution fallback, which needs ``example_input``.

    Raises:
        ValueError: no rule applies (for the fallback: ``example_input`` is missing, or no
            :class:`~torch.nn.Sequential` with spatial outputs was found), or declared names are wrong.
    """
    modules = list(iter_named_modules(model))

    # 1. Declared stages.
    for prefix, module in modules:
        declared = getattr(module, "cnnkit_stages", None)
        if declared is not None:
            return _declared_stages(model, prefix, module, declared)

    # 2. ResNet style: layer1, layer2, ...
    for prefix, module in modules:
        children = {name for name, _ in module.named_children()}
        if "layer1" in children:
            stages: list[list[str]] = []
            while f"layer{len(stages) + 1}" in children:
                stages.append([_join(prefix, f"layer{len(stages) + 1}")])
            return stages

    # 3. VGG style: a Sequential split by its max-pools.
    pooled = [
        (name, module, sum(isinstance(_innermost(c), nn.MaxPool2d) for c in module.children()))
        for name, module in modules
        if isinstance(module, nn.Sequential)
    ]
    pooled = [entry for entry in pooled if entry[2] > 0]
    if pooled:
        named_features = [entry for entry in pooled if entry[0].rsplit(".", 1)[-1] == "features"]
        prefix, seq, _ = named_features[0] if named_features else max(pooled, key=lambda e: e[2])
        return _pool_stages(prefix, seq)

    # 4. Resolution fallback.
    if example_input is None:
        raise ValueError(
            f"cannot determine the stages of {type(_innermost(model)).__name__}: it declares no "
            "cnnkit_stages, has no layer1, layer2, ... children and no nn.Sequential with nn.MaxPool2d; "
            "pass example_input (an input tensor) to infer the stages from spatial resolution"
        )
    return _resolution_stages(model, modules, example_input)


def _declared_stages(model: nn.Module, prefix: str, owner: nn.Module, declared: object) -> list[list[str]]:
    where = f"{type(owner).__name__}.cnnkit_stages"
    if isinstance(declared, str) or not isinstance(declared, Sequence):
        raise ValueError(f"{where} must be a sequence of submodule names, got {declared!r}")
    if not declared:
        return []  # the model declares that it has no stages (e.g. an MLP)
    stages: list[list[str]] = []
    for item in declared:
        names = [item] if isinstance(item, str) else item
        if (
            isinstance(names, str)
            or not isinstance(names, Sequence)
            or not names
            or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(
                f"{where}: each item must be a submodule name or a non-empty sequence of names, got {item!r}"
            )
        stage = [_join(prefix, n) for n in names]
        for name in stage:
            try:
                _walk(model, name)
            except ValueError:
                raise ValueError(f"{where} names {name!r}, which is not a submodule of the model") from None
        stages.append(stage)
    return stages


def _pool_stages(prefix: str, seq: nn.Module) -> list[list[str]]:
    stages: list[list[str]] = []
    current: list[str] = []
    trailing_conv = False
    for name, child in _children(seq):
        current.append(_join(prefix, name))
        if isinstance(_innermost(child), nn.MaxPool2d):
            stages.append(current)
            current, trailing_conv = [], False
        elif any(isinstance(m, nn.Conv2d) for _, m in iter_named_modules(child)):
            trailing_conv = True
    if current and trailing_conv:
        stages.append(current)
    return stages


def _resolution_stages(
    model: nn.Module, modules: list[tuple[str, nn.Module]], example_input: torch.Tensor
) -> list[list[str]]:
    seqs = [(name, m) for name, m in modules if isinstance(m, nn.Sequential) and len(m) > 0]
    if not seqs:
        raise ValueError(
            f"cannot infer the stages of {type(_innermost(model)).__name__} from resolution: "
            "it has no nn.Sequential to trace; declare cnnkit_stages instead"
        )
    prefix, seq = max(seqs, key=lambda e: len(e[1]))  # first of the longest
    children = _children(seq)
    sizes: dict[str, tuple[int, int]] = {}

    def recorder(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in sizes and isinstance(output, torch.Tensor) and output.dim() >= 3:
                sizes[name] = (int(output.shape[-2]), int(output.shape[-1]))

        return hook

    handles = [child.register_forward_hook(recorder(name)) for name, child in children]
    training = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    x = example_input.to(param.device) if param is not None else example_input
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training:
            m.training = flag

    stages: list[list[str]] = []
    last_size: tuple[int, int] | None = None
    pending: list[str] = []  # children before the first spatial output
    for name, _ in children:
        full = _join(prefix, name)
        size = sizes.get(name)
        if size is None:
            (stages[-1] if stages else pending).append(full)
        elif stages and size == last_size:
            stages[-1].append(full)
        else:
            stages.append([*pending, full])
            pending, last_size = [], size
    if not stages:
        raise ValueError(
            f"cannot infer the stages of {type(_innermost(model)).__name__} from resolution: no child of "
            f"{prefix or 'the model'!r} produced a spatial (N, C, H, W) output; declare cnnkit_stages instead"
        )
    return stages


# ---------------------------------------------------------------------------------------------------------
# Sites


def _check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")


def _select_stages(stages: Sequence[int] | int | None, n: int) -> list[int]:
    if stages is None:
        return list(range(1, n + 1))
    requested = [stages] if isinstance(stages, int) else list(stages)
    if n == 0:
        raise ValueError(
            f"stages={requested!r}: this model declares no stages (cnnkit_stages is empty), "
            "so methods placed at stages cannot act on it"
        )
    for s in requested:
        if not isinstance(s, int) or isinstance(s, bool):
            raise TypeError(f"stages must be integers, got {s!r} in stages={requested!r}")
    bad = [s for s in requested if not (1 <= s <= n or -n <= s <= -1)]
    if bad:
        raise ValueError(
            f"stages={requested!r} out of range: this model has stages 1..{n} "
            f"(or -{n}..-1 counting from the last)"
        )
    return sorted({s if s > 0 else n + 1 + s for s in requested})


def _block_sites(items: list[tuple[str, nn.Module]], position: str) -> list[tuple[str, nn.Module]]:
    sites: list[tuple[str, nn.Module]] = []
    unit: list[tuple[str, nn.Module]] = []

    def close() -> None:
        if unit:
            sites.append(unit[-1] if position == "after" else unit[0])
            unit.clear()

    for name, module in items:
        if _has_children(module):
            close()
            sites.append((name, module))
        elif isinstance(module, nn.Conv2d):
            close()
            unit.append((name, module))
        elif unit and isinstance(module, _UNIT_TYPES):
            unit.append((name, module))
        else:
            close()
    close()
    return sites


def _stage_sites(
    model: nn.Module, names: list[str], kind: str, position: str, include_shortcuts: bool
) -> list[tuple[str, nn.Module]]:
    members = [(name, _resolve(model, name)) for name in names]
    if kind == "stage":
        return [members[-1] if position == "after" else members[0]]
    if kind == "block":
        if len(members) == 1 and _has_children(members[0][1]):
            name, module = members[0]
            items = [(_join(name, c), _innermost(m)) for c, m in _children(module)]
        else:
            items = members
        return _block_sites(items, position)
    matches = (lambda m: isinstance(m, nn.Conv2d)) if kind == "conv" else _is_bn
    found: list[tuple[str, nn.Module]] = []
    for member_name, member in members:
        for name, module in iter_named_modules(member, member_name):
            relative = name[len(member_name) :].split(".")
            if matches(module) and (include_shortcuts or not _SHORTCUT_NAMES.intersection(relative)):
                found.append((name, module))
    return found


def find_sites(
    model: nn.Module,
    stages: Sequence[int] | None = None,
    kind: SiteKind = "block",
    position: Position = "after",
    example_input: torch.Tensor | None = None,
    *,
    include_shortcuts: bool = False,
) -> list[Site]:
    """The sites of ``kind`` in the selected stages, in model order.

    Args:
        model: the model (may already contain :class:`Inserted` wrappers; they are looked through).
        stages: 1-based stage numbers, negative from the end (-1 = last); ``None``: every stage.
        kind: ``"conv"``, ``"bn"``, ``"block"`` or ``"stage"`` (see the module docstring).
        position: ``"before"`` or ``"after"``; also picks the anchor of multi-module stages and VGG
            conv units.
        example_input: an input batch, needed only when the stages come from the resolution fallback.
        include_shortcuts: for ``"conv"``/``"bn"``, also the modules under ``downsample``/``shortcut``.

    Raises:
        ValueError: bad ``kind``/``position``, stages out of range, or stages that cannot be determined.
    """
    _check_choice("kind", kind, _KINDS)
    _check_choice("position", position, _POSITIONS)
    all_stages = stage_names(model, example_input)
    selected = _select_stages(stages, len(all_stages))
    sites: dict[str, Site] = {}
    for k in selected:
        for name, module in _stage_sites(model, all_stages[k - 1], kind, position, include_shortcuts):
            if name not in sites:
                sites[name] = Site(name=name, module=module, stage=k, kind=kind, position=position)
    order = {name: i for i, (name, _) in enumerate(iter_named_modules(model))}
    return sorted(sites.values(), key=lambda site: order.get(site.name, len(order)))


def insert_at(model: nn.Module, site: Site, new_module: nn.Module) -> nn.Module:
    """Place ``new_module`` before or after ``site.module`` and return ``model`` (changed in place).

    The module in the site's slot is replaced, in its parent (a named attribute or an index of an
    :class:`~torch.nn.Sequential`), by ``Inserted(slot_module, new_module, site.position)``.

    Raises:
        ValueError: the site is the model itself, or is stale (its name no longer leads to its module).
    """
    _check_choice("position", site.position, _POSITIONS)
    if not site.name:
        raise ValueError("cannot insert at the model itself (site.name is ''); wrap the model instead")
    parent, attr, slot = _walk(model, site.name)
    chain = [slot]
    while isinstance(chain[-1], Inserted):
        chain.append(chain[-1].original)
    if parent is None or not any(m is site.module for m in chain):
        raise ValueError(
            f"stale site: {site.name!r} is a {type(_innermost(slot)).__name__}, not the site's "
            f"{type(site.module).__name__}; call find_sites again on this model"
        )
    setattr(parent, attr, Inserted(slot, new_module, site.position))
    return model


def unwrap_inserted(model: nn.Module, predicate: Callable[[nn.Module], bool] | None = None) -> nn.Module:
    """Remove the inserted modules for which ``predicate(added)`` is true (all if ``predicate`` is None).

    Each such :class:`Inserted` is replaced by its original module, in place. Returns the model (its
    original if the model itself was such a wrapper).
    """

    def strip(module: nn.Module) -> nn.Module:
        for name, child in list(module._modules.items()):
            if child is not None:
                new = strip(child)
                if new is not child:
                    setattr(module, name, new)
        if isinstance(module, Inserted) and (predicate is None or predicate(module.added)):
            return module.original
        return module

    return strip(model)


def require_sites(
    model: nn.Module,
    *,
    method: str,
    stages: Sequence[int] | None,
    example_input: torch.Tensor | None = None,
    **selector: Any,
) -> list[Site]:
    """:func:`find_sites` for a method's ``apply``: a model the method cannot act on (missing stages, no
    matching site) raises :class:`~cnnkit.core.method.MethodNotApplicableError` naming the method, the
    ``stages`` field and what the model has, so the bench records the run as skipped with that reason."""
    from cnnkit.core.method import MethodNotApplicableError

    shown = None if stages is None else list(stages)
    try:
        sites = find_sites(model, stages=stages, example_input=example_input, **selector)
    except ValueError as exc:
        raise MethodNotApplicableError(f"{method}: config field 'stages'={shown}: {exc}") from exc
    if not sites:
        kind = selector.get("kind", "block")
        raise MethodNotApplicableError(
            f"{method}: stages {shown} of {type(model).__name__} contain no {kind!r} site"
        )
    return sites
