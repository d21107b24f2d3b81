"""cnnkit-pruning registers through its entry point, and every method it registers meets the contract."""

from __future__ import annotations

import pytest

from cnnkit.core.testing import (
    check_distribution_plugin,
    check_method_contract,
    method_factory,
    registered_method_names,
)

DISTRIBUTION = "cnnkit-pruning"


def test_plugin_loads_through_its_entry_point_in_strict_mode() -> None:
    check_distribution_plugin(DISTRIBUTION, "cnnkit_pruning")


def test_version_module_is_the_distribution_version() -> None:
    from importlib import metadata

    from cnnkit.pruning.version import __version__

    assert __version__ == metadata.version(DISTRIBUTION)


@pytest.mark.parametrize("name", registered_method_names(distribution=DISTRIBUTION))
def test_method_contract(name: str) -> None:
    check_method_contract(method_factory(name))
