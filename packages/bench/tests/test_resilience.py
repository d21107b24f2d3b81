"""A sweep survives SIGKILL (nothing lost, nothing repeated) and two processes can share one store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnkit.bench.results import ResultStore

SWEEP = {
    "base": {
        "model": "lenet5_caffe",
        "dataset": "synthetic",
        "dataset_args": {"shape": [1, 28, 28], "size": 320},
        "epochs": 3,
        "batch_size": 32,
        "optimizer": {"lr": 0.01},
        "progress": False,
        "measure_latency": False,
    },
    "grid": {"seed": [0, 1, 2, 3]},
}


def start_sweep(path: Path, store: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnkit.bench.cli", "sweep", str(path), "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def write_sweep(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**SWEEP, "grid": {"seed": seeds}}))
    return path


def wait_until(predicate, timeout: float = 240.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkilled_sweep_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "sweep.yaml", [0, 1, 2, 3])
    store_dir = tmp_path / "store"
    proc = start_sweep(path, store_dir)
    db = store_dir / "results.sqlite"

    def one_done_one_running() -> bool:
        if proc.poll() is not None or not db.exists():
            return proc.poll() is not None
        store = ResultStore(db)
        return len(store.records("done")) >= 1 and len(store.records("running")) == 1

    assert wait_until(one_done_one_running)
    if proc.poll() is not None:
        pytest.fail(f"the sweep ended before it could be killed: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r.key: r for r in ResultStore(db).records()}
    finished_before = {k: r.started for k, r in before.items() if r.status == "done"}
    assert finished_before and any(r.status == "running" for r in before.values())

    rerun = start_sweep(path, store_dir)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    after = ResultStore(db).records()
    assert len(after) == 4 and all(r.status == "done" for r in after)
    for key, started in finished_before.items():  # finished runs were reused, not trained again
        assert next(r for r in after if r.key == key).started == started
    assert f"{len(finished_before)} reused" in err


def test_two_processes_share_one_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = start_sweep(write_sweep(tmp_path, "a.yaml", [10, 11]), store_dir)
    second = start_sweep(write_sweep(tmp_path, "b.yaml", [20, 21]), store_dir)
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    records = ResultStore(store_dir / "results.sqlite").records()
    assert sorted(r.config["seed"] for r in records) == [10, 11, 20, 21]
    assert all(r.status == "done" and r.metrics["epochs"] == 3 for r in records)
    assert all(r.environment.get("torch") for r in records)
