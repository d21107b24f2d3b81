"""DDP under torchrun: 2 gloo processes on CPU give the single process's results at the same global batch.

This file is also the torchrun worker script (``python -m torch.distributed.run ... test_ddp.py OUT``): each
rank trains the configurations of :func:`ddp_configs` (dense, SNIP, WC), saves its metrics and final weights,
then runs ``cnnkit run`` twice (trains, then reuses) with a results store that ranks > 0 must not touch
(their ``sqlite3.connect`` raises). The tests compare both ranks with single-process runs of the same
configurations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from cnnkit.bench import distributed
from cnnkit.bench.distributed import ShardedBatchSampler, shard_range
from cnnkit.bench.runconfig import RunConfig

BASE: dict[str, Any] = {
    "model": "lenet5_caffe",  # no BatchNorm: DDP equals one process exactly only without batch statistics
    "model_args": {"input_size": 16},
    "dataset": "synthetic",
    "dataset_args": {"shape": [1, 16, 16], "size": 97},  # 87 training examples: last batch 7 = 4 + 3
    "epochs": 2,
    "batch_size": 16,  # global: 8 per rank
    "optimizer": {"lr": 0.05},
    "device": "cpu",
    "progress": False,
    "measure_latency": False,
}
METHODS: dict[str, list[dict[str, Any]]] = {
    "dense": [],
    "snip": [{"name": "snip", "config": {"sparsity": 0.8}}],
    "wc": [{"name": "wc", "config": {}}],
}
COMPARED = ("test_top1", "test_top5", "test_loss", "val_top1", "val_loss", "train_loss", "params_nonzero")


def ddp_configs() -> dict[str, RunConfig]:
    configs = {name: RunConfig(**BASE, methods=methods) for name, methods in METHODS.items()}
    configs["dense, data on device"] = RunConfig(**BASE, data_on_device=True)  # each rank gathers its slice
    return configs


# -- unit tests (no process group) ---------------------------------------------------------------------


def test_shard_range_partitions_contiguously() -> None:
    for n in (0, 1, 5, 7, 16):
        for world in (1, 2, 3):
            parts = [shard_range(n, r, world) for r in range(world)]
            assert [i for part in parts for i in part] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sharded_batches_are_slices_of_the_single_process_batches() -> None:
    from cnnkit.bench.trainer import _loader

    data = TensorDataset(torch.arange(23.0)[:, None], torch.arange(23))
    cfg = RunConfig(num_workers=0)
    reference = [
        y.tolist()
        for _, y in DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))
    ]
    single = [y.tolist() for _, y in _loader(data, cfg, shuffle=True, seed=5, batch_size=8)]
    assert single == reference  # the spelled-out loader is torch's DataLoader(shuffle=True), batch for batch
    world = 3  # batches of 8, 8, 7 -> slices 3/3/2, 3/3/2, 3/2/2
    shards = [
        [y.tolist() for _, y in _loader(data, cfg, shuffle=True, seed=5, batch_size=8, shard=info)]
        for info in (distributed.DistInfo(rank=r, world_size=world, local_rank=r) for r in range(world))
    ]
    assert [[i for s in shards for i in s[t]] for t in range(3)] == reference
    # a last global batch smaller than the world (here 2 < 3) is skipped on every rank
    sampler = ShardedBatchSampler(BatchSampler(SequentialSampler(range(10)), 8, False), 1, 3)
    assert list(sampler) == [[3, 4, 5]] and len(sampler) == 1


def test_without_torchrun_there_is_no_process_group(monkeypatch: pytest.MonkeyPatch, registries: Any) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not distributed.launched_by_torchrun() and distributed.init_from_env("cpu") is None
    from cnnkit.bench.trainer import Trainer

    trainer = Trainer(RunConfig(**BASE))
    assert trainer.dist is None and not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: still no process group
    assert distributed.init_from_env("cpu") is None and not torch.distributed.is_initialized()
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0] and distributed.broadcast_object("x") == "x"


# -- the DDP run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Both ranks' results of a 2-process torchrun (gloo) of this file."""
    from cnnkit.core.plugins import get_registries, reset_registries

    reset_registries()
    missing = {"snip", "wc"} - set(get_registries().methods.names())
    if missing:
        pytest.skip(f"needs cnnkit-pruning and cnnkit-regularizers ({sorted(missing)} not installed)")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNKIT_STRICT_PLUGINS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "2", __file__, str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ddp_configs()))
