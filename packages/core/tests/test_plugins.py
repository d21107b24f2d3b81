"""Plugin discovery: lazy, cached, isolated from broken plugins, and controllable by environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from cnnkit.core import MethodSpec, hookimpl
from cnnkit.core.plugins import (
    PluginError,
    PluginWarning,
    build_registries,
    get_registries,
    registries_built,
    reset_registries,
)

GOOD_PLUGIN = """
from cnnkit.core import MethodSpec, ModelSpec, hookimpl

@hookimpl
def cnnkit_register_methods(registry):
    registry.add(MethodSpec(name="goodmethod", kind="regularizer", target="goodimpl_never_imported:Method"))

@hookimpl
def cnnkit_register_models(registry):
    registry.add(ModelSpec(name="goodmodel", target="goodimpl_never_imported:make"))
"""

BROKEN_ON_IMPORT = "raise RuntimeError('boom at import')\n"

BROKEN_IN_HOOK = """
from cnnkit.core import MethodSpec, hookimpl

@hookimpl
def cnnkit_register_methods(registry):
    registry.add(MethodSpec(name="halfway", kind="pruner", target="x:y"))
    raise ValueError("boom in hook")
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )


def test_importing_cnnkit_core_loads_no_plugin_and_no_torch() -> None:
    code = (
        "import sys, cnnkit.core\n"
        "from cnnkit.core import plugins\n"
        "assert not plugins.registries_built(), 'registries built at import'\n"
        "loaded = [m for m in sys.modules if m.startswith('cnnkit.') and m.endswith('.plugin')]\n"
        "assert not loaded, loaded\n"
        "assert 'torch' not in sys.modules, 'torch imported by cnnkit.core'\n"
        "print('ok')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_registries_are_built_on_first_use_and_cached() -> None:
    reset_registries()
    assert not registries_built()
    first = get_registries()
    assert registries_built() and get_registries() is first
    reset_registries()
    assert get_registries() is not first


def test_first_party_plugins_are_found_through_entry_points() -> None:
    registries = build_registries()
    assert "cnnkit_core" in registries.plugins
    assert registries.plugins["cnnkit_core"].distribution == "cnnkit-core"
    assert "params" in registries.metrics
    assert registries.metrics.source("macs").startswith("cnnkit-core ")


def test_discovery_does_not_import_targets(fake_distribution: Callable[..., str]) -> None:
    fake_distribution("good-dist", "good_plugin_mod", GOOD_PLUGIN)
    registries = build_registries()
    assert "goodmethod" in registries.methods and "goodmodel" in registries.models
    assert "goodimpl_never_imported" not in sys.modules
    assert registries.methods.source("goodmethod") == "good-dist 1.0 (entry point 'good_plugin_mod')"


def test_plugin_raising_on_import_is_skipped_with_a_warning_naming_its_distribution(
    fake_distribution: Callable[..., str],
) -> None:
    fake_distribution("broken-dist", "broken_plugin_mod", BROKEN_ON_IMPORT)
    fake_distribution("good-dist", "good_plugin_mod", GOOD_PLUGIN)
    with pytest.warns(PluginWarning, match=r"broken-dist 1\.0.*boom at import"):
        registries = build_registries()
    assert "goodmethod" in registries.methods  # everything else keeps working
    assert "cnnkit_core" in registries.plugins
    assert "broken_plugin_mod" in registries.failed and "broken_plugin_mod" not in registries.plugins


def test_plugin_raising_in_a_hook_is_rolled_back_and_skipped(fake_distribution: Callable[..., str]) -> None:
    fake_distribution("hooky-dist", "hooky_plugin_mod", BROKEN_IN_HOOK)
    with pytest.warns(PluginWarning, match=r"hooky-dist.*boom in hook"):
        registries = build_registries()
    assert "halfway" not in registries.methods


def test_strict_mode_makes_a_broken_plugin_fatal(
    fake_distribution: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution("broken-dist", "broken_plugin_mod", BROKEN_ON_IMPORT)
    monkeypatch.setenv("CNNKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken-dist"):
        build_registries()


def test_disabled_plugins_by_entry_point_or_distribution_name(
    fake_distribution: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution("good-dist", "good_plugin_mod", GOOD_PLUGIN)
    fake_distribution("broken-dist", "broken_plugin_mod", BROKEN_ON_IMPORT)
    monkeypatch.setenv("CNNKIT_DISABLED_PLUGINS", "good_plugin_mod, broken-dist")
    registries = build_registries()  # no warning: the broken one is never imported
    assert "goodmethod" not in registries.methods and "broken_plugin_mod" not in registries.failed
    assert "cnnkit_core" in registries.plugins


def test_autoload_can_be_disabled_and_plugins_registered_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    registries = build_registries()
    assert not registries.plugins and len(registries.metrics) == 0

    class LocalPlugin:
        @hookimpl
        def cnnkit_register_methods(self, registry):  # type: ignore[no-untyped-def]
            registry.add(MethodSpec(name="local", kind="efficiency", target="a:b"))

    assert registries.register_plugin(LocalPlugin())
    assert "local" in registries.methods
    assert "local plugin" in registries.methods.source("local")


def test_duplicate_across_plugins_skips_the_second_and_names_both(
    fake_distribution: Callable[..., str],
) -> None:
    fake_distribution("a-dist", "a_plugin_mod", GOOD_PLUGIN)
    fake_distribution("b-dist", "b_plugin_mod", GOOD_PLUGIN)
    with pytest.warns(PluginWarning) as record:
        registries = build_registries()
    message = str(record[0].message)
    assert "a-dist 1.0" in message and "b-dist 1.0" in message and "registered twice" in message
    assert registries.methods.source("goodmethod").startswith("a-dist")
    assert "goodmodel" in registries.models and registries.models.source("goodmodel").startswith("a-dist")


def test_public_names_are_all_listed_and_resolve() -> None:
    import cnnkit.core as core

    lazy = set(core._LAZY)
    assert set(core.__all__) == lazy | {"__version__", "hookimpl"}
    for name in core.__all__:
        assert getattr(core, name) is not None
