"""``cnnkit reproduce freezenet-mnist`` (needs bench and pruning): freezing rate, data root, table, --quick.

The end-to-end test runs the preset with ``--quick`` (3 steps per run) on the embedded ``fashion_mnist_mini``
stand-in (``args.dataset``, an attribute the CLI does not set), so it needs no data root and no network; the
real MNIST path differs only in the dataset name and the data root, which are tested separately.
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cnnkit.bench.reproduce import freezenet_mnist as preset
from cnnkit.bench.reproduce import load_preset
from cnnkit.bench.results import ResultStore, RunRecord
from cnnkit.pruning._base import keep_count


def test_freezing_rate_trains_exactly_one_157th_of_the_weights() -> None:
    q = preset.freezing_rate()
    assert keep_count(430_500, Decimal(1) - Decimal(repr(q))) == 2_742 == round(430_500 / 157)
    assert q == pytest.approx(1 - 2_742 / 430_500, abs=1e-15)
    for weights, factor in [(1_000, 7), (266_200, 100), (10, 3)]:
        q = preset.freezing_rate(weights, factor)
        assert keep_count(weights, Decimal(1) - Decimal(repr(q))) == round(weights / factor)


def test_runs_share_the_recipe_and_differ_only_in_the_method() -> None:
    configs = preset.run_configs("/data", quick=False)
    assert list(configs) == ["dense", "freezenet", "snip"]
    dumps = [c.model_dump(exclude={"methods"}) for c in configs.values()]
    assert dumps[0] == dumps[1] == dumps[2]
    dense = configs["dense"]
    assert (dense.model, dense.dataset, dense.batch_size, dense.epochs) == (
        "lenet5_caffe",
        "mnist",
        100,
        preset.EPOCHS,
    )
    assert dense.optimizer.momentum == 0.9 and dense.optimizer.weight_decay == 5e-4
    assert configs["freezenet"].methods[0].config["sparsity"] == preset.freezing_rate()
    assert configs["snip"].methods[0].name == "snip"
    assert preset.run_configs(None, quick=True)["dense"].max_steps_per_epoch == preset.QUICK_STEPS


def test_data_root_explicit_then_environment_then_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNKIT_DATA", "/from/env")
    assert preset.find_data_root("/explicit") == "/explicit"
    assert preset.find_data_root(None) == "/from/env"
    monkeypatch.delenv("CNNKIT_DATA")
    (tmp_path / "shared" / "data" / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    assert preset.find_data_root(None) == str(tmp_path / "shared" / "data")


def _record(status: str, **metrics: Any) -> RunRecord:
    return RunRecord("k", {}, status, metrics, {}, "", 0.0, 0.0)  # type: ignore[arg-type]


def test_table_rows_and_ratio_to_dense() -> None:
    freezenet = {
        "test_top1": 97.02,
        "params_total": 431_080,
        "method.maskable": 430_500,
        "method.stored_params": 3_323,
        "method.kept": 2_742,
        "method.trained_params": 3_322,
    }
    records = {
        "dense": _record("done", test_top1=99.0, params_total=431_080, params_trainable=431_080),
        "freezenet": _record("done", **freezenet),
        "snip": _record("failed"),
    }
    rows = preset.build_table(records)
    assert rows[0][:7] == ["dense", "430,500", "431,080", "1.0", "1.0", "99.00", "100.00"]
    assert rows[1][:7] == ["freezenet", "2,742", "3,322", "157.0", "129.7", "97.02", "98.00"]
    assert rows[2][5] == "failed" and rows[2][6] == "-"
    text = preset.render_table(rows)
    assert text.splitlines()[0].startswith("| method | trained weights |")
    assert "99.2 % of baseline at x157" in text


def test_quick_preset_on_the_embedded_stand_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_preset("freezenet-mnist")
    args = argparse.Namespace(
        store=str(tmp_path / "store"), data_root=None, out=str(tmp_path / "out"), quick=True,
        dataset="fashion_mnist_mini",
    )  # fmt: skip
    assert module.main(args) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert table in capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    rows = {row[0]: row for row in cells if row[0] in ("dense", "freezenet", "snip")}
    assert set(rows) == {"dense", "freezenet", "snip"}
    assert rows["dense"][1:3] == ["430,500", "431,080"]
    for label in ("freezenet", "snip"):
        assert rows[label][1:4] == ["2,742", "3,322", "157.0"], label
        assert 0.0 <= float(rows[label][5]) <= 100.0
        assert float(rows[label][6]) == pytest.approx(
            100 * float(rows[label][5]) / float(rows["dense"][5]), abs=0.02
        )
    store = ResultStore(tmp_path / "store" / "results.sqlite")
    finished = sorted((r.key, r.finished) for r in store.records())
    assert len(finished) == 3 and all(r.status == "done" for r in store.records())
    assert module.main(args) == 0  # a second call reuses the three runs
    assert sorted((r.key, r.finished) for r in store.records()) == finished
