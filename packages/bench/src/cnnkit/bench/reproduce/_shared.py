"""What the reproduction presets share: finding ../shared/data, the LeNet-5-Caffe recipe, Markdown tables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LR",
    "MILESTONES",
    "QUICK_STEPS",
    "data_candidates",
    "find_data_root",
    "lenet_recipe",
    "markdown_table",
]

LR = 0.05  # LeNet-5-Caffe diverges at the papers' 0.1 with PyTorch's default init
MILESTONES = (0.5, 0.75)  # LR ÷10 at half and three quarters of training
QUICK_STEPS = 3  # steps per epoch of a --quick run (one epoch: a pipeline check, not the claim)


def data_candidates() -> list[Path]:
    """``shared/data`` next to or inside the current folder and the repository checkout, in that order."""
    here = Path(__file__).resolve()
    repo_roots = [p for p in here.parents if (p / "pyproject.toml").is_file() and (p / "packages").is_dir()]
    bases = [Path.cwd(), *repo_roots]
    return [base.parent / "shared" / "data" for base in bases] + [base / "shared" / "data" for base in bases]


def find_data_root(explicit: str | None, marker: str, candidates: Iterable[Path]) -> str | None:
    """``explicit``, else ``$CNNKIT_DATA``, else the first candidate that holds ``marker``; else ``None``."""
    if explicit:
        return explicit
    env = os.environ.get("CNNKIT_DATA")
    if env:
        return env
    for candidate in candidates:
        if (candidate / marker).exists():
            return str(candidate)
    return None


def lenet_recipe(data_root: str | None, dataset: str, *, epochs: int, quick: bool) -> dict[str, Any]:
    """Run fields of the presets' LeNet-5-Caffe recipe (SGD, momentum 0.9, weight decay 5e-4, batch 100,
    ``LR`` ÷10 at ``MILESTONES``, validation protocol); ``quick`` runs one epoch of ``QUICK_STEPS`` steps."""
    return {
        "model": "lenet5_caffe",
        "dataset": dataset,
        "data_root": data_root,
        "seed": 0,
        "epochs": 1 if quick else epochs,
        "batch_size": 100,
        "max_steps_per_epoch": QUICK_STEPS if quick else None,
        "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": list(MILESTONES), "gamma": 0.1},
        "protocol": "val",
        "measure_latency": False,
        "progress": False,
    }


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
