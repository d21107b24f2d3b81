"""Every registered method goes through the bench for a few steps on a tiny model (integration env).

A third-party method (the example plugin, installed into a temporary folder) takes the same path through
the ``cnnkit`` CLI as ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cnnkit.bench.runconfig import MethodRef, RunConfig
from cnnkit.bench.trainer import run
from cnnkit.core import MethodNotApplicableError
from cnnkit.core.testing import registered_method_names


def tiny_config(method: MethodRef | None) -> RunConfig:
    return RunConfig(
        model="tiny_resnet",
        dataset="synthetic",
        dataset_args={"shape": [3, 16, 16], "size": 128},
        methods=(method,) if method else (),
        epochs=2,
        batch_size=16,
        max_steps_per_epoch=3,
        optimizer={"lr": 0.02},
        progress=False,
        measure_latency=False,
    )


@pytest.mark.parametrize("name", ["baseline", *registered_method_names()])
def test_method_trains_through_the_bench(registries: Any, name: str) -> None:
    method = None
    if name != "baseline":
        cls = registries.methods.get(name).load()
        method = MethodRef(name=name, config=dict(getattr(cls, "contract_config", {})))
    try:
        metrics = run(tiny_config(method))
    except MethodNotApplicableError as exc:
        pytest.skip(f"{name} does not apply to the tiny ResNet: {exc}")
    assert metrics["steps"] == 6
    assert 0.0 <= metrics["test_top1"] <= 100.0
    assert metrics["params_total"] > 0 and metrics["effective_macs"] <= metrics["macs"] * 1.5


def test_third_party_method_runs_through_the_cli(installed_example: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "cnnkit.bench.cli",
        "run",
        "--store",
        str(tmp_path / "store"),
        "--model",
        "resnet20",
        "--dataset",
        "synthetic",
        "--method",
        "feature_noise:sigma=0.2",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "2",
        "--no-progress",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(installed_example)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| resnet20 | synthetic | feature_noise:sigma=0.2 | 1 |" in result.stdout
