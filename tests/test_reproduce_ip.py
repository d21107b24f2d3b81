"""``cnnkit reproduce ip``: the grid, the table (from real runs on the embedded data and from fake records),
the fallback to the embedded data and the plot."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cnnkit.bench.reproduce import interspace as ip
from cnnkit.bench.results import RunRecord


def test_the_full_grid_is_three_methods_three_sparsities_sp_and_ip() -> None:
    configs = ip.run_configs("/data", dataset="fashion_mnist")
    assert len(configs) == 18 and len({c.key() for c in configs.values()}) == 18
    first = list(configs)[:2]
    assert first == [
        ip.Setting("snip", 0.98, False),
        ip.Setting("snip", 0.98, True),
    ]  # highest sparsity first
    for setting, cfg in configs.items():
        assert cfg.model == "lenet5_caffe" and cfg.dataset == "fashion_mnist" and cfg.data_root == "/data"
        assert cfg.epochs == ip.EPOCHS and cfg.max_steps_per_epoch is None
        (ref,) = cfg.methods
        assert ref.name == setting.method
        assert ref.config == {"sparsity": setting.sparsity, "interspace": setting.interspace}
    assert {s.method for s in configs} == {"snip", "synflow", "rigl"}
    assert {s.sparsity for s in configs} == {0.9, 0.95, 0.98}
    quick = ip.run_configs(None, quick=True, dataset="fashion_mnist_mini")
    assert all(c.max_steps_per_epoch == ip.QUICK_STEPS and c.epochs == 1 for c in quick.values())
    cifar = ip.cifar_configs("/data")
    assert all(c.model == "resnet20" and c.dataset == "cifar10_jpeg" for c in cifar.values())


def _record(top1: float | None, status: str = "done", error: str = "") -> RunRecord:
    metrics = {} if top1 is None else {"test_top1": top1}
    return RunRecord("k", {}, status, metrics, {}, error, 0.0, 1.0)  # type: ignore[arg-type]


def test_table_rows_difference_and_failed_runs() -> None:
    s = ip.Setting
    records = {
        s("snip", 0.9, False): _record(80.0),
        s("snip", 0.9, True): _record(82.5),
        s("rigl", 0.9, False): _record(
            None, "failed", "Traceback\nSpecLoadError: no module cnnkit.pruning.dst"
        ),
        s("rigl", 0.9, True): None,
    }
    rows = ip.build_rows(records)
    assert rows[0] == ["snip", "90 %", "80.00", "82.50", "+2.50"]
    assert rows[1][:2] == ["rigl", "90 %"]
    assert rows[1][2].startswith("failed: SpecLoadError") and rows[1][3] == "missing" and rows[1][4] == "-"
    table = ip.render_table(rows)
    assert table.splitlines()[0] == "| method | sparsity | SP acc (%) | IP acc (%) | IP-SP (pp) |"
    assert "IP >= SP in 1 of 1" in ip._verdict(records)


def test_quick_preset_on_the_embedded_data_writes_table_and_plot(tmp_path: Path) -> None:
    args = argparse.Namespace(
        store=str(tmp_path / "store"),
        data_root=None,
        out=str(tmp_path / "out"),
        quick=True,
        dataset="fashion_mnist_mini",
        methods=("snip",),
        sparsities=(0.95,),
        cifar=False,
    )
    assert ip.main(args) == 0
    text = (tmp_path / "out" / "table.md").read_text()
    match = re.search(r"\| snip \| 95 % \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \|", text)
    assert match, text
    sp, ipa, diff = (float(g) for g in match.groups())
    assert 0.0 <= sp <= 100.0 and 0.0 <= ipa <= 100.0
    assert diff == pytest.approx(ipa - sp, abs=0.011)
    assert "fashion_mnist_mini" in text and "--quick" in text
    png = tmp_path / "out" / "accuracy_vs_sparsity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the IP run really was interspace: its stats report the bases of the two 5×5 convs
    from cnnkit.bench.results import ResultStore

    store = ResultStore(tmp_path / "store" / "results.sqlite")
    done = {bool(r.config["methods"][0]["config"]["interspace"]): r for r in store.records()}
    assert done[True].metrics["method.basis_params"] == 2 * 25 * 25
    assert done[False].metrics["method.basis_params"] == 0
    assert done[True].metrics["method.kept"] == done[False].metrics["method.kept"]
    # a second call reuses the finished runs
    assert ip.main(args) == 0
    assert len(store.records()) == 2


def test_missing_data_falls_back_to_the_embedded_subset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    monkeypatch.setattr(ip, "_candidates", lambda: [tmp_path / "nowhere"])
    assert ip.find_data_root(None) is None
    assert ip.find_data_root("/explicit") == "/explicit"
    monkeypatch.setattr(ip, "_run_part", lambda configs, store, store_dir: ({s: None for s in configs}, 0))
    args = argparse.Namespace(store=str(tmp_path / "s"), data_root=None, out=None, quick=True, cifar=False)
    assert ip.main(args) == 0
    captured = capsys.readouterr()
    assert "falling back to the embedded subset 'fashion_mnist_mini'" in captured.err
    assert "dataset fashion_mnist_mini" in captured.out and "missing" in captured.out
    assert (tmp_path / "s" / "reproduce-ip" / "table.md").is_file()
