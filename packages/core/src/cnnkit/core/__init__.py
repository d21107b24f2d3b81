"""cnnkit.core: the public API for cnnkit users and plugin authors.

Importing this package is cheap: it imports neither torch nor any plugin. Names are resolved on first
attribute access (PEP 562), and plugins are discovered on the first call of :func:`get_registries`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.version import __version__

if TYPE_CHECKING:
    from cnnkit.core.config import ConfigError, MethodConfig
    from cnnkit.core.context import Context
    from cnnkit.core.cost import FlopCount, ParamCount, count_flops, count_params, report_macs
    from cnnkit.core.loop import MethodRunner
    from cnnkit.core.masks import apply_mask, bake_masks, enforce_masks, get_mask
    from cnnkit.core.method import (
        IncompatibleMethodsError,
        Method,
        MethodNotApplicableError,
        MethodStack,
        build_param_groups,
        create_method,
    )
    from cnnkit.core.plugins import PluginError, PluginWarning, Registries, get_registries, reset_registries
    from cnnkit.core.registry import DuplicateNameError, Registry, UnknownNameError
    from cnnkit.core.sites import Site, find_sites
    from cnnkit.core.specs import DatasetSpec, MethodSpec, MetricSpec, ModelSpec

_LAZY: dict[str, str] = {
    "ConfigError": "cnnkit.core.config",
    "MethodConfig": "cnnkit.core.config",
    "Context": "cnnkit.core.context",
    "FlopCount": "cnnkit.core.cost",
    "ParamCount": "cnnkit.core.cost",
    "count_flops": "cnnkit.core.cost",
    "count_params": "cnnkit.core.cost",
    "report_macs": "cnnkit.core.cost",
    "MethodRunner": "cnnkit.core.loop",
    "apply_mask": "cnnkit.core.masks",
    "bake_masks": "cnnkit.core.masks",
    "enforce_masks": "cnnkit.core.masks",
    "get_mask": "cnnkit.core.masks",
    "IncompatibleMethodsError": "cnnkit.core.method",
    "Method": "cnnkit.core.method",
    "MethodNotApplicableError": "cnnkit.core.method",
    "MethodStack": "cnnkit.core.method",
    "build_param_groups": "cnnkit.core.method",
    "create_method": "cnnkit.core.method",
    "PluginError": "cnnkit.core.plugins",
    "PluginWarning": "cnnkit.core.plugins",
    "Registries": "cnnkit.core.plugins",
    "get_registries": "cnnkit.core.plugins",
    "reset_registries": "cnnkit.core.plugins",
    "DuplicateNameError": "cnnkit.core.registry",
    "Registry": "cnnkit.core.registry",
    "UnknownNameError": "cnnkit.core.registry",
    "Site": "cnnkit.core.sites",
    "find_sites": "cnnkit.core.sites",
    "DatasetSpec": "cnnkit.core.specs",
    "MethodSpec": "cnnkit.core.specs",
    "MetricSpec": "cnnkit.core.specs",
    "ModelSpec": "cnnkit.core.specs",
}

__all__ = [
    "ConfigError",
    "Context",
    "DatasetSpec",
    "DuplicateNameError",
    "FlopCount",
    "IncompatibleMethodsError",
    "Method",
    "MethodConfig",
    "MethodNotApplicableError",
    "MethodRunner",
    "MethodSpec",
    "MethodStack",
    "MetricSpec",
    "ModelSpec",
    "ParamCount",
    "PluginError",
    "PluginWarning",
    "Registries",
    "Registry",
    "Site",
    "UnknownNameError",
    "__version__",
    "apply_mask",
    "bake_masks",
    "build_param_groups",
    "count_flops",
    "count_params",
    "create_method",
    "enforce_masks",
    "find_sites",
    "get_mask",
    "get_registries",
    "hookimpl",
    "report_macs",
    "reset_registries",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cnnkit.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