def test_ddp_matches_single_process(
    name: str, ddp_results: tuple[Path, list[dict[str, Any]]], registries: Any
) -> None:
    from cnnkit.bench.trainer import Trainer

    _, ranks = ddp_results
    single = Trainer(ddp_configs()[name])
    metrics = single.fit()
    reference = single.model.state_dict()
    for rank, results in enumerate(ranks):
        got = results[name]
        assert got["agreed"], f"rank {rank}: masks/weights differed across ranks before DDP's broadcast"
        assert got["metrics"]["world_size"] == 2 and metrics["world_size"] == 1
        assert got["metrics"]["steps"] == metrics["steps"] == 12  # 6 global batches x 2 epochs
        for key in COMPARED:
            assert got["metrics"][key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-5), (name, key)
        assert set(got["state"]) == set(reference)
        for key, value in reference.items():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    for key, value in ranks[0][name]["state"].items():  # the replicas are bitwise identical
        assert torch.equal(value, ranks[1][name]["state"][key]), key
    if name == "snip":
        masks = [k for k in reference if k.endswith(".mask")]
        assert masks and all(torch.equal(ranks[1][name]["state"][k], reference[k]) for k in masks)
        assert metrics["sparsity"] > 0.5


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_store_on_rank_0_only(ddp_results: tuple[Path, Any]) -> None:
    from cnnkit.bench.results import ResultStore

    out, _ = ddp_results
    assert not (out / "rank1-touched-sqlite").exists()
    records = ResultStore(out / "store" / "results.sqlite").records()
    assert [r.status for r in records] == ["done"], [r.error for r in records]
    assert records[0].metrics["world_size"] == 2 and records[0].metrics["steps"] == 12
    assert records[0].key == RunConfig(**BASE).key()  # the key does not depend on the number of ranks
    assert records[0].finished is not None and records[0].finished > records[0].started


@pytest.mark.slow
def test_ddp_run_resumes_exactly(ddp_results: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = ddp_results
    for results in ranks:  # stopped after epoch 1, resumed from rank 0's checkpoint by every rank
        resumed, straight = results["resumed"], results["dense"]
        assert resumed["metrics"]["steps"] == straight["metrics"]["steps"]
        for key in COMPARED:
            assert resumed["metrics"][key] == straight["metrics"][key], key
        assert all(torch.equal(v, straight["state"][k]) for k, v in resumed["state"].items())


# -- torchrun worker ----------------------------------------------------------------------------------


class _Stopped(Exception):
    pass


def _resumed_run(out: Path) -> dict[str, Any]:
    """The dense DDP run, stopped after its first epoch and resumed by a fresh trainer."""
    from cnnkit.bench.trainer import Trainer

    class StopAfterOneEpoch(Trainer):
        def _train_epoch(self) -> None:
            if self.state.epoch >= 1:
                raise _Stopped
            super()._train_epoch()

    cfg = ddp_configs()["dense"]
    with pytest.raises(_Stopped):
        StopAfterOneEpoch(cfg, out / "resume").fit()
    trainer = Trainer(cfg, out / "resume")
    metrics = trainer.fit()
    return {
        "metrics": metrics,
        "state": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    }


def _worker(out: Path) -> None:
    import sqlite3

    from cnnkit.bench.cli import main
    from cnnkit.bench.trainer import Trainer

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name, cfg in ddp_configs().items():
        trainer = Trainer(cfg)
        metrics = trainer.fit()
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        results[name] = {"metrics": metrics, "state": state, "agreed": trainer.replicas_agreed_at_wrap}
    results["resumed"] = _resumed_run(out)
    torch.save(results, out / f"rank{rank}.pt")
    if rank > 0:

        def forbidden(*args: Any, **kwargs: Any) -> Any:
            (out / f"rank{rank}-touched-sqlite").touch()
            raise AssertionError("ranks > 0 must not open the results store")

        sqlite3.connect = forbidden
    config = out / "run.yaml"
    if rank == 0:
        config.write_text(yaml.safe_dump(BASE))
    torch.distributed.barrier()
    for attempt in ("trains", "reuses"):  # the second time rank 0 finds the run done and every rank skips it
        code = main(["run", str(config), "--store", str(out / "store")])
        if code != 0:
            raise SystemExit(f"rank {rank}: cnnkit run exited with {code} when it {attempt}")
    distributed.shutdown()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
