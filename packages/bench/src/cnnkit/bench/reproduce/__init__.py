"""Reproduction presets: ``cnnkit reproduce NAME`` runs a paper's experiment, shortened to fit the machine.

Each preset is a module of this package with ``SUMMARY`` (one line) and ``main(args) -> int`` (an exit code
of :mod:`cnnkit.bench.cli`); ``args`` carries the common options ``store``, ``data_root``, ``quick`` (a smoke
version for tests: a few steps, same code path) and ``out`` (where tables and plots go). A preset trains
through :func:`cnnkit.bench.cli.execute`, so its runs land in the result store and resume like a sweep's.
Modules are imported only when their preset runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PRESETS", "load_preset"]

#: preset name -> (module, one-line summary shown by ``cnnkit reproduce --help``)
PRESETS: dict[str, tuple[str, str]] = {
    "freezenet-mnist": (
        "cnnkit.bench.reproduce.freezenet_mnist",
        "FreezeNet vs SNIP vs dense LeNet-5-Caffe on MNIST (x157 fewer trained parameters)",
    ),
    "ip": (
        "cnnkit.bench.reproduce.interspace",
        "Interspace vs standard pruning (SNIP, SynFlow, RigL at 90/95/98 pct), LeNet-5-Caffe, Fashion-MNIST",
    ),
}


def load_preset(name: str) -> ModuleType:
    """The module of preset ``name``; a clear error names the known presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return importlib.import_module(PRESETS[name][0])
