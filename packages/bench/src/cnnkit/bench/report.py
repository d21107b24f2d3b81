"""Reports: finished runs aggregated over seeds into Markdown, CSV and JSON tables and matplotlib plots.

Aggregation rules (:func:`aggregate`):

* Records are grouped by ``(model, dataset, method label)``, the label being
  :meth:`RunConfig.method_label` (``"baseline"`` when no method is applied). Each group gives one row.
* Only ``done`` records enter the statistics. ``seeds`` is their number; each metric in :data:`METRICS`
  gets its mean and its *sample* standard deviation (``statistics.stdev``; ``0.0`` for a single seed) as
  ``<metric>`` and ``<metric>_std``, over the records that report a finite value of it (``None`` when none
  does). ``gpu_latency_ms_b1`` is a column only when some finished run measured it (CUDA).
* ``failed`` and ``skipped`` count the group's records with those statuses; ``running`` records are left
  out. A group with no finished run is still a row (``seeds == 0``, ``None`` values) whose ``note`` holds
  the reason of its first failed or skipped record, so a method that cannot apply to a model is visible.
* Every ``(model, dataset)`` that has a row also has a ``baseline`` row; when no baseline run finished it
  is a placeholder with ``seeds == 0`` and the note "no baseline run finished".
* Deltas to the baseline of the same ``(model, dataset)``: ``delta_top1`` = mean ``test_top1`` minus the
  baseline's (percentage points), ``delta_effective_macs_pct`` and ``delta_latency_pct`` (CPU, batch 1)
  = relative change in %. ``None`` where either side is missing (or the baseline value is 0).
* Runs whose configs differ in more than the seed (e.g. a learning-rate sweep) share a label and are
  averaged together; their note says which settings differ.
* Rows are sorted by model and dataset, the baseline first in each group, then methods alphabetically.

:func:`render` formats rows as ``"md"``, ``"csv"`` or ``"json"``; :func:`write_report` writes the three
tables and the plots (accuracy vs sparsity, accuracy vs effective MACs, latency) into a folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cnnkit.bench.results import RunRecord
from cnnkit.bench.runconfig import MethodRef, RunConfig

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "METRICS", "PLOTS", "aggregate", "render", "write_report"]

BASELINE = "baseline"
FORMATS = ("md", "csv", "json")
PLOTS = ("accuracy_vs_sparsity.png", "accuracy_vs_flops.png", "latency.png")

#: Metrics averaged over seeds (``gpu_latency_ms_b1`` only when some run measured it).
METRICS = (
    "test_top1",
    "test_top5",
    "val_top1",
    "params_total",
    "params_nonzero",
    "sparsity",
    "macs",
    "effective_macs",
    "cpu_latency_ms_b1",
    "cpu_latency_ms_b64",
    "gpu_latency_ms_b1",
    "train_samples_per_s",
    "peak_memory_mb",
    "wall_time_s",
)
_OPTIONAL_METRICS = frozenset({"gpu_latency_ms_b1"})
_DELTAS = ("delta_top1", "delta_effective_macs_pct", "delta_latency_pct")
_TAIL = ("failed", "skipped", "note")
_NOT_SETTINGS = frozenset({"seed", "data_root", "download", "progress", "num_workers", "checkpoint_dir"})
_NOTE_CHARS = 200
_DPI = 120

GroupKey = tuple[str, str, str]


# -- aggregation -----------------------------------------------------------------------------------------
def _label(config: dict[str, Any]) -> tuple[str, str, str]:
    """``(model, dataset, method label)`` of a stored config; tolerant of configs from older versions."""
    try:
        cfg = RunConfig.model_validate(config)
        return cfg.model, cfg.dataset, cfg.method_label()
    except ValidationError:
        defaults = RunConfig()
        methods = []
        for item in config.get("methods") or ():
            try:
                methods.append(MethodRef.model_validate(item).label())
            except ValidationError:
                methods.append(str(item.get("name", item)) if isinstance(item, dict) else str(item))
        model = str(config.get("model", defaults.model))
        return model, str(config.get("dataset", defaults.dataset)), "+".join(methods) or BASELINE


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _reason(error: str) -> str:
    """One line of an error: the last line of a traceback, else the message with its lines joined."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason recorded"
    text = lines[-1] if lines[0].startswith("Traceback") else " ".join(lines)
    return text if len(text) <= _NOTE_CHARS else text[: _NOTE_CHARS - 1] + "…"


def _mixed_settings(members: list[RunRecord]) -> list[str]:
    """Top-level config fields (other than the seed and run-local fields) that differ inside a group."""
    names = sorted({name for m in members for name in m.config} - _NOT_SETTINGS)
    return [n for n in names if len({json.dumps(m.config.get(n), sort_keys=True) for m in members}) > 1]


