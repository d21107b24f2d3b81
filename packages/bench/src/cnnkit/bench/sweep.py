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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cnnkit.bench.runconfig import MethodRef, RunConfig, parse_method_ref
from cnnkit.core.config import ConfigError

__all__ = ["expand_sweep", "load_config_file"]


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


def _method_stacks(entry: Any) -> list[tuple[MethodRef, ...]]:
    if entry in (None, "baseline", "none", []):
        return [()]
    if isinstance(entry, list):
        options = [_method_stacks(item) for item in entry]
        return [tuple(ref for part in combo for ref in part) for combo in itertools.product(*options)]
    if isinstance(entry, str):
        return [(parse_method_ref(entry),)]
    if isinstance(entry, dict):
        unknown = set(entry) - {"name", "config", "grid"}
        if unknown or "name" not in entry:
            raise ConfigError(
                "sweep",
                [
                    (
                        "methods",
                        f"a method entry needs 'name' and may have 'config', 'grid'; "
                        f"got keys {sorted(entry)}",
                    )
                ],
            )
        grid: dict[str, list[Any]] = entry.get("grid", {})
        keys = sorted(grid)
        fixed = entry.get("config", {})
        return [
            (MethodRef(name=entry["name"], config={**fixed, **dict(zip(keys, values, strict=True))}),)
            for values in itertools.product(*(grid[k] for k in keys))
        ]
    raise ConfigError("sweep", [("methods", f"cannot read method entry {entry!r}")])


def expand_sweep(data: dict[str, Any]) -> Iterator[RunConfig]:
    """All run configs of a sweep file's ``base`` × ``grid``."""
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError(
            "sweep", [(k, "unknown top-level key; allowed: base, grid") for k in sorted(unknown)]
        )
    base = dict(data.get("base") or {})
    grid = dict(data.get("grid") or {})
    method_entries = grid.pop("methods", None)
    stacks = [s for entry in method_entries for s in _method_stacks(entry)] if method_entries else [None]
    keys = sorted(grid)
    for key in keys:
        if not isinstance(grid[key], list):
            raise ConfigError("sweep", [(f"grid.{key}", "grid values must be lists")])
    for values in itertools.product(*(grid[k] for k in keys)):
        for stack in stacks:
            fields = {**base, **dict(zip(keys, values, strict=True))}
            if stack is not None:
                fields["methods"] = [m.model_dump() for m in stack]
            yield make_run_config(fields)


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
        problems = [
            (".".join(str(p) for p in err["loc"]), f"{err['msg']} (got {err.get('input')!r})")
            for err in exc.errors()
        ]
        raise ConfigError("run config", problems) from None
