"""``cnnkit reproduce freezenet-mnist``: FreezeNet vs SNIP vs the dense LeNet-5-Caffe on MNIST.

The paper's claim (FreezeNet, Wimmer, Mehnert, Condurache, ACCV 2020, abstract; METHODS.md §11f–g): on MNIST,
LeNet-5-Caffe trained with FreezeNet reaches **99.2 % of the dense baseline's accuracy with ×157 fewer trained
(and stored) parameters**, and FreezeNet beats SNIP at the same count.

What runs (three runs, seed 0, results in the store like a sweep's, so a killed preset resumes):

* dense LeNet-5-Caffe (431,080 parameters, 430,500 of them conv/linear weights);
* ``freezenet`` with freezing rate ``q`` such that exactly ``round(430,500 / 157) = 2,742`` weights train
  (×157 fewer trained weights; METHODS.md §11f counts the maskable weights, so the 580 biases, which train
  densely, are reported separately);
* ``snip`` at the same ``q``: 2,742 weights kept, the rest pruned to 0.

Recipe (METHODS.md §1.5, the FreezeNet/SNIP MNIST recipe): batch 100, SGD momentum 0.9, LR 0.1, weight
decay 5e-4, LR ÷10 every 25k steps, 250 epochs (150k steps). Shortened [choice] to ``EPOCHS`` = 15 epochs
(8,100 steps per run; the paper's first decay comes only after 25k steps) with LR ÷10 at 1/2 and 3/4 of
training: the three runs take about 15-17 minutes of CPU time on one thread (about 20 s per epoch including
validation), inside 30 minutes on 2 idle CPU cores. LR 0.05
instead of 0.1 [choice]: with PyTorch's default layer init the dense LeNet-5-Caffe diverges (NaN loss within
20 steps) at LR 0.1, with or without a 5 % warm-up; every run uses the same LR. The bench's ``val`` protocol
is used: train on 54,000 images, keep the best of the per-epoch validation checkpoints (6,000 held-out
training images), evaluate it once on the 10,000 test images. No augmentation. The shortened schedule favours
the dense baseline (FreezeNet's few trained weights converge more slowly): a ratio below 99.2 % is expected.

Data: ``--data-root``, else ``$CNNKIT_DATA``, else ``../shared/data`` found relative to the current folder or
to this repository (the first that holds ``MNIST/raw``). The MNIST factory reads a read-only root in place and
decompresses ``.gz`` originals into the cache, never into the root. ``--quick`` runs 3 steps per run
(pipeline check). A test can swap the dataset for the embedded ``fashion_mnist_mini`` with
``args.dataset`` (an attribute the CLI does not set).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from cnnkit.bench.reproduce._shared import LR, QUICK_STEPS, data_candidates, lenet_recipe, markdown_table
from cnnkit.bench.reproduce._shared import find_data_root as _find_data_root
from cnnkit.bench.results import RunRecord
from cnnkit.bench.runconfig import RunConfig

__all__ = [
    "COMPRESSION",
    "EPOCHS",
    "LENET5_WEIGHTS",
    "PAPER_RATIO",
    "SUMMARY",
    "build_table",
    "find_data_root",
    "freezing_rate",
    "main",
    "render_table",
    "run_configs",
]

SUMMARY = "FreezeNet vs SNIP vs dense LeNet-5-Caffe on MNIST (x157 fewer trained parameters)"
PRESET = "freezenet-mnist"

LENET5_WEIGHTS = 430_500  # conv + linear weights of LeNet-5-Caffe (METHODS.md §1.6); 431,080 with biases
COMPRESSION = 157  # the paper's "×157 fewer trained parameters"
PAPER_RATIO = 99.2  # % of the dense baseline's accuracy FreezeNet keeps (paper)
EPOCHS = 15


def freezing_rate(weights: int = LENET5_WEIGHTS, factor: int = COMPRESSION) -> float:
    """The float ``q`` for which the pruners keep exactly ``round(weights / factor)`` of ``weights``.

    The pruners keep ``⌈(1 − q)·N⌉`` computed in decimal on ``q``'s shortest repr
    (``cnnkit.pruning._base.keep_count``), so ``1 − k/N`` is nudged by a few ulps until that gives ``k``.
    """
    k = round(weights / factor)
    q = 1.0 - k / weights
    for candidate in (q, math.nextafter(q, 0.0), math.nextafter(q, 1.0), round(q, 12), round(q, 15)):
        if math.ceil(Decimal(weights) * (Decimal(1) - Decimal(repr(candidate)))) == k:
            return candidate
    raise ValueError(f"no float freezing rate keeps exactly {k} of {weights}")  # pragma: no cover


_candidates = data_candidates  # a module attribute, so that tests can point it elsewhere


def find_data_root(explicit: str | None) -> str | None:
    """``explicit``, else ``$CNNKIT_DATA``, else the first ``../shared/data`` (relative to the current folder
    or the repository) that holds ``MNIST/raw``; ``None`` when none is found (the dataset then explains)."""
    return _find_data_root(explicit, "MNIST/raw", _candidates())


def run_configs(
    data_root: str | None, *, quick: bool = False, dataset: str = "mnist", epochs: int = EPOCHS
) -> dict[str, RunConfig]:
    """The three runs by label: ``dense``, ``freezenet``, ``snip`` (same recipe, same seed)."""
    from cnnkit.bench.sweep import make_run_config

    q = freezing_rate()
    base = lenet_recipe(data_root, dataset, epochs=epochs, quick=quick)
    methods: dict[str, list[dict[str, Any]]] = {
        "dense": [],
        "freezenet": [{"name": "freezenet", "config": {"sparsity": q}}],
        "snip": [{"name": "snip", "config": {"sparsity": q}}],
    }
    return {label: make_run_config({**base, "methods": stack}) for label, stack in methods.items()}


# --------------------------------------------------------------------------------------------- table


HEADER = [
    "method",
    "trained weights",
    "trained params",
    "x fewer trained weights",
    "x fewer stored params",
    "test top-1 (%)",
    "ratio to dense (%)",
    "paper",
]

_PAPER = {
    "dense": "baseline",
    "freezenet": f"{PAPER_RATIO} % of baseline at x{COMPRESSION}",
    "snip": "below FreezeNet at the same count",
}


def _row(label: str, record: RunRecord | None, dense_top1: float | None) -> list[str]:
    if record is None or record.status != "done":
        status = "missing" if record is None else record.status
        return [label, "-", "-", "-", "-", status, "-", _PAPER[label]]
    m = record.metrics
    total = float(m["params_total"])
    if label == "dense":
        weights, trained, stored = float(LENET5_WEIGHTS), float(m["params_trainable"]), total
    else:
        weights, trained = float(m["method.kept"]), float(m["method.trained_params"])
        stored = float(m["method.stored_params"])
    maskable = float(m.get("method.maskable", LENET5_WEIGHTS))
    top1 = float(m["test_top1"])
    ratio = "-" if not dense_top1 else f"{100.0 * top1 / dense_top1:.2f}"
    return [
        label,
        f"{weights:,.0f}",
        f"{trained:,.0f}",
        f"{maskable / weights:.1f}",
        f"{total / stored:.1f}",
        f"{top1:.2f}",
        ratio,
        _PAPER[label],
    ]


def build_table(records: Mapping[str, RunRecord | None]) -> list[list[str]]:
    """One row per run label (``dense``, ``freezenet``, ``snip``) from their store records."""
    dense = records.get("dense")
    dense_top1 = float(dense.metrics["test_top1"]) if dense is not None and dense.status == "done" else None
    return [_row(label, records.get(label), dense_top1) for label in ("dense", "freezenet", "snip")]


def render_table(rows: list[list[str]]) -> str:
    """A Markdown table with :data:`HEADER`."""
    return markdown_table(HEADER, rows)


def _report(rows: list[list[str]], configs: dict[str, RunConfig], quick: bool) -> str:
    cfg = configs["freezenet"]
    schedule = (
        f"{QUICK_STEPS} steps per run (--quick: a pipeline check, not the claim)"
        if quick
        else f"{cfg.epochs} epochs, batch 100, SGD momentum 0.9, LR {LR} /10 at 1/2 and 3/4 of training, "
        "wd 5e-4"
    )
    return (
        f"# FreezeNet on MNIST, LeNet-5-Caffe ({cfg.dataset})\n\n"
        f"Freezing rate q = {freezing_rate():.6f} ({round(LENET5_WEIGHTS / COMPRESSION):,} of "
        f"{LENET5_WEIGHTS:,} weights trained); {schedule}; seed {cfg.seed}.\n"
        f"Paper (FreezeNet, ACCV 2020): FreezeNet reaches {PAPER_RATIO} % of the baseline's accuracy with "
        f"x{COMPRESSION} fewer trained parameters.\n\n{render_table(rows)}\n"
    )


# --------------------------------------------------------------------------------------------- entry point


def main(args: argparse.Namespace) -> int:
    """Run (or reuse) the three runs, print the table and write it to ``--out`` (``table.md``)."""
    from cnnkit.bench import distributed
    from cnnkit.bench.cli import EXIT_FAILED, EXIT_OK, _store, execute

    quick = bool(getattr(args, "quick", False))
    dataset = str(getattr(args, "dataset", None) or "mnist")
    root = find_data_root(getattr(args, "data_root", None)) if dataset != "fashion_mnist_mini" else None
    configs = run_configs(root, quick=quick, dataset=dataset)
    store_dir = Path(args.store)
    store = _store(args)  # under torchrun: rank 0 writes, the other ranks only train
    print(f"{PRESET}: {len(configs)} run(s), results in {store_dir}", file=sys.stderr)
    _, _, failed, skipped = execute(list(configs.values()), store, store_dir / "runs")
    if not distributed.is_main():
        return EXIT_FAILED if failed else EXIT_OK
    records = {label: store.get(cfg.key()) for label, cfg in configs.items()}
    text = _report(build_table(records), configs, quick)
    print(text)
    out = Path(args.out) if getattr(args, "out", None) else store_dir / f"reproduce-{PRESET}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print(f"table: {out / 'table.md'}", file=sys.stderr)
    return EXIT_FAILED if failed or skipped else EXIT_OK
