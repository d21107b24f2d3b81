"""Repository-level rules of the monorepo (DESIGN.md §1)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "regularizers", "pruning", "efficiency", "bench"]


def pyproject(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def test_no_namespace_init_anywhere() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.glob("packages/*/src/cnnkit/__init__.py")]
    assert offenders == [], f"PEP 420 namespace broken by {offenders}"
    assert sorted(p.name for p in (ROOT / "packages").iterdir() if p.is_dir()) == sorted(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_layout_and_metadata(package: str) -> None:
    base = ROOT / "packages" / package
    for name in (
        "README.md",
        "CHANGELOG.md",
        f"src/cnnkit/{package}/version.py",
        f"src/cnnkit/{package}/plugin.py",
    ):
        assert (base / name).is_file(), f"packages/{package}/{name} is missing"
    meta = pyproject(package)
    assert meta["project"]["name"] == f"cnnkit-{package}"
    assert meta["build-system"]["build-backend"] == "hatchling.build"
    assert meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["hatch"]["version"]["path"] == f"src/cnnkit/{package}/version.py"
    assert meta["project"]["entry-points"]["cnnkit"] == {f"cnnkit_{package}": f"cnnkit.{package}.plugin"}


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "core"])
def test_method_packages_depend_on_a_range_of_core(package: str) -> None:
    deps = pyproject(package)["project"]["dependencies"]
    core = [d for d in deps if d.startswith("cnnkit-core")]
    assert len(core) == 1 and re.fullmatch(r"cnnkit-core>=\d+\.\d+,<\d+\.\d+", core[0].replace(" ", "")), core


@pytest.mark.parametrize("package", PACKAGES)
def test_installed_version_is_the_single_source(package: str) -> None:
    text = (ROOT / "packages" / package / "src" / "cnnkit" / package / "version.py").read_text()
    declared = re.search(r'__version__ = "([^"]+)"', text)
    assert declared and metadata.version(f"cnnkit-{package}") == declared.group(1)


def test_every_first_party_entry_point_is_installed() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="cnnkit")}
    for package in PACKAGES:
        assert eps.get(f"cnnkit_{package}") == f"cnnkit.{package}.plugin"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    assert command in ci, f".ci/run does not call the README test command: {command}"
