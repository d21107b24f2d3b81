"""Reports: mean ± sample std over seeds, the baseline row always present, deltas to the baseline, failed and
skipped cells with their reasons, Markdown/CSV/JSON tables and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from cnnkit.bench.report import aggregate, render, write_report
from cnnkit.bench.results import RunRecord, Status
from cnnkit.bench.runconfig import MethodRef, RunConfig

SKIP_REASON = "cnnkit: method mod needs residual stages"


def _config(model: str, dataset: str, seed: int, method: str | None, **method_config: Any) -> dict[str, Any]:
    methods = (MethodRef(name=method, config=method_config),) if method else ()
    return RunConfig(model=model, dataset=dataset, seed=seed, methods=methods).model_dump(mode="json")


def _record(
    model: str = "lenet5_caffe",
    dataset: str = "fashion_mnist_mini",
    seed: int = 0,
    method: str | None = None,
    status: Status = "done",
    error: str = "",
    **metrics: Any,
) -> RunRecord:
    config = _config(model, dataset, seed, method, **({"p": 0.1} if method == "swd" else {}))
    return RunRecord(
        key=RunConfig.model_validate(config).key(),
        config=config,
        status=status,
        metrics=metrics if status == "done" else {},
        environment={},
        error=error,
        started=float(seed),
        finished=float(seed) + 1.0,
    )


# Hand-written metrics: three seeds each of the baseline and of SWD on LeNet-5 / Fashion-MNIST.
BASE_TOP1 = [90.0, 91.0, 92.5]
SWD_TOP1 = [89.0, 88.5, 90.25]
BASE_MACS = [2.0e6, 2.0e6, 2.0e6]
SWD_MACS = [0.5e6, 0.6e6, 0.4e6]
BASE_LAT = [1.0, 1.2, 1.1]
SWD_LAT = [0.8, 0.9, 0.7]
SWD_SPARSITY = [0.9, 0.92, 0.88]


def _metrics(top1: float, macs: float, latency: float, sparsity: float) -> dict[str, Any]:
    return {
        "test_top1": top1,
        "test_top5": 99.0,
        "val_top1": top1 - 1.0,
        "params_total": 60_000,
        "params_nonzero": round(60_000 * (1 - sparsity)),
        "sparsity": sparsity,
        "macs": 2.0e6,
        "effective_macs": macs,
        "cpu_latency_ms_b1": latency,
        "cpu_latency_ms_b64": latency * 20,
        "train_samples_per_s": 1000.0,
        "peak_memory_mb": 0.0,
        "wall_time_s": 3.0,
        "method.density": 1 - sparsity,
    }


def _study() -> list[RunRecord]:
    records = []
    for seed in range(3):
        records.append(_record(seed=seed, **_metrics(BASE_TOP1[seed], BASE_MACS[seed], BASE_LAT[seed], 0.0)))
        records.append(
            _record(
                seed=seed,
                method="swd",
                **_metrics(SWD_TOP1[seed], SWD_MACS[seed], SWD_LAT[seed], SWD_SPARSITY[seed]),
            )
        )
    records.append(_record(seed=0, method="mod", status="skipped", error=SKIP_REASON))
    records.append(_record(seed=1, method="mod", status="skipped", error=SKIP_REASON))
    return records


def _by_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["method"]: row for row in rows}


def test_mean_and_sample_std_over_seeds_and_exact_deltas() -> None:
    rows = _by_method(aggregate(_study()))
    base, swd = rows["baseline"], rows["swd:p=0.1"]
    assert base["seeds"] == swd["seeds"] == 3
    assert base["test_top1"] == pytest.approx(statistics.fmean(BASE_TOP1), abs=1e-12)
    assert base["test_top1_std"] == pytest.approx(statistics.stdev(BASE_TOP1), abs=1e-12)
    assert swd["test_top1"] == pytest.approx(statistics.fmean(SWD_TOP1), abs=1e-12)
    assert swd["test_top1_std"] == pytest.approx(statistics.stdev(SWD_TOP1), abs=1e-12)
    assert swd["sparsity"] == pytest.approx(statistics.fmean(SWD_SPARSITY), abs=1e-12)
    assert swd["sparsity_std"] == pytest.approx(statistics.stdev(SWD_SPARSITY), abs=1e-12)
    assert base["sparsity_std"] == 0.0
    assert swd["delta_top1"] == pytest.approx(
        statistics.fmean(SWD_TOP1) - statistics.fmean(BASE_TOP1), abs=1e-12
    )
    macs_pct = (statistics.fmean(SWD_MACS) / statistics.fmean(BASE_MACS) - 1) * 100
    lat_pct = (statistics.fmean(SWD_LAT) / statistics.fmean(BASE_LAT) - 1) * 100
    assert swd["delta_effective_macs_pct"] == pytest.approx(macs_pct, abs=1e-9)
    assert swd["delta_latency_pct"] == pytest.approx(lat_pct, abs=1e-9)
    assert base["delta_top1"] == 0.0 and base["delta_effective_macs_pct"] == 0.0
    assert "gpu_latency_ms_b1" not in base  # no run measured it


def test_single_seed_has_zero_std_and_gpu_latency_column_when_measured() -> None:
    rows = aggregate([_record(**_metrics(90.0, 1e6, 1.0, 0.0), gpu_latency_ms_b1=0.25)])
    assert len(rows) == 1
    assert rows[0]["test_top1"] == 90.0 and rows[0]["test_top1_std"] == 0.0
    assert rows[0]["gpu_latency_ms_b1"] == 0.25


def test_baseline_row_is_always_present_and_first_per_group() -> None:
    records = [
        _record(seed=0, method="swd", **_metrics(80.0, 1e6, 1.0, 0.5)),
        _record(seed=1, method="swd", **_metrics(82.0, 1e6, 1.0, 0.5)),
        _record(model="resnet20", dataset="cifar10", seed=0, **_metrics(91.0, 4e7, 5.0, 0.0)),
        _record(model="resnet20", dataset="cifar10", seed=0, method="swd", **_metrics(90.0, 2e7, 4.0, 0.8)),
        _record(model="resnet20", dataset="cifar10", seed=0, method="admm", **_metrics(89.0, 3e7, 4.5, 0.5)),
        _record(
            seed=2, status="failed", error="Traceback (most recent call last):\n  ...\nRuntimeError: boom"
        ),
    ]
    rows = aggregate(records)
    assert [(r["model"], r["dataset"], r["method"]) for r in rows] == [
        ("lenet5_caffe", "fashion_mnist_mini", "baseline"),
        ("lenet5_caffe", "fashion_mnist_mini", "swd:p=0.1"),
        ("resnet20", "cifar10", "baseline"),
        ("resnet20", "cifar10", "admm"),  # sorts before "baseline", listed after it
        ("resnet20", "cifar10", "swd:p=0.1"),
    ]
    missing = rows[0]
    assert missing["seeds"] == 0 and missing["test_top1"] is None and missing["failed"] == 1
    assert "no baseline run finished" in missing["note"] and "RuntimeError: boom" in missing["note"]
    assert rows[1]["seeds"] == 2 and rows[1]["delta_top1"] is None and rows[1]["delta_latency_pct"] is None
    # The groups are separate: the ResNet deltas are against the ResNet baseline only.
    assert rows[3]["delta_top1"] == pytest.approx(-2.0) and rows[4]["delta_top1"] == pytest.approx(-1.0)
    assert rows[4]["delta_effective_macs_pct"] == pytest.approx(-50.0)


def test_skipped_method_is_a_row_with_its_reason() -> None:
    rows = aggregate(_study())
    skipped = _by_method(rows)["mod"]
    assert skipped["seeds"] == 0 and skipped["skipped"] == 2 and skipped["failed"] == 0
    assert skipped["test_top1"] is None and skipped["delta_top1"] is None
    assert SKIP_REASON in skipped["note"]
    table = render(rows, "md")
    (line,) = [line for line in table.splitlines() if "| mod |" in line]
    assert "| 0 |" in line and SKIP_REASON in line
    # Only skipped runs at all: still a row, plus the placeholder baseline.
    only = aggregate([_record(method="mod", status="skipped", error=SKIP_REASON)])
    assert [(r["method"], r["seeds"]) for r in only] == [("baseline", 0), ("mod", 0)]


def test_markdown_table_shows_mean_std_and_delta() -> None:
    text = render(aggregate(_study()), "md")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3 and "top-1 %" in lines[0]
    base_line, swd_line = lines[2], lines[4]
    assert "| baseline |" in base_line and f"{statistics.fmean(BASE_TOP1):.2f} ± " in base_line
    assert "| swd:p=0.1 |" in swd_line
    assert f"{statistics.fmean(SWD_TOP1):.2f} ± {statistics.stdev(SWD_TOP1):.2f}" in swd_line
    assert f"{statistics.fmean(SWD_TOP1) - statistics.fmean(BASE_TOP1):+.2f}" in swd_line
    assert "| 90.0 |" in swd_line  # sparsity in %
    assert "No finished runs" not in text


def test_csv_and_json_hold_the_rows() -> None:
    rows = aggregate(_study())
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [r["method"] for r in parsed] == ["baseline", "mod", "swd:p=0.1"]
    assert list(parsed[0])[:5] == ["model", "dataset", "method", "seeds", "test_top1"]
    swd = parsed[2]
    assert int(swd["seeds"]) == 3
    assert float(swd["test_top1"]) == pytest.approx(statistics.fmean(SWD_TOP1), abs=1e-12)
    assert float(swd["test_top1_std"]) == pytest.approx(statistics.stdev(SWD_TOP1), abs=1e-12)
    assert float(swd["effective_macs"]) == pytest.approx(statistics.fmean(SWD_MACS))
    assert parsed[1]["test_top1"] == "" and parsed[1]["skipped"] == "2" and SKIP_REASON in parsed[1]["note"]

    loaded = json.loads(render(rows, "json"))
    assert loaded == json.loads(json.dumps(rows))
    assert loaded[1]["test_top1"] is None and loaded[1]["note"].endswith(SKIP_REASON)
    assert loaded[2]["delta_top1"] == pytest.approx(statistics.fmean(SWD_TOP1) - statistics.fmean(BASE_TOP1))


def test_json_is_nan_free_and_non_finite_metrics_are_ignored() -> None:
    records = [
        _record(seed=0, **_metrics(90.0, 1e6, 1.0, 0.0)),
        _record(seed=1, **{**_metrics(92.0, 1e6, 1.0, 0.0), "cpu_latency_ms_b1": math.nan}),
    ]
    rows = aggregate(records)
    assert rows[0]["cpu_latency_ms_b1"] == 1.0 and rows[0]["cpu_latency_ms_b1_std"] == 0.0
    text = render(rows, "json")
    assert "NaN" not in text and "Infinity" not in text
    rows[0]["val_top1"] = math.inf  # render itself never emits non-finite numbers
    assert json.loads(render(rows, "json"))[0]["val_top1"] is None


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format") as info:
        render([], "html")
    for name in ("'md'", "'csv'", "'json'"):
        assert name in str(info.value)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5_000


def test_write_report_writes_tables_and_plots(tmp_path: Path) -> None:
    written = write_report(_study(), tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "report.md",
            "report.csv",
            "report.json",
            "accuracy_vs_sparsity.png",
            "accuracy_vs_flops.png",
            "latency.png",
        ]
    )
    assert all(p.parent == tmp_path / "report" and p.is_file() for p in written)
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_flops.png", "latency.png"):
        assert _is_png(tmp_path / "report" / name), name
    assert SKIP_REASON in (tmp_path / "report" / "report.md").read_text()
    assert len(json.loads((tmp_path / "report" / "report.json").read_text())) == 3


def test_write_report_without_finished_runs_writes_tables_only(tmp_path: Path) -> None:
    # A stale plot from an earlier report in the same folder must not survive.
    (tmp_path / "latency.png").write_bytes(b"\x89PNG old")
    written = write_report([_record(method="mod", status="skipped", error=SKIP_REASON)], tmp_path)
    assert sorted(p.name for p in written) == ["report.csv", "report.json", "report.md"]
    assert not list(tmp_path.glob("*.png"))
    assert "No finished runs" in (tmp_path / "report.md").read_text()
    assert SKIP_REASON in (tmp_path / "report.md").read_text()

    empty = write_report([], tmp_path / "empty")
    assert sorted(p.name for p in empty) == ["report.csv", "report.json", "report.md"]
    assert json.loads((tmp_path / "empty" / "report.json").read_text()) == []
    header = (tmp_path / "empty" / "report.csv").read_text().splitlines()
    assert len(header) == 1 and header[0].startswith("model,dataset,method,seeds,test_top1")
    assert "No finished runs" in (tmp_path / "empty" / "report.md").read_text()
