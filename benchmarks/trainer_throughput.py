"""Trainer throughput vs a hand-written PyTorch loop on the same model and data, measured in one process.

What is measured: training samples per second over the training steps of one epoch capped at ``--steps``
steps, for two contenders that do the same work:

- **trainer**: ``cnnkit.bench.trainer.Trainer(cfg).fit()`` (no methods, ``epochs=1``,
  ``max_steps_per_epoch=--steps``, protocol ``last``, no progress bar, no latency measurement); the number
  read is the trainer's own ``train_samples_per_s`` (samples / seconds spent in the training steps,
  evaluation and setup excluded).
- **hand-written**: a plain PyTorch loop written here: the model from the registry with the same seed,
  the same training dataset object (``build_datasets(cfg)["train"]``), a ``DataLoader`` with the same batch
  size, shuffle generator seed and ``num_workers``; SGD with the same lr / momentum 0.9 / no Nesterov /
  weight decay 5e-4; a per-step cosine ``LambdaLR`` like the trainer's; cross-entropy; ``model.train()``.
  On CUDA it uses the trainer's bfloat16 autocast and channels_last model and inputs. The loop does not
  synchronise per step (no ``loss.item()``); CUDA is synchronised once at the end. It loads exactly the
  batches it trains on (``itertools.islice``). Its timed region is the trainer's: from creating the loader
  to the last optimizer/scheduler step.

Both contenders build a fresh model, optimizer and loader per measurement (setup is not timed), and both
run under the same ``torch.use_deterministic_algorithms`` setting: the trainer's rule (on when
``deterministic`` and CUDA is not available) is applied to the hand-written loop too; ``--no-deterministic``
turns it off for both. One warm-up run of each is discarded (imports, allocator, lazy initialisation); the
warm-up also checks that both contenders trained identically (same mean training loss). Then the
contenders alternate ``--repeats`` times (ABBA order, so drift in machine load is shared) and the ratio of
the medians, ``trainer / hand-written``, is printed as the last line. Goal: >= 0.97.

The learning rate (``--lr``, default 0.01) does not change the work per step; too high a value makes the
trainer stop on a non-finite loss. ``--profile`` adds a cProfile of the training steps of one extra trainer
run (setup and evaluation excluded). Run ``python benchmarks/trainer_throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _machine import (  # benchmarks/_machine.py (the script's folder is on sys.path)
    describe_machine,
    load_average,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnkit.bench.runconfig import RunConfig
from cnnkit.bench.sweep import make_run_config
from cnnkit.bench.trainer import (
    RunFailed,
    Trainer,
    build_datasets,
    build_model,
    resolve_device,
    seed_everything,
)

GOAL = 0.97
#: max/min of one contender's measurements above which the report warns of a noisy machine.
NOISY_SPREAD = 1.10
#: (batch size, steps) when not given: small on CPU (a shared 2-core machine finishes in minutes),
#: longer on CUDA, where 30 steps would last a fraction of a second.
DEFAULTS = {"cpu": (64, 30), "cuda": (128, 200)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="model registry name (default resnet20)")
    parser.add_argument("--dataset", default="synthetic", help="dataset registry name (default synthetic)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 128 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 30 on CPU, 200 on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per contender (default 3)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--lr", type=float, default=0.01, help="any value that keeps the loss finite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-deterministic", action="store_true", help="run both without deterministic algorithms"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is steadier when shared",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one trainer run's steps")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace, device: torch.device) -> RunConfig:
    batch_size, steps = DEFAULTS[device.type]
    batch_size = args.batch_size or batch_size
    steps = args.steps or steps
    # synthetic data has 256 items by default: make it exactly large enough for `steps` full batches
    dataset_args = {"size": batch_size * steps} if args.dataset == "synthetic" else {}
    return make_run_config(
        {
            "model": args.model,
            "dataset": args.dataset,
            "dataset_args": dataset_args,
            "seed": args.seed,
            "epochs": 1,
            "batch_size": batch_size,
            "max_steps_per_epoch": steps,
            "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "nesterov": False},
            "schedule": {"name": "cosine"},
            "protocol": "last",
            "device": device.type,
            "deterministic": not args.no_deterministic,
            "measure_latency": False,
            "progress": False,
        }
    )


def planned_steps(cfg: RunConfig, train: Dataset[Any]) -> int:
    """The trainer's steps per epoch: one per batch, capped by ``max_steps_per_epoch``."""
    steps = math.ceil(len(train) / cfg.batch_size)  # type: ignore[arg-type]
    return steps if cfg.max_steps_per_epoch is None else min(steps, cfg.max_steps_per_epoch)


def deterministic_setting(cfg: RunConfig) -> bool:
    """The trainer's rule (``Trainer.fit``): deterministic algorithms when asked and CUDA is absent."""
    return cfg.deterministic and not torch.cuda.is_available()


# -- contenders ------------------------------------------------------------------------------------------
def time_trainer(cfg: RunConfig) -> float:
    """Samples/s of the trainer's training steps, as it reports them."""
    return float(Trainer(cfg).fit()["train_samples_per_s"])


