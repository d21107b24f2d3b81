"""``cnnkit reproduce ip``: Interspace Pruning (IP) vs standard pruning (SP) for SNIP, SynFlow and RigL.

The paper's claim (Wimmer, Mehnert, Condurache, "Interspace Pruning: Using Adaptive Filter Representations to
Improve Training of Sparse CNNs", CVPR 2022, abstract; METHODS.md §12g): IP >= SP for every pruning method
tested, most clearly at high sparsity.

What runs (18 runs, seed 0, results in the store like a sweep's, so a killed preset resumes and finished runs
are reused): LeNet-5-Caffe on Fashion-MNIST; ``snip``, ``synflow`` (100 rounds) and ``rigl`` (ERK, ΔT = 100,
α = 0.3, T_end = 75 %), each at sparsity 90 %, 95 % and 98 % of the conv and linear weights, once with
``interspace=False`` (SP) and once with ``interspace=True`` (IP: both 5×5 convs hold coefficients of a
trained per-layer DCT basis; the linear layers stay spatial in the same global pool). The runs are ordered
from the highest sparsity down, SP and IP of one setting next to each other, so that a partial run already
compares IP and SP where the paper expects the largest gap.

Recipe (METHODS.md §1.5, the SNIP/FreezeNet MNIST recipe: batch 100, SGD momentum 0.9, weight decay 5e-4,
LR 0.1 ÷10 every 25k steps, 250 epochs), shortened [choice] to ``EPOCHS`` = 4 epochs (2,160 steps per run)
with LR 0.05 ÷10 at 1/2 and 3/4 of training -- the same shortening and LR as ``reproduce freezenet-mnist``
(the dense LeNet-5-Caffe diverges at LR 0.1 with PyTorch's default init). Budget: about 20 ms per SP step and
25 ms per IP step on 2 idle CPU cores, so 18 runs take about 20 minutes there (under 40 min even at twice
that); on a loaded machine it takes correspondingly longer. The bench's ``val`` protocol is used (train on
54,000 images, keep the best per-epoch validation checkpoint, evaluate it once on the 10,000 test images); no
augmentation. The IP bases (25×25 = 625 entries per 5×5 conv, 1,250 in all) are trained without weight decay
and are not counted in the sparsity (the ``method.sparsity_with_basis`` stat counts them).

Data: ``--data-root``, else ``$CNNKIT_DATA``, else ``../shared/data`` found relative to the current folder or
to this repository (the first that holds ``FashionMNIST/raw``). When none is found the preset falls back to
the embedded ``fashion_mnist_mini`` subset and says so. ``--quick`` runs ``QUICK_STEPS`` steps per run on
the same code path (a pipeline check, not the claim). Attributes the CLI does not set let a test shrink the
preset: ``args.dataset`` pins the dataset, ``args.methods`` / ``args.sparsities`` select part of the grid.

GPU part: when CUDA is available (or ``args.cifar`` is true; the CLI does not set it) and the data root
holds ``cifar10-jpeg.tar.gz``, the same 18 settings also run with CIFAR ResNet-20 on the JPEG copy of
CIFAR-10 (OpenLTH recipe shortened to ``CIFAR_EPOCHS`` epochs, batch 128, LR 0.1, wd 1e-4, cosine), and a
second table is written.

Outputs (``--out``, default ``STORE/reproduce-ip``): ``table.md`` (method, sparsity, SP acc, IP acc, IP−SP;
runs that failed or did not finish are shown by status) and ``accuracy_vs_sparsity.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cnnkit.bench.reproduce._shared import QUICK_STEPS, data_candidates, lenet_recipe, markdown_table
from cnnkit.bench.reproduce._shared import find_data_root as _find_data_root
from cnnkit.bench.results import RunRecord
from cnnkit.bench.runconfig import RunConfig

__all__ = [
    "EPOCHS",
    "METHODS",
    "SPARSITIES",
    "SUMMARY",
    "Setting",
    "build_rows",
    "cifar_configs",
    "find_data_root",
    "main",
    "render_table",
    "run_configs",
]

SUMMARY = "Interspace vs standard pruning (SNIP, SynFlow, RigL at 90/95/98 pct), LeNet-5-Caffe, Fashion-MNIST"
PRESET = "ip"

METHODS: tuple[str, ...] = ("snip", "synflow", "rigl")
SPARSITIES: tuple[float, ...] = (0.9, 0.95, 0.98)
EPOCHS = 4
CIFAR_EPOCHS = 30
FALLBACK_DATASET = "fashion_mnist_mini"


class Setting(NamedTuple):
    """One cell of the grid: pruning method, sparsity and representation."""

    method: str
    sparsity: float
    interspace: bool


def settings(methods: Sequence[str] = METHODS, sparsities: Sequence[float] = SPARSITIES) -> list[Setting]:
    """The settings (18 by default), highest sparsity first, SP then IP of each (method, sparsity)."""
    return [
        Setting(method, sparsity, ip)
        for sparsity in sorted(sparsities, reverse=True)
        for method in methods
        for ip in (False, True)
    ]


# --------------------------------------------------------------------------------------------- data


_candidates = data_candidates  # a module attribute, so that tests can point it elsewhere


def find_data_root(explicit: str | None, marker: str = "FashionMNIST/raw") -> str | None:
    """``explicit``, else ``$CNNKIT_DATA``, else the first ``../shared/data`` (relative to the current folder
    or the repository) that holds ``marker``; ``None`` when none is found."""
    return _find_data_root(explicit, marker, _candidates())


# --------------------------------------------------------------------------------------------- configs


def _method(setting: Setting) -> dict[str, Any]:
    return {
        "name": setting.method,
        "config": {"sparsity": setting.sparsity, "interspace": setting.interspace},
    }


def run_configs(
    data_root: str | None,
    *,
    quick: bool = False,
    dataset: str = "fashion_mnist",
    epochs: int = EPOCHS,
    grid: Sequence[Setting] | None = None,
) -> dict[Setting, RunConfig]:
    """The LeNet-5-Caffe runs by setting (same recipe and seed for all)."""
    from cnnkit.bench.sweep import make_run_config

    base = lenet_recipe(data_root, dataset, epochs=epochs, quick=quick)
    return {s: make_run_config({**base, "methods": [_method(s)]}) for s in (grid or settings())}


def cifar_configs(
    data_root: str | None, *, epochs: int = CIFAR_EPOCHS, grid: Sequence[Setting] | None = None
) -> dict[Setting, RunConfig]:
    """The GPU part: CIFAR ResNet-20 on the JPEG copy of CIFAR-10 (OpenLTH recipe, shortened, cosine)."""
    from cnnkit.bench.sweep import make_run_config

    base: dict[str, Any] = {
        "model": "resnet20",
        "dataset": "cifar10_jpeg",
        "data_root": data_root,
        "seed": 0,
        "epochs": epochs,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "cosine"},
        "protocol": "val",
        "device": "cuda",
        "measure_latency": False,
        "progress": False,
        "num_workers": 8,
    }
    return {s: make_run_config({**base, "methods": [_method(s)]}) for s in (grid or settings())}


# --------------------------------------------------------------------------------------------- table

HEADER = ["method", "sparsity", "SP acc (%)", "IP acc (%)", "IP-SP (pp)"]


def _accuracy(record: RunRecord | None) -> float | None:
    if record is None or record.status != "done":
        return None
    value = record.metrics.get("test_top1")
    return None if value is None else float(value)


def _cell(record: RunRecord | None) -> str:
    top1 = _accuracy(record)
    if top1 is not None:
        return f"{top1:.2f}"
    if record is None:
        return "missing"
    reason = (record.error or "").strip().splitlines()
    return f"{record.status}: {reason[-1][:60]}" if reason else record.status


def _axes(records: dict[Setting, RunRecord | None]) -> tuple[list[str], list[float]]:
    methods = [m for m in METHODS if any(s.method == m for s in records)]
    methods += sorted({s.method for s in records} - set(methods))
    return methods, sorted({s.sparsity for s in records})


def build_rows(records: dict[Setting, RunRecord | None]) -> list[list[str]]:
    """One row per (method, sparsity) of ``records``' settings: method, sparsity, SP acc, IP acc, IP − SP."""
    rows = []
    methods, sparsities = _axes(records)
    for method in methods:
        for sparsity in sparsities:
            sp = records.get(Setting(method, sparsity, False))
            ip = records.get(Setting(method, sparsity, True))
            a, b = _accuracy(sp), _accuracy(ip)
            diff = f"{b - a:+.2f}" if a is not None and b is not None else "-"
            rows.append([method, f"{100 * sparsity:g} %", _cell(sp), _cell(ip), diff])
    return rows


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with :data:`HEADER`."""
    return markdown_table(HEADER, rows)


def _verdict(records: dict[Setting, RunRecord | None]) -> str:
    methods, sparsities = _axes(records)
    pairs = [
        (_accuracy(records.get(Setting(m, q, False))), _accuracy(records.get(Setting(m, q, True))))
        for m in methods
        for q in sparsities
    ]
    done = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not done:
        return "No (SP, IP) pair finished yet."
    wins = sum(b >= a for a, b in done)
    return f"IP >= SP in {wins} of {len(done)} finished (method, sparsity) pairs."


def _report(title: str, records: dict[Setting, RunRecord | None], cfg: RunConfig, quick: bool) -> str:
    if quick:
        recipe = f"{QUICK_STEPS} steps per run (--quick: a pipeline check, not the claim)"
    else:
        recipe = (
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, SGD momentum {cfg.optimizer.momentum}, "
            f"LR {cfg.optimizer.lr} ({cfg.schedule.name}), wd {cfg.optimizer.weight_decay}"
        )
    return (
        f"# {title}\n\n"
        f"Model {cfg.model}, dataset {cfg.dataset}; {recipe}; seed {cfg.seed}. Test top-1 of the exported "
        "(dense-conv) model at the best validation epoch.\n"
        "Paper (IP, CVPR 2022): IP >= SP for every pruning method, most clearly at high sparsity.\n"
        f"{_verdict(records)}\n\n{render_table(build_rows(records))}\n"
    )


def write_plot(records: dict[Setting, RunRecord | None], path: Path, title: str) -> Path | None:
    """Accuracy vs sparsity, one colour per method, SP dashed and IP solid; ``None`` if nothing finished."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    drawn = False
    methods, sparsities = _axes(records)
    for i, method in enumerate(methods):
        colour = f"C{i % 10}"
        for ip, style in ((False, "--"), (True, "-")):
            points = [(q, _accuracy(records.get(Setting(method, q, ip)))) for q in sparsities]
            xs = [100 * q for q, a in points if a is not None]
            ys = [a for _, a in points if a is not None]
            if xs:
                label = f"{method} {'IP' if ip else 'SP'}"
                ax.plot(xs, ys, style, marker="o", color=colour, label=label)
                drawn = True
    if not drawn:
        return None
    ax.set_xlabel("sparsity of conv + linear weights (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------------------------- entry point


def _run_part(
    configs: dict[Setting, RunConfig], store: Any, store_dir: Path
) -> tuple[dict[Setting, RunRecord | None], int]:
    from cnnkit.bench.cli import execute

    _, _, failed, skipped = execute(list(configs.values()), store, store_dir / "runs")
    return {s: store.get(cfg.key()) for s, cfg in configs.items()}, failed + skipped


def _want_cifar(args: argparse.Namespace) -> bool:
    flag = getattr(args, "cifar", None)
    if flag is not None:
        return bool(flag)
    import torch

    return bool(torch.cuda.is_available()) and not getattr(args, "quick", False)


def main(args: argparse.Namespace) -> int:
    """Run (or reuse) the runs, print the table(s) and write them and the plot(s) to ``--out``."""
    from cnnkit.bench import distributed
    from cnnkit.bench.cli import EXIT_FAILED, EXIT_OK, _store

    quick = bool(getattr(args, "quick", False))
    dataset = getattr(args, "dataset", None)
    root = None
    if dataset is None:
        root = find_data_root(getattr(args, "data_root", None))
        dataset = "fashion_mnist" if root is not None else FALLBACK_DATASET
        if root is None:
            print(
                f"{PRESET}: no Fashion-MNIST data root found (--data-root, $CNNKIT_DATA, ../shared/data): "
                f"falling back to the embedded subset {FALLBACK_DATASET!r} -- not the paper's setting",
                file=sys.stderr,
            )
    elif dataset != FALLBACK_DATASET:
        root = find_data_root(getattr(args, "data_root", None))
    grid = settings(
        getattr(args, "methods", None) or METHODS, getattr(args, "sparsities", None) or SPARSITIES
    )
    configs = run_configs(root, quick=quick, dataset=str(dataset), grid=grid)
    store_dir = Path(args.store)
    store = _store(args)  # under torchrun: rank 0 writes the store, the table and the plots
    writer = distributed.is_main()
    out = Path(args.out) if getattr(args, "out", None) else store_dir / f"reproduce-{PRESET}"
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    print(f"{PRESET}: {len(configs)} run(s), results in {store_dir}", file=sys.stderr)
    records, bad = _run_part(configs, store, store_dir)
    first = next(iter(configs.values()))
    text = _report("Interspace vs standard pruning, LeNet-5-Caffe", records, first, quick)
    plot = (
        write_plot(records, out / "accuracy_vs_sparsity.png", "IP (solid) vs SP (dashed), LeNet-5-Caffe")
        if writer
        else None
    )
    if _want_cifar(args):
        cifar_root = find_data_root(getattr(args, "data_root", None), marker="cifar10-jpeg.tar.gz")
        cifar = cifar_configs(cifar_root, grid=grid)
        print(f"{PRESET}: GPU part, {len(cifar)} CIFAR-10 ResNet-20 run(s)", file=sys.stderr)
        cifar_records, cifar_bad = _run_part(cifar, store, store_dir)
        bad += cifar_bad
        first_cifar = next(iter(cifar.values()))
        text += "\n" + _report("Interspace vs standard pruning, ResNet-20", cifar_records, first_cifar, False)
        if writer:
            write_plot(
                cifar_records, out / "accuracy_vs_sparsity_cifar10.png", "IP vs SP, ResNet-20, CIFAR-10"
            )
    if not writer:
        return EXIT_FAILED if bad else EXIT_OK
    print(text)
    (out / "table.md").write_text(text)
    written = [out / "table.md", *([plot] if plot is not None else [])]
    print(f"{PRESET}: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK
