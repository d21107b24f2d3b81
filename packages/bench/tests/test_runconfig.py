"""Run configs: validation messages, method strings, stable keys; the SQLite results store."""

from __future__ import annotations

import pytest

from cnnkit.bench.results import ResultStore
from cnnkit.bench.runconfig import MethodRef, RunConfig, parse_method_ref
from cnnkit.bench.sweep import expand_sweep, make_run_config
from cnnkit.core.config import ConfigError


def test_method_strings_parse_values() -> None:
    ref = parse_method_ref("swd:p=0.1,variant=1d,stages=[3,4],learnable=true")
    assert ref == MethodRef(
        name="swd", config={"p": 0.1, "variant": "1d", "stages": [3, 4], "learnable": True}
    )
    assert parse_method_ref("wc") == MethodRef(name="wc")
    with pytest.raises(ConfigError, match="key=value"):
        parse_method_ref("swd:p")


def test_key_is_stable_and_ignores_where_data_lives() -> None:
    a = RunConfig(seed=1, data_root="/data/a", progress=False)
    b = RunConfig(seed=1, data_root="/elsewhere")
    assert a.key() == b.key()
    assert a.key() != RunConfig(seed=2).key()
    assert RunConfig(methods=(MethodRef(name="swd", config={"p": 0.1}),)).key() != RunConfig().key()


def test_keys_of_earlier_runs_do_not_change() -> None:
    # A run's checkpoint lives under its key: a new field must keep the keys of runs that leave it at its
    # default (else their checkpoints no longer resume). The pinned value is the default config's key
    # before ``cpu_amp`` existed.
    assert RunConfig().key() == "b426fe97c1c75ac5"
    assert RunConfig(cpu_amp=False).key() == RunConfig().key() != RunConfig(cpu_amp=True).key()
    assert RunConfig(data_on_device=False).key() == RunConfig().key() != RunConfig(data_on_device=True).key()


def test_bad_fields_name_the_field_and_the_range() -> None:
    with pytest.raises(ConfigError, match=r"epochs.*greater than or equal to 1"):
        make_run_config({"epochs": 0})
    with pytest.raises(ConfigError, match=r"optimizer\.name.*'sgd' or 'adamw'"):
        make_run_config({"optimizer": {"name": "lbfgs"}})
    with pytest.raises(ConfigError, match="epoch"):
        make_run_config({"epoch": 3})
    with pytest.raises(ConfigError, match="milestones"):
        make_run_config({"schedule": {"name": "multistep", "milestones": [80, 120]}})


def test_sweep_expands_the_grid_and_method_grids() -> None:
    data = {
        "base": {"epochs": 1},
        "grid": {
            "seed": [0, 1],
            "methods": [
                "baseline",
                "swd:p=0.1",
                {"name": "sfd", "config": {"variant": "2d"}, "grid": {"p": [0.1, 0.2]}},
                ["wc", "swd"],
            ],
        },
    }
    configs = list(expand_sweep(data))
    assert len(configs) == 2 * 5
    labels = sorted({c.method_label() for c in configs})
    assert labels == ["baseline", "sfd:p=0.1,variant=2d", "sfd:p=0.2,variant=2d", "swd:p=0.1", "wc+swd"]
    assert len({c.key() for c in configs}) == 10


def test_sweep_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="base, grid"):
        list(expand_sweep({"grid": {}, "extra": 1}))
    with pytest.raises(ConfigError, match="lists"):
        list(expand_sweep({"grid": {"seed": 3}}))


def test_sweep_methods_given_as_a_string_is_refused_not_split_into_letters() -> None:
    with pytest.raises(ConfigError, match=r"grid\.methods: grid values must be lists, e\.g\. \['swd'\]"):
        list(expand_sweep({"grid": {"methods": "swd"}}))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"base": [1, 2]}, "base: must be a mapping"),
        ({"base": 3}, "base: must be a mapping"),
        ({"grid": [1, 2]}, "grid: must be a mapping"),
        (
            {"grid": {"methods": [{"name": "swd", "config": [1]}]}},
            r"grid\.methods\[0\]\.config: must be a mapping",
        ),
        (
            {"grid": {"methods": [{"name": "swd", "grid": {"p": 0.1}}]}},
            r"grid\.methods\[0\]\.grid\.p: grid values",
        ),
        (
            {"grid": {"methods": ["baseline", {"name": "swd", "grid": [0.1]}]}},
            r"grid\.methods\[1\]\.grid: must be",
        ),
        ({"grid": {"methods": [{"name": 3}]}}, r"grid\.methods\[0\]\.name"),
    ],
)
def test_badly_shaped_sweeps_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        list(expand_sweep(data))


@pytest.mark.parametrize("text", [":", "", " : p=1"])
def test_method_ref_with_an_empty_name_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="method name is empty"):
        parse_method_ref(text)


def test_sweep_leaves_out_repeated_runs() -> None:
    configs = list(expand_sweep({"grid": {"seed": [0, 1, 0], "methods": ["baseline", "none", []]}}))
    assert [c.seed for c in configs] == [0, 1]
    configs = list(expand_sweep({"grid": {"num_workers": [0, 1]}}))  # not part of the key
    assert len(configs) == 1


def test_store_records_lifecycle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = ResultStore(tmp_path / "sub" / "results.sqlite")
    store.start("k1", {"seed": 0})
    assert store.get("k1").status == "running" and not store.is_done("k1")
    store.finish("k1", {"test_top1": 50.0})
    store.start("k2", {"seed": 1})
    store.fail("k2", "loss became nan")
    reopened = ResultStore(tmp_path / "sub" / "results.sqlite")
    assert reopened.is_done("k1") and reopened.get("k1").metrics == {"test_top1": 50.0}
    assert reopened.get("k2").error == "loss became nan"
    assert [r.key for r in reopened.records("failed")] == ["k2"]
    with pytest.raises(KeyError, match="never started"):
        reopened.finish("k3", {})


def test_checkpoint_dir_is_refused_rather_than_ignored() -> None:
    with pytest.raises(
        ConfigError, match=r"checkpoint_dir: .*not supported: checkpoints are written to STORE/runs"
    ):
        make_run_config({"checkpoint_dir": "/tmp/elsewhere"})
    stored = RunConfig().model_dump(mode="json")  # configs stored with checkpoint_dir: null still load
    assert stored["checkpoint_dir"] is None and RunConfig.model_validate(stored).key() == RunConfig().key()
