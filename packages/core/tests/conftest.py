"""Shared fixtures for cnnkit-core's tests: fake installed distributions for plugin-loading tests."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnnkit.core.plugins import reset_registries

pytest_plugins = ["cnnkit.core.testing"]


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Create an installed-looking distribution (dist-info + module) on sys.path.

    ``fake_distribution(dist_name, module_name, source, entry_point=None)`` writes ``source`` as
    ``module_name.py`` and registers it in entry-point group ``cnnkit``; returns the entry-point name.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(dist_name: str, module_name: str, source: str, entry_point: str | None = None) -> str:
        ep_name = entry_point or module_name
        (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist_name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[cnnkit]\n{ep_name} = {module_name}\n")
        created.append(module_name)
        return ep_name

    reset_registries()
    yield make
    reset_registries()
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CNNKIT_DISABLE_PLUGIN_AUTOLOAD", "CNNKIT_DISABLED_PLUGINS", "CNNKIT_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
