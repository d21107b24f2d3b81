"""Hook specifications of cnnkit: the contract between cnnkit and its plugins.

A *plugin* is a module (for installed distributions: the module named by an entry point in the group
``cnnkit``) that defines functions decorated with :data:`cnnkit.core.hookimpl` whose names are the hooks
below. Plugins are the table of contents of a distribution: they import only ``cnnkit.core`` and add
*specs* (small frozen descriptions that name heavy code by a ``"package.module:Object"`` string). Nothing
named by a spec is imported until somebody uses it.

Example (``mypkg/plugin.py``, exposed as ``[project.entry-points.cnnkit] mypkg = "mypkg.plugin"``)::

    from cnnkit.core import MethodSpec, hookimpl

    @hookimpl
    def cnnkit_register_methods(registry):
        registry.add(MethodSpec(name="mydrop", kind="regularizer",
                                target="mypkg.mydrop:MyDrop", summary="My dropout."))

All four hooks are *historic*: a plugin registered after the registries were built (through
:meth:`cnnkit.core.Registries.register_plugin`) is still called with the existing registry. Each hook is
called once per plugin; an exception in one plugin is reported with the plugin's distribution name and
does not stop the others (unless ``CNNKIT_STRICT_PLUGINS=1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from cnnkit.core.registry import Registry

PROJECT_NAME = "cnnkit"
"""pluggy project name; also the entry-point group that cnnkit loads plugins from."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(historic=True)
def cnnkit_register_methods(registry: Registry[Any]) -> None:
    """Add the plugin's methods to ``registry`` (a :class:`~cnnkit.core.registry.Registry` of
    :class:`~cnnkit.core.specs.MethodSpec`).

    Call ``registry.add(MethodSpec(...))`` once per method. The spec's ``target`` names a subclass of
    :class:`cnnkit.core.Method`; it is imported by :func:`cnnkit.core.create_method` on first use. A name
    that is already registered raises :class:`~cnnkit.core.registry.DuplicateNameError` naming both
    sources, and the offending plugin is reported and skipped.

    :param registry: the method registry; its ``add`` records this plugin as the source of each spec.
    """


@hookspec(historic=True)
def cnnkit_register_models(registry: Registry[Any]) -> None:
    """Add the plugin's model factories (:class:`~cnnkit.core.specs.ModelSpec`) to ``registry``.

    A model factory is a callable taking keyword arguments ``num_classes`` and ``in_channels`` and
    returning an ``nn.Module``. A model may declare its stages for :func:`cnnkit.core.sites.find_sites`
    with an attribute ``cnnkit_stages`` (a sequence of submodule names, one per stage).

    :param registry: the model registry.
    """


@hookspec(historic=True)
def cnnkit_register_datasets(registry: Registry[Any]) -> None:
    """Add the plugin's dataset factories (:class:`~cnnkit.core.specs.DatasetSpec`) to ``registry``.

    A dataset factory is a callable taking keyword arguments ``split`` and ``root`` and returning a
    ``torch.utils.data.Dataset`` of ``(input, label)`` pairs. Factories must never download unless asked.

    :param registry: the dataset registry.
    """


@hookspec(historic=True)
def cnnkit_register_metrics(registry: Registry[Any]) -> None:
    """Add the plugin's metrics (:class:`~cnnkit.core.specs.MetricSpec`) to ``registry``.

    A metric's target is a callable; the bench documents the arguments it passes. ``higher_is_better``
    tells reports which direction is an improvement.

    :param registry: the metric registry.
    """
