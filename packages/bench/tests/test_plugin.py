"""cnnkit-bench registers through its entry point, and every method it registers meets the contract."""

from __future__ import annotations

from importlib import metadata

import pytest

from cnnkit.core import create_method
from cnnkit.core.plugins import build_registries
from cnnkit.core.testing import check_method_contract, method_factory, registered_method_names

DISTRIBUTION = "cnnkit-bench"


def test_plugin_loads_through_its_entry_point_in_strict_mode() -> None:
    registries = build_registries(strict=True)
    info = registries.plugins["cnnkit_bench"]
    assert info.distribution == DISTRIBUTION
    assert info.version == metadata.version(DISTRIBUTION)
    assert not registries.failed


def test_version_module_is_the_distribution_version() -> None:
    from cnnkit.bench.version import __version__

    assert __version__ == metadata.version(DISTRIBUTION)


@pytest.mark.parametrize("name", registered_method_names(distribution=DISTRIBUTION))
def test_method_contract(name: str) -> None:
    assert create_method(name).name == name
    check_method_contract(method_factory(name))
