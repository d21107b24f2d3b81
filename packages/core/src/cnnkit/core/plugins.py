"""Plugin discovery: builds the registries from entry points, lazily and once.

Nothing here runs at import time. :func:`get_registries` creates a pluggy ``PluginManager``, loads every
entry point of group ``cnnkit`` (a module per distribution), and calls each plugin's registrar hooks with
the matching :class:`~cnnkit.core.registry.Registry`. The result is cached until :func:`reset_registries`.

Environment variables:

``CNNKIT_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry point at all (plugins can still be added with :meth:`Registries.register_plugin`).
``CNNKIT_DISABLED_PLUGINS=a,b``
    skip these plugins; a name matches an entry-point name (``cnnkit_pruning``) or a distribution
    name (``cnnkit-pruning``).
``CNNKIT_STRICT_PLUGINS=1``
    a plugin that fails to import or register raises :class:`PluginError` instead of a warning.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from cnnkit.core import hookspecs
from cnnkit.core.registry import Registry
from cnnkit.core.specs import DatasetSpec, MethodSpec, MetricSpec, ModelSpec

__all__ = [
    "PluginError",
    "PluginWarning",
    "Registries",
    "get_registries",
    "reset_registries",
]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
_TRUE = {"1", "true", "yes", "on"}


class PluginError(RuntimeError):
    """A plugin failed to load or register (raised only in strict mode)."""


class PluginWarning(UserWarning):
    """A plugin failed to load or register and was skipped."""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its entry-point name, distribution and version."""

    name: str
    distribution: str
    version: str
    module: str

    def describe(self) -> str:
        return f"{self.distribution} {self.version} (entry point {self.name!r})"


@dataclass
class Registries:
    """The four registries plus the plugin manager that filled them.

    Attributes:
        methods: :class:`MethodSpec` registry.
        models: :class:`ModelSpec` registry.
        datasets: :class:`DatasetSpec` registry.
        metrics: :class:`MetricSpec` registry.
        plugins: the plugins that registered successfully, by name.
        failed: plugins that were skipped, name → error message.
    """

    methods: Registry[MethodSpec] = field(default_factory=lambda: Registry("method", MethodSpec))
    models: Registry[ModelSpec] = field(default_factory=lambda: Registry("model", ModelSpec))
    datasets: Registry[DatasetSpec] = field(default_factory=lambda: Registry("dataset", DatasetSpec))
    metrics: Registry[MetricSpec] = field(default_factory=lambda: Registry("metric", MetricSpec))
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())

    def _hooks(self) -> list[tuple[str, Registry[Any]]]:
        return [
            ("cnnkit_register_methods", self.methods),
            ("cnnkit_register_models", self.models),
            ("cnnkit_register_datasets", self.datasets),
            ("cnnkit_register_metrics", self.metrics),
        ]

    def register_plugin(self, plugin: ModuleType | object, info: PluginInfo | None = None) -> bool:
        """Register a plugin object (module or instance with hookimpls) and run its registrar hooks.

        Returns ``True`` on success. On failure the plugin's registrations are rolled back, and the
        error is raised (strict mode) or reported as a :class:`PluginWarning` naming the distribution.
        """
        info = info or _info_for_object(plugin)
        if info.name in self.plugins:
            raise PluginError(
                f"plugin {info.name!r} is already registered ({self.plugins[info.name].describe()})"
            )
        snapshot = [(registry, set(registry.names())) for _, registry in self._hooks()]
        try:
            self.manager.register(plugin, name=info.name)
            self._call_registrars(plugin, info)
        except Exception as exc:
            self._rollback(plugin, snapshot)
            self._report(info, "failed to register", exc)
            return False
        self.plugins[info.name] = info
        return True

    def _call_registrars(self, plugin: object, info: PluginInfo) -> None:
        for hook_name, registry in self._hooks():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                registry.default_source = info.describe()
                try:
                    impl.function(registry=registry)
                finally:
                    registry.default_source = "<unknown>"

    def _rollback(self, plugin: object, snapshot: list[tuple[Registry[Any], set[str]]]) -> None:
        for registry, before in snapshot:
            for name in set(registry.names()) - before:
                registry.remove(name)
        if self.manager.is_registered(plugin):
            self.manager.unregister(plugin)

    def _report(self, info: PluginInfo, what: str, exc: BaseException) -> None:
        message = f"cnnkit plugin {info.describe()} {what}: {type(exc).__name__}: {exc}"
        self.failed[info.name] = message
        if self.strict:
            raise PluginError(message) from exc
        warnings.warn(message + " -- skipped; other plugins keep working.", PluginWarning, stacklevel=3)

    def load_entry_points(self, disabled: set[str] | frozenset[str] = frozenset()) -> None:
        """Load every entry point of group ``cnnkit`` whose name or distribution is not ``disabled``."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            info = _info_for_entry_point(ep)
            if {info.name, info.distribution, _normalize(info.distribution)} & disabled:
                continue
            try:
                module = ep.load()
            except Exception as exc:
                self._report(info, "failed to import", exc)
                continue
            self.register_plugin(module, info)


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def _info_for_entry_point(ep: metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    distribution = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
    version = dist.version if dist is not None else "?"
    return PluginInfo(name=ep.name, distribution=distribution, version=version, module=ep.value)


def _info_for_object(plugin: object) -> PluginInfo:
    name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    return PluginInfo(name=name, distribution=f"<local plugin {name}>", version="-", module=name)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_list(name: str) -> set[str]:
    raw = os.environ.get(name, "")
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return names | {_normalize(n) for n in names}


_lock = threading.Lock()
_cached: Registries | None = None


def build_registries(*, autoload: bool | None = None, strict: bool | None = None) -> Registries:
    """Build fresh registries (uncached), honouring the environment variables unless overridden."""
    registries = Registries(strict=_env_flag("CNNKIT_STRICT_PLUGINS") if strict is None else strict)
    if autoload is None:
        autoload = not _env_flag("CNNKIT_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        registries.load_entry_points(frozenset(_env_list("CNNKIT_DISABLED_PLUGINS")))
    return registries


def get_registries() -> Registries:
    """The process-wide registries, built on first call and cached."""
    global _cached
    if _cached is None:
        with _lock:
            if _cached is None:
                _cached = build_registries()
    return _cached


def reset_registries() -> None:
    """Forget the cached registries; the next :func:`get_registries` rebuilds them (tests, notebooks)."""
    global _cached
    with _lock:
        _cached = None


def registries_built() -> bool:
    """Whether :func:`get_registries` has built the registries in this process."""
    return _cached is not None
