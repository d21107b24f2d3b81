"""The ``cnnkit`` CLI: listings, method details, runs, sweeps that survive failures, reports, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from torch import nn

from cnnkit.bench.cli import main
from cnnkit.bench.results import ResultStore
from cnnkit.core import Context, Method, MethodConfig, MethodSpec, hookimpl
from cnnkit.core.method import MethodNotApplicableError

TINY_FLAGS = [
    "--model",
    "tiny_resnet",
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--no-progress",
    "--max-steps-per-epoch",
    "2",
]


def test_list_shows_models_and_datasets_with_their_distribution(registries: Any, capsys: Any) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "cnnkit-bench" in out and "He et al." in out
    assert main(["list", "datasets"]) == 0
    assert "fashion_mnist_mini" in capsys.readouterr().out


def test_show_unknown_method_exits_2_with_suggestions(registries: Any, capsys: Any) -> None:
    assert main(["show", "nosuchmethod"]) == 2
    assert "unknown method 'nosuchmethod'" in capsys.readouterr().err


def test_bad_flag_value_exits_2_naming_the_field(registries: Any, tmp_path: Path, capsys: Any) -> None:
    code = main(["run", "--store", str(tmp_path), *TINY_FLAGS[:-2], "--max-steps-per-epoch", "0"])
    assert code == 2
    assert "max_steps_per_epoch" in capsys.readouterr().err


def test_run_records_results_and_reuses_them(registries: Any, tmp_path: Path, capsys: Any) -> None:
    assert main(["run", "--store", str(tmp_path), *TINY_FLAGS]) == 0
    captured = capsys.readouterr()
    assert "| tiny_resnet | synthetic | baseline | 1 |" in captured.out
    assert "1 run(s) trained" in captured.err
    assert main(["run", "--store", str(tmp_path), *TINY_FLAGS]) == 0
    assert "0 run(s) trained, 1 reused" in capsys.readouterr().err
    records = ResultStore(tmp_path / "results.sqlite").records()
    assert len(records) == 1 and records[0].status == "done"
    assert records[0].metrics["steps"] == 2


def test_sweep_continues_after_a_failed_run_and_exits_1(registries: Any, tmp_path: Path, capsys: Any) -> None:
    sweep = {
        "base": {
            "model": "tiny_resnet",
            "dataset": "synthetic",
            "epochs": 1,
            "batch_size": 32,
            "max_steps_per_epoch": 2,
            "progress": False,
            "measure_latency": False,
        },
        "grid": {"seed": [0, 1], "model_args": [{}, {"no_such_arg": 1}]},  # the latter fails when built
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--store", str(tmp_path)]) == 1
    store = ResultStore(tmp_path / "results.sqlite")
    assert len(store.records("done")) == 2 and len(store.records("failed")) == 2
    assert "no_such_arg" in store.records("failed")[0].error
    capsys.readouterr()
    assert main(["sweep", str(path), "--store", str(tmp_path), "--skip-failed"]) == 0
    assert "0 run(s) trained, 4 reused" in capsys.readouterr().err


def test_report_formats(registries: Any, tmp_path: Path, capsys: Any) -> None:
    for seed in ("0", "1"):
        assert main(["run", "--store", str(tmp_path), *TINY_FLAGS, "--seed", seed]) == 0
    capsys.readouterr()
    assert main(["report", "--store", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["seeds"] == 2 and rows[0]["test_top1_std"] >= 0.0
    assert main(["report", "--store", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("model,dataset,method,seeds,test_top1")


def test_console_script_runs_in_a_fresh_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cnnkit.bench.cli", "list", "models"],
        capture_output=True,
        text=True,
        env={**os.environ, "CNNKIT_RESULTS": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "lenet5_caffe" in result.stdout


def test_demo_trains_the_baseline_on_the_embedded_data(registries: Any, tmp_path: Path, capsys: Any) -> None:
    code = main(
        ["demo", "--store", str(tmp_path), "--epochs", "1", "--seeds", "1", "--max-steps-per-epoch", "3"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| lenet5_caffe | fashion_mnist_mini | baseline | 1 |" in out


class NeedsDemoConfig(Method):
    """Applies only with ``width=5``: its paper default does not fit the demo's model."""

    name = "needs_demo_config"
    kind = "efficiency"
    demo_config: ClassVar[dict[str, Any]] = {"width": 5}

    class Config(MethodConfig):
        width: int = 3

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.config.width != 5:  # type: ignore[attr-defined]
            raise MethodNotApplicableError("needs width=5 on LeNet-5-Caffe")
        return model


class _DemoPlugin:
    @hookimpl
    def cnnkit_register_methods(self, registry: Any) -> None:
        registry.add(
            MethodSpec(name="needs_demo_config", kind="efficiency", target=f"{__name__}:NeedsDemoConfig")
        )


def test_demo_runs_each_method_with_its_demo_config(registries: Any) -> None:
    from cnnkit.bench.cli import demo_configs

    registries.register_plugin(_DemoPlugin())
    refs = [cfg.methods[0] for cfg in demo_configs(1, 1, 3) if cfg.methods]
    ours = [ref for ref in refs if ref.name == "needs_demo_config"]
    assert [ref.config for ref in ours] == [{"width": 5}]


@pytest.mark.parametrize("argv", [["run", "--epochs", "x"], ["nosuchcommand"], []])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_cpu_amp_flag_reaches_the_run(registries: Any, tmp_path: Path, capsys: Any) -> None:
    # the tiny ResNet's 8-channel strided 1x1 conv is refused under cpu_amp: the flag was applied
    code = main(["run", "--store", str(tmp_path), *TINY_FLAGS, "--cpu-amp"])
    assert code != 0
    assert "cpu_amp=True cannot train this model" in capsys.readouterr().err
    record = ResultStore(tmp_path / "results.sqlite").records()[0]
    assert record.status == "failed" and record.config["cpu_amp"] is True


