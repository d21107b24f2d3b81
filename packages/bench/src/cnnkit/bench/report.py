"""Reports: aggregate finished runs over seeds into Markdown, CSV or JSON tables."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import defaultdict
from typing import Any

from cnnkit.bench.results import RunRecord
from cnnkit.bench.runconfig import RunConfig

__all__ = ["COLUMNS", "aggregate", "render"]

COLUMNS = ("test_top1", "test_top5", "params_nonzero", "effective_macs", "latency_ms", "wall_time_s")


def _group_key(record: RunRecord) -> tuple[str, str, str]:
    cfg = RunConfig(**record.config)
    return cfg.model, cfg.dataset, cfg.method_label()


def aggregate(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (model, dataset, method): mean and sample std over seeds of each metric in COLUMNS."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.status == "done":
            groups[_group_key(record)].append(record)
    rows = []
    for (model, dataset, method), members in sorted(groups.items()):
        row: dict[str, Any] = {"model": model, "dataset": dataset, "method": method, "seeds": len(members)}
        for column in COLUMNS:
            values = [float(m.metrics[column]) for m in members if m.metrics.get(column) is not None]
            row[column] = statistics.fmean(values) if values else None
            row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], column: str) -> str:
    mean, std = row.get(column), row.get(f"{column}_std")
    if mean is None:
        return "–"
    if column.startswith("test_top"):
        return f"{mean:.2f} ± {std:.2f}"
    if column in {"params_nonzero", "effective_macs"}:
        return f"{mean / 1e6:.3f} M"
    return f"{mean:.3g}"


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """``fmt`` is ``"md"``, ``"csv"`` or ``"json"``."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue()
    if fmt != "md":
        raise ValueError(f"format must be one of 'md', 'csv', 'json', got {fmt!r}")
    header = [
        "model",
        "dataset",
        "method",
        "seeds",
        "top-1 %",
        "top-5 %",
        "non-zero params",
        "eff. MACs",
        "latency ms",
        "wall s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], row["dataset"], row["method"], str(row["seeds"])] + [
            _cell(row, c) for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
