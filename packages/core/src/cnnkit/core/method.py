"""The Method lifecycle: one contract for every cnnkit method.

A method changes a model and, optionally, how it trains. Whoever runs the training loop calls its
events in this order (see :class:`cnnkit.core.MethodRunner` for a helper that does it)::

    model = method.apply(model, ctx)              # once, before the optimizer is built
    for each step:
        method.before_step(ctx)
        loss = loss_fn(model(x), y) + method.extra_loss(model, ctx)
        loss.backward()
        method.after_backward(ctx)                # e.g. mask gradients
        optimizer.step()
        method.after_step(ctx)                    # e.g. re-impose masks, update a sparse topology
    method.after_epoch(ctx)                       # once per epoch
    deploy = method.export(model)                 # inference model
    facts = method.stats(model)                   # {"sparsity": ..., ...}

Every event has a do-nothing default, so a method overrides only what it needs. Methods never own the
training loop. A subclass sets ``name``, ``kind`` and ``Config`` (a :class:`MethodConfig`) and takes its
configuration keyword-only: ``MyMethod(config=MyMethod.Config(p=0.2))`` or ``MyMethod(p=0.2)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from cnnkit.core.config import ConfigError, MethodConfig, validate_config
from cnnkit.core.context import Context

__all__ = [
    "IncompatibleMethodsError",
    "Method",
    "MethodNotApplicableError",
    "MethodStack",
    "create_method",
]


class IncompatibleMethodsError(ValueError):
    """Two methods cannot be combined (raised by :meth:`MethodStack.apply`)."""


class MethodNotApplicableError(ValueError):
    """A method cannot act on this model (e.g. it needs residual stages the model does not have).

    Raise it from :meth:`Method.apply` with the reason; the bench records such a run as *skipped*, not failed.
    """


class Method:
    """Base class of all methods.

    Class attributes:
        name: registry name (set by the subclass; :func:`create_method` checks it matches the spec).
        kind: ``"regularizer"``, ``"pruner"`` or ``"efficiency"``.
        Config: the pydantic config class; its defaults are the paper's.
        conflicts: names of methods, or ``"kind:<kind>"``, this method cannot be stacked with.
        allow_multiple: whether one stack may hold this method twice (e.g. at different sites).
        export_preserves_output: see below.
        contract_config: see below.
        demo_config: see below.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    conflicts: ClassVar[frozenset[str]] = frozenset()
    allow_multiple: ClassVar[bool] = False
    export_preserves_output: ClassVar[bool] = True
    """Whether ``export(model)`` computes the same eval-mode function as ``model`` (checked by the
    contract tests); ``False`` for methods whose export changes the function on purpose."""
    contract_config: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Config overrides used by :mod:`cnnkit.core.testing`'s contract checks on tiny models."""
    demo_config: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Config overrides the bench's demo (LeNet-5-Caffe, 28x28 grey images) uses, for a method whose paper
    defaults do not fit that model (HASTE replaces 3x3 convs by default; LeNet's are 5x5)."""

    def __init__(self, *, config: MethodConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = validate_config(self.Config, overrides, owner=self._owner())
        elif overrides:
            values = {**config.model_dump(), **overrides}
            config = validate_config(self.Config, values, owner=self._owner())
        elif not isinstance(config, self.Config):
            raise ConfigError(
                self._owner(), [("config", f"expected {self.Config.__name__}, got {type(config).__name__}")]
            )
        self.config = config

    @classmethod
    def _owner(cls) -> str:
        return f"method {cls.name!r}" if cls.name else cls.__qualname__

    # -- events ---------------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Change ``model`` before training (insert modules, reparametrize, select weights) and return it.

        May modify ``model`` in place; always use the returned module.
        """
        return model

    def before_step(self, ctx: Context) -> None:
        """Called before the forward pass of each training step."""

    def extra_loss(self, model: nn.Module, ctx: Context) -> torch.Tensor | float:
        """A term added to the training loss (``0.0`` by default)."""
        return 0.0

    def after_backward(self, ctx: Context) -> None:
        """Called after ``loss.backward()`` and before ``optimizer.step()`` (e.g. to mask gradients)."""

    def after_step(self, ctx: Context) -> None:
        """Called after ``optimizer.step()`` (e.g. to re-impose masks or update a sparse topology)."""

    def after_epoch(self, ctx: Context) -> None:
        """Called at the end of each epoch (e.g. iterative pruning rounds)."""

    def export(self, model: nn.Module) -> nn.Module:
        """An inference model: fold reparametrizations, bake masks, drop train-only modules."""
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        """Facts about the method's effect on ``model`` (sparsity, trained parameters, ...)."""
        return {}

    def test_stats(self, model: nn.Module) -> dict[str, float]:
        """Facts that depend on the data the exported ``model`` has seen since :meth:`export` (for a
        data-dependent cost such as HASTE's FLOPs). The bench calls it right after the test pass on the
        deployed model and lets these values replace :meth:`stats`'s keys of the same name."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The method's own training state that is not in the model (round counters, schedules, ...).

        Saved in checkpoints so that a resumed run continues exactly; must hold only tensors and plain
        Python values (it is loaded with ``torch.load(weights_only=True)``).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but was given keys {sorted(state)}")

    def checkpoint_phase(self) -> int:
        """The training phase the model is in, a counter that never decreases (default: always 0).

        Checkpoint selection (the bench's best-validation protocol) compares only checkpoints of the latest
        phase: a method whose model changes its nature during training -- IMP's pruning rounds -- counts its
        phases here, so that a denser checkpoint of an earlier round is never reported as the result.
        """
        return 0

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups with special settings (e.g. ``{"params": [...], "weight_decay": 0}``).

        Parameters not listed here go to the default group (see :func:`cnnkit.core.build_param_groups`).
        """
        return []

    # -- composition ----------------------------------------------------------------------------------
    def conflict_with(self, other: Method) -> str | None:
        """Why ``self`` cannot be stacked with ``other``, or ``None`` when it can."""
        for a, b in ((self, other), (other, self)):
            if b.name in a.conflicts or f"kind:{b.kind}" in a.conflicts:
                return f"{a.name or type(a).__name__} declares a conflict with {b.name or type(b).__name__}"
        if type(self) is type(other) and not self.allow_multiple:
            return f"{self.name or type(self).__name__} appears twice; it does not allow multiple instances"
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({fields})"


class MethodStack(Method):
    """Several methods acting as one: applied in order, events dispatched in order.

    ``extra_loss`` sums the members' terms; ``stats`` merges them, prefixing keys with the method name
    when two members report the same key. Incompatible members raise :class:`IncompatibleMethodsError`
    at :meth:`apply`.
    """

    name = "stack"
    allow_multiple = True

    def __init__(self, methods: Iterable[Method]) -> None:
        super().__init__(config=MethodConfig())
        self.methods: list[Method] = list(methods)
        for method in self.methods:
            if not isinstance(method, Method):
                raise TypeError(f"MethodStack takes Method instances, got {type(method).__name__}")

    def __iter__(self) -> Iterator[Method]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    def check_compatible(self) -> None:
        """Raise :class:`IncompatibleMethodsError` if any two members conflict."""
        for i, first in enumerate(self.methods):
            for second in self.methods[i + 1 :]:
                reason = first.conflict_with(second)
                if reason:
                    raise IncompatibleMethodsError(f"cannot combine {first!r} with {second!r}: {reason}")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self.check_compatible()
        for method in self.methods:
            model = method.apply(model, ctx)
        return model

    def before_step(self, ctx: Context) -> None:
        for method in self.methods:
            method.before_step(ctx)

    def extra_loss(self, model: nn.Module, ctx: Context) -> torch.Tensor | float:
        total: torch.Tensor | float = 0.0
        for method in self.methods:
            total = total + method.extra_loss(model, ctx)
        return total

    def after_backward(self, ctx: Context) -> None:
        for method in self.methods:
            method.after_backward(ctx)

    def after_step(self, ctx: Context) -> None:
        for method in self.methods:
            method.after_step(ctx)

    def after_epoch(self, ctx: Context) -> None:
        for method in self.methods:
            method.after_epoch(ctx)

    def export(self, model: nn.Module) -> nn.Module:
        for method in reversed(self.methods):
            model = method.export(model)
        return model

    def stats(self, model: nn.Module) -> dict[str, float]:
        return self._merged(model, "stats")

    def test_stats(self, model: nn.Module) -> dict[str, float]:
        return self._merged(model, "test_stats")

    def _merged(self, model: nn.Module, hook: str) -> dict[str, float]:
        merged: dict[str, float] = {}
        for method in self.methods:
            for key, value in getattr(method, hook)(model).items():
                merged[f"{method.name}.{key}" if key in merged else key] = value
        return merged

    def state_dict(self) -> dict[str, Any]:
        return {str(i): method.state_dict() for i, method in enumerate(self.methods)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {str(i) for i in range(len(self.methods))}:
            raise ValueError(
                f"stack state has keys {sorted(state)}, expected one per method (0..{len(self) - 1})"
            )
        for i, method in enumerate(self.methods):
            method.load_state_dict(state[str(i)])

    def checkpoint_phase(self) -> int:
        return sum(method.checkpoint_phase() for method in self.methods)  # each counter never decreases

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        for method in self.methods:
            groups.extend(method.param_groups(model))
        return groups

    def __repr__(self) -> str:
        return f"MethodStack({self.methods!r})"


def create_method(name: str | type[Method], /, **config: Any) -> Method:
    """Create a ready method by registry name (or class), validating ``config``.

    >>> method = create_method("swd", p=0.1, variant="1d")  # doctest: +SKIP

    Raises:
        UnknownNameError: no method of that name is installed (with close matches).
        ConfigError: a config value is invalid; the message names the field and the allowed range.
        TypeError: ``name`` is neither a string nor a :class:`Method` subclass.
    """
    if isinstance(name, str):
        from cnnkit.core.plugins import get_registries

        spec = get_registries().methods.get(name)
        cls = spec.load()
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"method {name!r}: target {spec.target!r} is not a cnnkit.core.Method subclass")
        if cls.name and cls.name != spec.name:
            raise TypeError(f"method {name!r}: target class declares name {cls.name!r}; they must agree")
        if cls.kind and cls.kind != spec.kind:
            raise TypeError(f"method {name!r}: spec kind {spec.kind!r} but class kind {cls.kind!r}")
    elif isinstance(name, type) and issubclass(name, Method):
        cls = name
    else:
        raise TypeError(
            f"create_method takes a registry name (str) or a cnnkit.core.Method subclass, got {name!r}"
        )
    return cls(**config)


def build_param_groups(
    model: nn.Module, methods: Method | Sequence[Method], **defaults: Any
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the methods' special groups, then one default group for the rest.

    ``defaults`` (e.g. ``weight_decay=5e-4``) apply to the default group. A parameter claimed by two
    methods raises ``ValueError``.
    """
    methods = [methods] if isinstance(methods, Method) else list(methods)
    special: list[dict[str, Any]] = []
    claimed: dict[int, str] = {}
    for method in methods:
        for group in method.param_groups(model):
            params = list(group["params"])
            for p in params:
                if id(p) in claimed:
                    raise ValueError(
                        f"a parameter is claimed by two param groups ({claimed[id(p)]}, {method.name})"
                    )
                claimed[id(p)] = method.name
            special.append({**group, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    return [{"params": rest, **defaults}, *special]