def test_data_on_device_flag_reaches_the_run(registries: Any, tmp_path: Path) -> None:
    assert main(["run", "--store", str(tmp_path), *TINY_FLAGS, "--data-on-device"]) == 0
    record = ResultStore(tmp_path / "results.sqlite").records()[0]
    assert record.status == "done" and record.config["data_on_device"] is True


@pytest.mark.parametrize("optimizer", ["adamw", None])
def test_lr_flag_with_a_non_mapping_optimizer_exits_2(
    registries: Any, tmp_path: Path, capsys: Any, optimizer: Any
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"optimizer": optimizer}))
    assert main(["run", str(config), "--lr", "0.01", "--store", str(tmp_path), *TINY_FLAGS]) == 2
    assert "optimizer: must be a mapping" in capsys.readouterr().err


@pytest.mark.parametrize("method", [":", ""])
def test_run_with_an_empty_method_name_exits_2(
    registries: Any, tmp_path: Path, capsys: Any, method: str
) -> None:
    assert main(["run", "--method", method, "--store", str(tmp_path), *TINY_FLAGS]) == 2
    assert "method name is empty" in capsys.readouterr().err


def test_sweep_summary_counts_a_repeated_run_once(registries: Any, tmp_path: Path, capsys: Any) -> None:
    sweep = {
        "base": {"model": "tiny_resnet", "dataset": "synthetic", "epochs": 1, "batch_size": 32},
        "grid": {"seed": [0, 0], "max_steps_per_epoch": [2], "progress": [False], "measure_latency": [False]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--store", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| tiny_resnet | synthetic | baseline | 1 |" in captured.out
    assert "1 run(s) trained, 0 reused" in captured.err


def test_interrupted_run_is_resumed_from_its_checkpoint_even_with_skip_failed(
    registries: Any, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnkit.bench.trainer import Trainer

    sweep = {"base": {"model": "tiny_resnet", "dataset": "synthetic", "epochs": 2, "batch_size": 32}}
    sweep["base"].update({"max_steps_per_epoch": 2, "progress": False, "measure_latency": False})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    save = Trainer._save

    def save_then_ctrl_c(self: Trainer) -> None:
        save(self)
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "_save", save_then_ctrl_c)
    assert main(["sweep", str(path), "--store", str(tmp_path)]) == 130
    [record] = ResultStore(tmp_path / "results.sqlite").records()
    assert record.status == "running"
    assert (tmp_path / "runs" / record.key / "checkpoint.pt").is_file()
    epochs_saved: list[int] = []

    def save_and_count(self: Trainer) -> None:
        epochs_saved.append(self.state.epoch)
        save(self)

    monkeypatch.setattr(Trainer, "_save", save_and_count)
    capsys.readouterr()
    assert main(["sweep", str(path), "--store", str(tmp_path), "--skip-failed"]) == 0
    assert "1 run(s) trained, 0 reused" in capsys.readouterr().err
    assert epochs_saved == [2]  # resumed after epoch 1, not trained from scratch
    [record] = ResultStore(tmp_path / "results.sqlite").records()
    assert record.status == "done" and record.metrics["steps"] == 4


def test_store_or_report_folder_that_cannot_be_used_exits_2_naming_the_path(
    registries: Any, tmp_path: Path, capsys: Any
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "results.sqlite").write_text("not a database")
    (tmp_path / "dir" / "results.sqlite").mkdir(parents=True)
    for store, named in [
        (a_file, a_file),
        (a_file / "sub", a_file),
        (tmp_path / "garbage", tmp_path / "garbage" / "results.sqlite"),
        (tmp_path / "dir", tmp_path / "dir" / "results.sqlite"),
    ]:
        assert main(["report", "--store", str(store)]) == 2
        assert f"{named}: " in capsys.readouterr().err
    for out in (a_file, a_file / "sub"):
        assert main(["report", "--store", str(tmp_path / "ok"), "--out", str(out)]) == 2
        assert "--out: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--method", "nosuch"], "unknown method 'nosuch'"),
        (["--method", "needs_demo_config:width=abc"], "width: "),
        (["--method", "needs_demo_config:bogus=1"], "bogus: unknown field"),
    ],
)
def test_unknown_names_and_bad_method_configs_exit_2_and_store_nothing(
    registries: Any, tmp_path: Path, capsys: Any, flags: list[str], message: str
) -> None:
    registries.register_plugin(_DemoPlugin())  # a test-only method: its config is what fails the check
    assert main(["run", "--store", str(tmp_path), *TINY_FLAGS, *flags]) == 2
    assert message in capsys.readouterr().err
    assert ResultStore(tmp_path / "results.sqlite").records() == []


def test_sweep_checks_every_run_before_training_any(registries: Any, tmp_path: Path, capsys: Any) -> None:
    registries.register_plugin(_DemoPlugin())  # a test-only method: its config is what fails the check
    sweep = {
        "base": {"model": "tiny_resnet", "dataset": "synthetic", "epochs": 1, "max_steps_per_epoch": 2},
        "grid": {"methods": ["baseline", "needs_demo_config:width=abc"]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--store", str(tmp_path)]) == 2
    assert "invalid configuration" in capsys.readouterr().err
    assert ResultStore(tmp_path / "results.sqlite").records() == []  # the baseline did not train either
