"""``cnnkit sweep --executor ray`` on a local Ray instance (2 CPUs): results in the driver's SQLite store,
a failed task recorded as failed without stopping the sweep, resume semantics as with the local executor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnnkit.bench.cli import build_parser, main
from cnnkit.bench.results import ResultStore

SWEEP: dict[str, Any] = {
    "base": {
        "model": "lenet5_caffe",
        "dataset": "synthetic",
        "dataset_args": {"shape": [1, 16, 16], "size": 64},
        "epochs": 1,
        "batch_size": 16,
        "max_steps_per_epoch": 2,
        "device": "cpu",
        "progress": False,
        "measure_latency": False,
    },
    # the latter fails in its task (the model factory refuses it)
    "grid": {"seed": [0, 1], "model_args": [{"input_size": 16}, {"input_size": 16, "no_such_arg": 1}]},
}


def test_local_is_the_default_executor() -> None:
    args = build_parser().parse_args(["sweep", "grid.yaml"])
    assert args.executor == "local" and args.address is None and args.cpus_per_run == 1.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "grid.yaml", "--gpus-per-run", "-1"])


@pytest.mark.slow
def test_ray_sweep_records_every_run_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ray = pytest.importorskip("ray")
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    store_dir = tmp_path / "store"
    argv = ["sweep", str(config), "--store", str(store_dir), "--executor", "ray", "--num-cpus", "2"]

    started = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nRay sweep of 4 runs (2 trained, 2 failing) on a local 2-CPU instance: {wall:.1f} s wall")
    assert code == 1  # some runs failed, the others finished
    assert not ray.is_initialized()  # the local instance started for the sweep is shut down

    store = ResultStore(store_dir / "results.sqlite")
    records = store.records()
    assert len(records) == 4
    done = [r for r in records if r.status == "done"]
    failed = [r for r in records if r.status == "failed"]
    assert sorted(r.config["seed"] for r in done) == [0, 1] and all(
        r.config["model_args"] == {"input_size": 16} for r in done
    )
    assert len(failed) == 2 and all("no_such_arg" in r.error for r in failed)
    assert all(r.metrics["steps"] == 2 and 0.0 <= r.metrics["test_top1"] <= 100.0 for r in done)
    assert all(r.environment.get("executor") == "ray" for r in done + failed)  # written from the workers
    assert all((store_dir / "runs" / r.key / "checkpoint.pt").exists() for r in done)

    finished = {r.key: r.finished for r in done}
    assert main([*argv, "--skip-failed"]) == 0  # nothing left to do: no task is submitted
    assert {r.key: r.finished for r in store.records("done")} == finished
    assert len(store.records("failed")) == 2