def cosine_factor(total_steps: int) -> Callable[[int], float]:
    """The trainer's per-step cosine schedule with no warm-up: 1 at step 0, annealed to 0."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))


def hand_loop(cfg: RunConfig, *, track_loss: bool = False) -> tuple[float, float | None]:
    """Samples/s of the hand-written loop, and its mean training loss when ``track_loss`` (which syncs
    every step, so it is used only in the warm-up)."""
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        if deterministic_setting(cfg):
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _hand_loop(cfg, track_loss=track_loss)
    finally:
        torch.use_deterministic_algorithms(previous)


def _hand_loop(cfg: RunConfig, *, track_loss: bool) -> tuple[float, float | None]:
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    channels_last = cuda and cfg.channels_last
    seed_everything(cfg.seed)
    train = build_datasets(cfg)["train"]
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = cfg.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=opt.lr,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
    )
    steps = planned_steps(cfg, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(steps))
    model.train()
    samples, loss_sum = 0, 0.0
    started = time.perf_counter()
    loader = DataLoader(
        train,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed * 100_003),  # the trainer's seed for epoch 0
        num_workers=cfg.num_workers,
    )
    for x, y in itertools.islice(loader, steps):  # loads exactly `steps` batches
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        samples += len(y)
        if track_loss:
            loss_sum += float(loss.detach()) * len(y)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return samples / seconds, (loss_sum / samples if track_loss else None)


# -- measurement ------------------------------------------------------------------------------------------
def warm_up(cfg: RunConfig) -> None:
    """One discarded run of each; checks that both trained the same model on the same batches."""
    trainer_loss = Trainer(cfg).fit()["train_loss"]
    _, hand_loss = hand_loop(cfg, track_loss=True)
    assert hand_loss is not None
    same = math.isclose(trainer_loss, hand_loss, rel_tol=1e-4 if cfg.device == "cpu" else 2e-2)
    verdict = "same training" if same else "WARNING: the contenders trained differently"
    print(f"warm-up: mean train loss trainer {trainer_loss:.6f}, hand-written {hand_loss:.6f} ({verdict})")


def measure(cfg: RunConfig, repeats: int) -> dict[str, list[float]]:
    """Alternate the contenders (ABBA order) and return samples/s per contender."""
    contenders: dict[str, Callable[[], float]] = {
        "trainer": lambda: time_trainer(cfg),
        "hand-written": lambda: hand_loop(cfg)[0],
    }
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
        for name in order:
            gc.collect()
            results[name].append(contenders[name]())
            print(
                f"  repeat {repeat + 1}/{repeats}  {name:<12} {results[name][-1]:9.1f} samples/s", flush=True
            )
    return results


class _ProfiledTrainer(Trainer):
    """A trainer whose training epochs (the timed part) run under ``profiler``."""

    profiler = cProfile.Profile()

    def _train_epoch(self) -> None:
        self.profiler.enable()
        try:
            super()._train_epoch()
        finally:
            self.profiler.disable()


def profile_trainer(cfg: RunConfig, top: int = 25) -> None:
    _ProfiledTrainer(cfg).fit()
    print(f"\ncProfile of the training steps of one trainer run (top {top} by own time):")
    pstats.Stats(_ProfiledTrainer.profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


# -- report ----------------------------------------------------------------------------------------------
def describe_run(cfg: RunConfig, steps: int, device: torch.device) -> str:
    cuda = device.type == "cuda"
    precision = f"bf16 autocast={cfg.amp}, channels_last={cfg.channels_last}" if cuda else "fp32"
    data_args = "".join(f" {k}={v}" for k, v in cfg.dataset_args.items())
    asked = cfg.max_steps_per_epoch or steps
    capped = f" (all the dataset has; asked {asked})" if steps < asked else ""
    opt = cfg.optimizer
    return (
        f"run: model {cfg.model}, dataset {cfg.dataset}{data_args}, batch {cfg.batch_size}, "
        f"{steps} steps{capped}, SGD lr {opt.lr} momentum {opt.momentum} "
        f"nesterov {opt.nesterov} wd {opt.weight_decay} + per-step cosine LambdaLR, "
        f"{precision}, num_workers {cfg.num_workers}, "
        f"deterministic algorithms {'on' if deterministic_setting(cfg) else 'off'} (both contenders)"
    )


def report(results: dict[str, list[float]]) -> float:
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, median in medians.items():
        extremes = f"min {min(results[name]):.1f}, max {max(results[name]):.1f}"
        print(f"median {name:<12} {median:9.1f} samples/s  ({extremes})")
    spread = max(max(values) / min(values) for values in results.values())
    if spread > NOISY_SPREAD:
        print(f"note: measurements vary up to {spread - 1:.0%} (busy machine?); rerun with more --repeats")
    ratio = medians["trainer"] / medians["hand-written"]
    print(f"ratio trainer/hand-written: {ratio:.3f} (goal >= {GOAL})")
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = make_config(args, device)
    steps = planned_steps(cfg, build_datasets(cfg)["train"])
    print(describe_machine(device))
    print(describe_run(cfg, steps, device), flush=True)
    try:
        warm_up(cfg)
        results = measure(cfg, args.repeats)
        if args.profile:
            profile_trainer(cfg)
    except RunFailed as exc:
        print(f"the trainer stopped: {exc}; pass a lower --lr (throughput does not depend on it)")
        return 2
    print(f"load average after: {load_average()}")
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
