"""Where a sweep's runs execute: here, one after another (``local``, the default), or as Ray tasks (``ray``).

Both executors share the resume rules (:func:`needs_run`) and the outcome of one run (:func:`run_one`), so a
sweep behaves the same whichever executes it: runs ``done`` or ``skipped`` in the store are reused, the
others (``failed``, ``running`` = killed, new) run, and a failed run is recorded and never stops the sweep.

Ray (``cnnkit sweep CONFIG --executor ray [--address ADDR]``, extra ``cnnkit-bench[ray]``):

* one Ray task per pending run, with ``num_cpus=cpus_per_run`` and ``num_gpus=gpus_per_run`` (Ray places and
  queues them; we write no scheduler). ``--address`` connects to a running cluster (``ray start --head`` on
  one node, ``ray start --address=HEAD:6379`` on the others, or ``auto``); without it ``ray.init()`` starts a
  local instance (``num_cpus`` caps it) that is shut down at the end.
* Store [choice]: the **driver** is the only process that opens the SQLite store; each task returns its
  metrics, its error and its worker's environment, and the driver writes them as they arrive. So the store
  needs no shared filesystem and SQLite is never written over NFS. A run is marked ``running`` when it is
  submitted.
* Checkpoints go to ``STORE/runs/<key>/`` *as seen by the worker*: with the store on a filesystem every
  node shares, a killed sweep's unfinished runs resume from their last epoch (as locally); otherwise they
  restart from scratch on whichever node gets them (results are the same, only time is lost).
* A task that raises, or whose worker dies (out of memory, node lost), is recorded as ``failed`` with the
  error; the other tasks go on. ``max_retries=0``: rerunning failed runs is the next sweep's decision
  (``--skip-failed`` keeps them). Ctrl-C cancels the queued tasks and leaves them ``running``: unfinished,
  so the next sweep resumes them (as after a kill), with or without ``--skip-failed``.
* Every worker needs the same Python environment (cnnkit and its plugins installed); Ray sets
  ``CUDA_VISIBLE_DEVICES`` for GPU tasks and ``OMP_NUM_THREADS`` from ``num_cpus``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnkit.bench.runconfig import RunConfig
from cnnkit.core.config import ConfigError
from cnnkit.core.registry import UnknownNameError

__all__ = ["Outcome", "needs_run", "record", "run_local", "run_one", "run_ray"]

Status = Literal["ran", "skipped", "failed"]


@dataclass
class Outcome:
    """What one run came to: ``ran`` (with metrics), ``skipped`` (method not applicable) or ``failed``."""

    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    environment: dict[str, Any] | None = None


def needs_run(store: Any, key: str, *, retry_failed: bool = True) -> bool:
    """Resume rule: not ``done``/``skipped``, and not ``failed`` when failed runs are not retried."""
    if store.is_done(key):
        return False
    record = store.get(key)
    return retry_failed or record is None or record.status != "failed"


def label(cfg: RunConfig) -> str:
    return f"{cfg.model} / {cfg.dataset} / {cfg.method_label()} / seed {cfg.seed}"


def run_one(cfg: RunConfig, run_dir: Path) -> Outcome:
    """Train ``cfg`` (checkpoints in ``run_dir``) and say how it ended; only ``KeyboardInterrupt`` escapes."""
    from cnnkit.bench.trainer import RunFailed, run
    from cnnkit.core.method import MethodNotApplicableError

    try:
        return Outcome("ran", metrics=run(cfg, run_dir))
    except MethodNotApplicableError as exc:
        return Outcome("skipped", error=str(exc))
    except (RunFailed, ConfigError, UnknownNameError) as exc:
        return Outcome("failed", error=str(exc))
    except Exception as exc:  # a bug in a method or model must not lose the sweep's other runs
        return Outcome("failed", error="".join(traceback.format_exception(exc)))


def record(store: Any, key: str, outcome: Outcome, *, verbose: bool = True) -> None:
    """Write ``outcome`` to the store and say it on stderr."""
    if outcome.status == "ran":
        store.finish(key, outcome.metrics, outcome.environment)
        message = f"test top-1 {outcome.metrics['test_top1']:.2f} %"
    elif outcome.status == "skipped":
        store.skip(key, outcome.error, outcome.environment)
        message = f"skipped: {outcome.error}"
    else:
        store.fail(key, outcome.error, environment=outcome.environment)
        message = f"failed: {outcome.error.strip().splitlines()[-1] if outcome.error.strip() else '?'}"
    if verbose:
        print(f"  {key}: {message}", file=sys.stderr)


def run_local(cfg: RunConfig, key: str, store: Any, runs_dir: Path, *, verbose: bool = True) -> Status:
    """One run in this process (under torchrun: in every rank; the store is rank 0's).

    Ctrl-C (``KeyboardInterrupt``) propagates and leaves the run ``running`` with its last checkpoint: it is
    unfinished, not failed, so the next ``run``/``sweep`` resumes it (as after a kill).
    """
    outcome = run_one(cfg, runs_dir / key)
    record(store, key, outcome, verbose=verbose)
    return outcome.status


# -- Ray ------------------------------------------------------------------------------------------------


def _ray_task(config: dict[str, Any], key: str, run_dir: str, threads: int) -> Outcome:
    """Body of one Ray task (runs on a worker)."""
    import torch

    from cnnkit.bench.trainer import environment

    torch.set_num_threads(max(1, threads))
    cfg = RunConfig.model_validate(config)
    if cfg.key() != key:  # the config must mean the same on the worker (same cnnkit version)
        return Outcome("failed", error=f"config key changed on the worker ({key} -> {cfg.key()})")
    outcome = run_one(cfg, Path(run_dir))
    outcome.environment = {**environment(), "executor": "ray"}
    return outcome


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "sweep", [("--executor", "'ray' needs Ray: pip install 'cnnkit-bench[ray]'")]
        ) from None
    return ray


def run_ray(
    configs: Sequence[RunConfig],
    store: Any,
    runs_dir: Path,
    *,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    num_cpus: int | None = None,
) -> dict[Status, int]:
    """Run ``configs`` (already filtered by :func:`needs_run`) as Ray tasks; returns counts per status.

    Args:
        configs: the runs to do.
        store: the results store; only this (the driver) process writes it.
        runs_dir: checkpoint folder root (``runs_dir/<key>``), as seen by the workers.
        address: a Ray cluster's address (``auto``, ``HOST:6379``, ``ray://HOST:10001``); ``None`` starts a
            local Ray instance for this sweep.
        cpus_per_run, gpus_per_run: each task's Ray resources (fractions allowed).
        num_cpus: CPUs of the local instance (ignored with ``address``).
    """
    ray = _import_ray()
    counts: dict[Status, int] = {"ran": 0, "skipped": 0, "failed": 0}
    if not configs:
        return counts
    started_here = not ray.is_initialized()
    if started_here:
        local = {"num_cpus": num_cpus, "include_dashboard": False} if address is None else {}
        ray.init(address=address, **local)
    task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
    threads = max(1, int(cpus_per_run))
    pending: dict[Any, RunConfig] = {}
    try:
        for cfg in configs:
            key = cfg.key()
            store.start(key, cfg.model_dump(mode="json"), {"executor": "ray", "submitted": time.time()})
            pending[task.remote(cfg.model_dump(mode="json"), key, str(runs_dir / key), threads)] = cfg
            print(f"submitted {key}: {label(cfg)}", file=sys.stderr)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cfg = pending.pop(ref)
                outcome = _result(ray, ref)
                record(store, cfg.key(), outcome)
                counts[outcome.status] += 1
    except KeyboardInterrupt:  # cancelled runs stay ``running``: the next sweep resumes them
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
    return counts


def _result(ray: Any, ref: Any) -> Outcome:
    """The task's outcome; a task that raised or whose worker died is a failed run."""
    try:
        outcome = ray.get(ref)
    except Exception as exc:  # RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
        return Outcome("failed", error=f"{type(exc).__name__}: {exc}")
    if not isinstance(outcome, Outcome):
        return Outcome("failed", error=f"unexpected task result {outcome!r}")
    return outcome
