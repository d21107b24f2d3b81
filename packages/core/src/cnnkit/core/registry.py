"""``Registry``: a name → spec mapping that remembers who registered what.

Iteration is sorted by name so test ids and listings are stable. Errors are written for humans: a
duplicate names both sources; an unknown name lists close matches and everything installed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from cnnkit.core.specs import Spec

__all__ = ["DuplicateNameError", "Registry", "UnknownNameError"]

SpecT = TypeVar("SpecT", bound=Spec)


class DuplicateNameError(ValueError):
    """A name was registered twice."""


class UnknownNameError(KeyError):
    """A name is not registered. ``str()`` gives the full message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[SpecT]):
    """Specs of one kind (methods, models, datasets or metrics), keyed by ``spec.name``.

    Args:
        kind: what the registry holds, used in messages (``"method"``, ``"model"``, ...).
        spec_type: the spec class every entry must be an instance of.
    """

    def __init__(self, kind: str, spec_type: type[SpecT]) -> None:
        self.kind = kind
        self.spec_type = spec_type
        self._specs: dict[str, SpecT] = {}
        self._sources: dict[str, str] = {}
        self.default_source = "<unknown>"
        """Source recorded when ``add`` is called without one (set by the plugin loader per plugin)."""

    def add(self, spec: SpecT, *, source: str | None = None) -> SpecT:
        """Register ``spec`` and return it.

        Raises:
            TypeError: ``spec`` is not a ``spec_type``.
            DuplicateNameError: the name is taken; the message names both sources.
        """
        if not isinstance(spec, self.spec_type):
            raise TypeError(
                f"{self.kind} registry takes {self.spec_type.__name__} objects, got {type(spec).__name__}"
            )
        origin = source if source is not None else self.default_source
        if spec.name in self._specs:
            raise DuplicateNameError(
                f"{self.kind} {spec.name!r} is registered twice: first by {self._sources[spec.name]}, "
                f"again by {origin}. Uninstall or disable one of them (CNNKIT_DISABLED_PLUGINS=...)."
            )
        self._specs[spec.name] = spec
        self._sources[spec.name] = origin
        return spec

    def get(self, name: str) -> SpecT:
        """Return the spec called ``name``.

        Raises:
            UnknownNameError: with close matches and the installed names.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def source(self, name: str) -> str:
        """Who registered ``name`` (distribution, version and entry point, or the given source)."""
        self.get(name)
        return self._sources[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._specs)

    def remove(self, name: str) -> SpecT:
        """Unregister ``name`` and return its spec (for tests and interactive use)."""
        spec = self.get(name)
        del self._specs[name]
        del self._sources[name]
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[SpecT]:
        return iter([self._specs[name] for name in sorted(self._specs)])

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    def _unknown_message(self, name: str) -> str:
        installed = self.names()
        close = difflib.get_close_matches(name, installed, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(installed) if installed else "none (is a cnnkit package installed?)"
        return f"unknown {self.kind} {name!r}.{hint} Installed {self.kind}s: {listing}."