def _relative_pct(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0.0:
        return None
    return (value - base) / abs(base) * 100.0


def aggregate(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """Rows of the report, one per ``(model, dataset, method label)``; see the module docstring.

    Each row has ``model``, ``dataset``, ``method``, ``seeds``, ``<metric>`` and ``<metric>_std`` for each
    metric in :data:`METRICS`, ``delta_top1``, ``delta_effective_macs_pct``, ``delta_latency_pct``,
    ``failed``, ``skipped`` and ``note`` (``""`` when there is nothing to say), in that order.
    """
    done: dict[GroupKey, list[RunRecord]] = defaultdict(list)
    other: dict[GroupKey, list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.status == "done":
            done[_label(record.config)].append(record)
        elif record.status in ("failed", "skipped"):
            other[_label(record.config)].append(record)
    metrics = [
        m
        for m in METRICS
        if m not in _OPTIONAL_METRICS
        or any(_number(r.metrics.get(m)) is not None for g in done.values() for r in g)
    ]
    keys = set(done) | set(other)
    keys |= {(model, dataset, BASELINE) for model, dataset, _ in keys}

    rows: list[dict[str, Any]] = []
    for key in sorted(keys, key=lambda k: (k[0], k[1], k[2] != BASELINE, k[2])):
        model, dataset, method = key
        members, others = done.get(key, []), other.get(key, [])
        row: dict[str, Any] = {"model": model, "dataset": dataset, "method": method, "seeds": len(members)}
        for metric in metrics:
            values = [v for v in (_number(m.metrics.get(metric)) for m in members) if v is not None]
            row[metric], row[f"{metric}_std"] = _mean_std(values)
        row.update(dict.fromkeys(_DELTAS))
        failed = sum(r.status == "failed" for r in others)
        skipped = len(others) - failed
        notes = []
        if not members:
            if method == BASELINE:
                notes.append("no baseline run finished")
            if others:
                notes.append(f"{others[0].status}: {_reason(others[0].error)}")
        else:
            if others:
                counts = ", ".join(f"{n} {s}" for n, s in ((failed, "failed"), (skipped, "skipped")) if n)
                notes.append(f"also {counts} ({others[0].status}: {_reason(others[0].error)})")
            mixed = _mixed_settings(members)
            if mixed:
                notes.append("runs differ in " + ", ".join(mixed))
        row.update(failed=failed, skipped=skipped, note="; ".join(notes))
        rows.append(row)

    baselines = {(r["model"], r["dataset"]): r for r in rows if r["method"] == BASELINE}
    for row in rows:
        base = baselines[row["model"], row["dataset"]]
        if row["test_top1"] is not None and base["test_top1"] is not None:
            row["delta_top1"] = row["test_top1"] - base["test_top1"]
        row["delta_effective_macs_pct"] = _relative_pct(row["effective_macs"], base["effective_macs"])
        row["delta_latency_pct"] = _relative_pct(row["cpu_latency_ms_b1"], base["cpu_latency_ms_b1"])
    return rows


# -- tables ----------------------------------------------------------------------------------------------
def _default_fields() -> list[str]:
    metrics = [m for m in METRICS if m not in _OPTIONAL_METRICS]
    return [
        "model",
        "dataset",
        "method",
        "seeds",
        *(f for m in metrics for f in (m, f"{m}_std")),
        *_DELTAS,
        *_TAIL,
    ]


def _clean(value: Any) -> Any:
    """JSON-safe value: non-finite floats become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _short(value: float) -> str:
    """A number with about three significant digits, never in scientific notation."""
    size = abs(value)
    if size >= 100 or value == 0:
        return f"{value:.0f}" if size >= 100 else "0"
    return f"{value:.2f}" if size >= 1 else f"{value:.3f}"


def _md_cells(row: dict[str, Any]) -> list[str]:
    dash = "–"
    top1, top1_std = row.get("test_top1"), row.get("test_top1_std")
    delta = row.get("delta_top1")
    sparsity = row.get("sparsity")
    macs = row.get("effective_macs")
    b1, b64 = row.get("cpu_latency_ms_b1"), row.get("cpu_latency_ms_b64")
    note = str(row.get("note") or "").replace("|", "\\|").replace("\n", " ")
    return [
        str(row["model"]),
        str(row["dataset"]),
        str(row["method"]),
        str(row["seeds"]),
        f"{top1:.2f} ± {top1_std or 0.0:.2f}" if top1 is not None else dash,
        f"{delta:+.2f}" if delta is not None else dash,
        f"{sparsity * 100:.1f}" if sparsity is not None else dash,
        _short(macs / 1e6) if macs is not None else dash,
        _short(b1) if b1 is not None else dash,
        _short(b64) if b64 is not None else dash,
        note,
    ]


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "model",
        "dataset",
        "method",
        "seeds",
        "top-1 %",
        "Δ top-1",
        "sparsity %",
        "eff. MMACs",
        "CPU ms b1",
        "CPU ms b64",
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cells(row)) + " |" for row in rows]
    if not any(row.get("seeds") for row in rows):
        lines.append("\nNo finished runs.")
    else:
        lines.append(
            "\ntop-1: mean ± sample std over seeds; Δ top-1: points vs the baseline of the same "
            "model and dataset; latency: median CPU time per batch of 1 / 64."
        )
    return "\n".join(lines)


def render(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """``rows`` from :func:`aggregate` as ``fmt``: ``"md"`` (a readable table), ``"csv"`` (every column,
    with a header row; empty cells for missing values) or ``"json"`` (a list of objects, ``null`` for
    missing values)."""
    if fmt == "md":
        return _markdown(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=list(rows[0]) if rows else _default_fields(), lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows({k: _clean(v) for k, v in row.items()} for row in rows)
        return buffer.getvalue()
    if fmt == "json":
        return json.dumps([{k: _clean(v) for k, v in row.items()} for row in rows], indent=2, allow_nan=False)
    raise ValueError(f"format must be one of {', '.join(repr(f) for f in FORMATS)}, got {fmt!r}")


# -- plots -----------------------------------------------------------------------------------------------
def _name(row: dict[str, Any]) -> str:
    return f"{row['model']}/{row['dataset']}/{row['method']}"


def _figure(width: float, height: float) -> Figure:
    """A figure drawn by the Agg canvas directly: no pyplot, no display, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    return path


def _accuracy_plot(
    rows: list[dict[str, Any]],
    x_of: Callable[[dict[str, Any]], float | None],
    path: Path,
    *,
    title: str,
    xlabel: str,
    log_if_wide: bool,
) -> Path | None:
    points: list[tuple[dict[str, Any], float]] = []
    for row in rows:
        x = x_of(row)
        if row["seeds"] and row["test_top1"] is not None and x is not None:
            points.append((row, x))
    if not points:
        return None
    from matplotlib import colormaps

    figure = _figure(7.5, 5.0)
    ax: Axes = figure.add_subplot()
    methods = sorted({row["method"] for row, _ in points}, key=lambda m: (m != BASELINE, m))
    colours = colormaps["tab10"]
    markers = "osD^v<>pP*Xh"
    for i, method in enumerate(methods):
        mine = [(row, x) for row, x in points if row["method"] == method]
        ax.errorbar(
            [x for _, x in mine],
            [row["test_top1"] for row, _ in mine],
            yerr=[row["test_top1_std"] or 0.0 for row, _ in mine],
            fmt=markers[i % len(markers)],
            color=colours(i % 10),
            capsize=3,
            label=method,
        )
        for row, x in mine:
            ax.annotate(
                _name(row), (x, row["test_top1"]), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    xs = [x for _, x in points]
    if log_if_wide and min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 accuracy (%), mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(title="method", fontsize=8)
    return _save(figure, path)


def _latency_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    shown = [row for row in rows if row["seeds"] and row["cpu_latency_ms_b1"] is not None]
    if not shown:
        return None
    series = [("cpu_latency_ms_b1", "CPU, batch 1"), ("cpu_latency_ms_b64", "CPU, batch 64")]
    if any(row.get("gpu_latency_ms_b1") is not None for row in shown):
        series.append(("gpu_latency_ms_b1", "GPU, batch 1"))
    figure = _figure(8.0, 1.5 + 0.45 * len(shown) * len(series))
    ax: Axes = figure.add_subplot()
    height = 0.8 / len(series)
    positions = range(len(shown))
    values: list[float] = []
    for i, (column, label) in enumerate(series):
        means = [row.get(column) for row in shown]
        ax.barh(
            [p + (i - (len(series) - 1) / 2) * height for p in positions],
            [m if m is not None else math.nan for m in means],
            height=height,
            xerr=[row.get(f"{column}_std") or 0.0 for row in shown],
            capsize=2,
            label=label,
        )
        values += [m for m in means if m is not None and m > 0]
    if values and max(values) / min(values) > 10:
        ax.set_xscale("log")
    ax.set_yticks(list(positions), [_name(row) for row in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_title("Inference latency per method (median, mean ± std over seeds)")
    ax.set_xlabel("latency per batch (ms)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


def _plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    sparsity, flops, latency = (out_dir / name for name in PLOTS)
    written = [
        _accuracy_plot(
            rows,
            lambda r: r["sparsity"] * 100 if r["sparsity"] is not None else None,
            sparsity,
            title="Accuracy vs sparsity",
            xlabel="sparsity (% of weights that are zero)",
            log_if_wide=False,
        ),
        _accuracy_plot(
            rows,
            lambda r: r["effective_macs"] / 1e6 if r["effective_macs"] is not None else None,
            flops,
            title="Accuracy vs effective compute",
            xlabel="effective MMACs per image (1 MAC = 2 FLOPs)",
            log_if_wide=True,
        ),
        _latency_plot(rows, latency),
    ]
    return [path for path in written if path is not None]


def write_report(records: Iterable[RunRecord], out_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``report.csv``, ``report.json`` and the plots in :data:`PLOTS` to ``out_dir``.

    A plot with nothing to show (no finished run with the values it needs) is not written, and a file of
    that name left by an earlier report is removed so the folder never mixes old and new results. Returns
    the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(records)
    written = []
    for fmt in FORMATS:
        path = out / f"report.{fmt}"
        text = render(rows, fmt)
        if fmt == "md":
            text = "# cnnkit report\n\n" + text
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        written.append(path)
    plots = _plots(rows, out)
    for name in PLOTS:
        if out / name not in plots:
            (out / name).unlink(missing_ok=True)
    return written + plots
