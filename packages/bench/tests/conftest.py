"""Bench test fixtures: a tiny model registered for the tests, and small run configs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cnnkit.core.plugins import get_registries, reset_registries
from cnnkit.core.testing import TinyModelsPlugin

pytest_plugins = ["cnnkit.core.testing"]


@pytest.fixture
def registries() -> Iterator[Any]:
    """Fresh registries with the test-only model ``tiny_resnet`` added."""
    reset_registries()
    registries = get_registries()
    registries.register_plugin(TinyModelsPlugin())
    yield registries
    reset_registries()


@pytest.fixture
def tiny_run() -> dict[str, Any]:
    """Fields of a run that trains in about a second on CPU."""
    return {
        "model": "tiny_resnet",
        "dataset": "synthetic",
        "dataset_args": {"shape": [3, 16, 16], "size": 192},
        "epochs": 2,
        "batch_size": 32,
        "optimizer": {"lr": 0.05},
        "progress": False,
        "measure_latency": False,
    }
