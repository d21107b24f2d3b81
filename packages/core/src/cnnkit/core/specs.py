"""Specs: small, frozen, validated descriptions of what a plugin provides.

A spec names its implementation by a ``"package.module:Object"`` string (``target``); :meth:`Spec.load`
imports it on first use only, so listing what is installed never imports method code.

All specs are frozen pydantic models with ``extra="forbid"``: a misspelled field is an error, not a
silently ignored value.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "METHOD_KINDS",
    "DatasetSpec",
    "MethodKind",
    "MethodSpec",
    "MetricSpec",
    "ModelSpec",
    "Spec",
    "SpecLoadError",
    "load_target",
]

MethodKind = Literal["regularizer", "pruner", "efficiency"]
METHOD_KINDS: tuple[str, ...] = ("regularizer", "pruner", "efficiency")

_NAME_PATTERN = r"^[a-z][a-z0-9_\-]*$"
_TARGET_PATTERN = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"


class SpecLoadError(ImportError):
    """A spec's ``target`` could not be imported or resolved."""


_loaded: dict[str, Any] = {}


def load_target(target: str) -> Any:
    """Import ``"package.module:Object"`` (``Object`` may be dotted) and return the object (cached)."""
    if target in _loaded:
        return _loaded[target]
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import error of the plugin's code, reported with the target
        raise SpecLoadError(f"cannot import module {module_name!r} of target {target!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecLoadError(
                f"module {module_name!r} has no attribute {attr_path!r} (target {target!r})"
            ) from None
    _loaded[target] = obj
    return obj


class Spec(BaseModel):
    """Fields shared by every spec.

    Args:
        name: registry key: lower case letters, digits, ``_`` and ``-``, starting with a letter.
        target: ``"package.module:Object"`` naming the implementation; imported by :meth:`load`.
        summary: one line shown by ``cnnkit list``.
        paper: citation or arXiv id of the method's paper (may be empty).
        tags: free-form labels for filtering.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN, min_length=1, max_length=64)
    target: str = Field(pattern=_TARGET_PATTERN)
    summary: str = ""
    paper: str = ""
    tags: tuple[str, ...] = ()

    def load(self) -> Any:
        """Import and return the object named by ``target`` (first use only; later calls are cached)."""
        return load_target(self.target)


class MethodSpec(Spec):
    """A method: a regularizer, a pruner (also freezers) or an efficiency module.

    ``target`` names a subclass of :class:`cnnkit.core.Method`.
    """

    kind: MethodKind


class ModelSpec(Spec):
    """A model factory ``f(*, num_classes, in_channels, **kwargs) -> nn.Module``.

    Args:
        input_shape: the (C, H, W) input the model is designed for, if fixed (e.g. ``(3, 32, 32)``).
        num_classes: the default number of classes.
    """

    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = Field(default=None, ge=1)

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (len(value) != 3 or any(d <= 0 for d in value)):
            raise ValueError("input_shape must be three positive ints (C, H, W)")
        return value


class DatasetSpec(Spec):
    """A dataset factory ``f(*, split, root, **kwargs) -> Dataset``.

    Args:
        num_classes: number of classes of the labels.
        input_shape: the (C, H, W) shape of one input after the standard transform.
    """

    num_classes: int | None = Field(default=None, ge=1)
    input_shape: tuple[int, ...] | None = None


class MetricSpec(Spec):
    """A metric.

    Args:
        higher_is_better: direction of improvement, used by reports.
        unit: unit shown in reports (``"%"``, ``"MMAC"``, ``"ms"``, ...).
    """

    higher_is_better: bool = True
    unit: str = ""
