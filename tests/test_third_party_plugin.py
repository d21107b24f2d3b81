"""A third-party plugin (examples/noisy-features) is found through its entry point only.

The example is built and installed into a temporary directory (no change to this environment); a child
Python with that directory on its path must discover it via ``get_registries()``, create it with
``create_method`` and pass the contract checks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "noisy-features"


def child(code: str, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "CNNKIT_STRICT_PLUGINS": "1"}
    return subprocess.run(
        [sys.executable, *args, "-c", code] if code else [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_example_is_not_installed_in_this_environment() -> None:
    assert importlib.util.find_spec("noisy_features") is None


def test_discovered_lazily_through_the_entry_point(installed_example: Path) -> None:
    code = (
        "import sys\n"
        "from cnnkit.core import get_registries, create_method\n"
        "assert 'noisy_features' not in sys.modules\n"
        "registries = get_registries()\n"
        "spec = registries.methods.get('feature_noise')\n"
        "print(registries.methods.source('feature_noise'))\n"
        "assert 'noisy_features.method' not in sys.modules, 'discovery imported the implementation'\n"
        "method = create_method('feature_noise', sigma=0.3)\n"
        "assert type(method).__module__ == 'noisy_features.method' and method.config.sigma == 0.3\n"
        "print(spec.kind)\n"
    )
    result = child(code, installed_example)
    assert result.returncode == 0, result.stderr
    source, kind = result.stdout.split("\n")[:2]
    assert source == "noisy-features 0.1.0 (entry point 'noisy_features')"
    assert kind == "regularizer"


def test_bad_config_of_the_plugin_names_the_field(installed_example: Path) -> None:
    code = (
        "from cnnkit.core import create_method, ConfigError\n"
        "try:\n    create_method('feature_noise', sigma=-1)\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    result = child(code, installed_example)
    assert result.returncode == 0, result.stderr
    assert "sigma" in result.stdout and "0.0 <= sigma <= 10.0" in result.stdout


def test_example_passes_the_contract_checks(installed_example: Path) -> None:
    result = child(
        "",
        installed_example,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "cnnkit.core.testing",
        str(EXAMPLE / "tests"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
