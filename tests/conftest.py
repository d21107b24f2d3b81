"""Fixtures of the repository-level (integration) tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnnkit.core.plugins import get_registries, reset_registries
from cnnkit.core.testing import TinyModelsPlugin

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "noisy-features"


@pytest.fixture(scope="session")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built and installed into a temporary folder (not into this environment).

    Put the returned folder on a child process's ``PYTHONPATH`` to "install" it there.
    """
    target = tmp_path_factory.mktemp("site")
    command = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--python",
        sys.executable,
        "--target",
        str(target),
        str(EXAMPLE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (target / "noisy_features" / "plugin.py").is_file()
    return target


@pytest.fixture
def registries() -> Iterator[Any]:
    """Fresh registries plus the tiny test models ``tiny_resnet`` and ``tiny_vgg``."""
    reset_registries()
    registries = get_registries()
    registries.register_plugin(TinyModelsPlugin())
    yield registries
    reset_registries()
