"""Sweeps: expand a grid file into run configs and run them against the results store.

A sweep file (YAML or TOML) has a ``base`` (any :class:`RunConfig` fields) and a ``grid``::

    base: {epochs: 2, dataset: fashion_mnist_mini}
    grid:
      model: [lenet5_caffe]
      seed: [0, 1, 2]
      methods:
        - baseline                                   # no method
        - "swd:p=0.1,variant=1d"                     # one method, fixed config
        - {name: sfd, config: {variant: 2d}, grid: {p: [0.05, 0.1]}}   # method parameters as a grid
        - ["wc", "swd:p=0.1"]                        # a stack of methods

Every combination of the grid's lists is one run. Runs already ``done`` in the store are skipped.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cnnkit.bench.runconfig import MethodRef, RunConfig, parse_method_ref
from cnnkit.core.config import ConfigError

__all__ = ["check_runs", "expand_sweep", "load_config_file", "make_run_config"]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (safe loader) or TOML file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [("<file>", f"cannot parse: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("<file>", "expected a mapping at the top level")])
    return data


def _method_stacks(entry: Any, where: str) -> list[tuple[MethodRef, ...]]:
    if entry in (None, "baseline", "none", []):
        return [()]
    if isinstance(entry, list):
        options = [_method_stacks(item, f"{where}[{i}]") for i, item in enumerate(entry)]
        return [tuple(ref for part in combo for ref in part) for combo in itertools.product(*options)]
    if isinstance(entry, str):
        return [(parse_method_ref(entry),)]
    if isinstance(entry, dict):
        return _method_grid(entry, where)
    raise ConfigError("sweep", [(where, f"cannot read method entry {entry!r}")])


def _method_grid(entry: dict[str, Any], where: str) -> list[tuple[MethodRef, ...]]:
    """``{name, config, grid}``: one method, one run per combination of its ``grid`` lists."""
    unknown = set(entry) - {"name", "config", "grid"}
    if unknown or "name" not in entry:
        raise ConfigError(
            "sweep",
            [(where, f"a method entry needs 'name' and may have 'config', 'grid'; got keys {sorted(entry)}")],
        )
    fixed = _mapping(entry.get("config"), f"{where}.config")
    grid = _grid(entry.get("grid"), f"{where}.grid")
    keys = sorted(grid)
    return [
        (_method_ref(entry["name"], {**fixed, **dict(zip(keys, values, strict=True))}, where),)
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def _method_ref(name: Any, config: dict[str, Any], where: str) -> MethodRef:
    try:
        return MethodRef(name=name, config=config)
    except ValidationError as exc:
        raise ConfigError("sweep", _problems(exc, prefix=f"{where}.")) from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a dict (``None`` is empty); anything else is a :class:`ConfigError` naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("sweep", [(where, f"must be a mapping of field: value (got {value!r})")])
    return dict(value)


def _grid(value: Any, where: str) -> dict[str, list[Any]]:
    """A grid: a mapping whose values are lists of the values to try."""
    grid = _mapping(value, where)
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(
                "sweep",
                [(f"{where}.{key}", f"grid values must be lists, e.g. [{values!r}] (got {values!r})")],
            )
    return grid


def expand_sweep(data: dict[str, Any]) -> Iterator[RunConfig]:
    """All distinct run configs of a sweep file's ``base`` × ``grid`` (a run whose key repeats an earlier
    one is left out: it would train and count the same run twice)."""
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError(
            "sweep", [(k, "unknown top-level key; allowed: base, grid") for k in sorted(unknown)]
        )
    base = _mapping(data.get("base"), "base")
    grid = _grid(data.get("grid"), "grid")
    method_entries = grid.pop("methods", None)
    stacks: list[tuple[MethodRef, ...] | None] = [
        s for i, e in enumerate(method_entries or []) for s in _method_stacks(e, f"grid.methods[{i}]")
    ]
    keys = sorted(grid)
    seen: set[str] = set()
    for values in itertools.product(*(grid[k] for k in keys)):
        for stack in stacks or [None]:
            fields = {**base, **dict(zip(keys, values, strict=True))}
            if stack is not None:
                fields["methods"] = [m.model_dump() for m in stack]
            cfg = make_run_config(fields)
            if cfg.key() not in seen:
                seen.add(cfg.key())
                yield cfg


def make_run_config(fields: dict[str, Any]) -> RunConfig:
    """``RunConfig(**fields)`` with errors naming the field and what it allows."""
    if isinstance(fields.get("methods"), list):
        fields = {
            **fields,
            "methods": [parse_method_ref(m) if isinstance(m, str) else m for m in fields["methods"]],
        }
    try:
        return RunConfig(**fields)
    except ValidationError as exc:
        raise ConfigError("run config", _problems(exc)) from None


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """``(field, message)`` pairs of a pydantic error, fields prefixed with ``prefix``."""
    return [
        (prefix + ".".join(str(p) for p in err["loc"]), f"{err['msg']} (got {err.get('input')!r})")
        for err in exc.errors()
    ]


def check_runs(configs: Iterable[RunConfig]) -> None:
    """Check every run's model, dataset and method names and method configs before any run trains.

    Raises:
        UnknownNameError: a name is not installed (with close matches).
        ConfigError: a method's config value is invalid, naming the field and what it allows.
    """
    from cnnkit.core.method import create_method
    from cnnkit.core.plugins import get_registries

    registries = get_registries()
    for cfg in configs:
        registries.models.get(cfg.model)
        registries.datasets.get(cfg.dataset)
        for ref in cfg.methods:
            create_method(ref.name, **ref.config)
