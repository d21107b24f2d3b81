"""Training with the data held on the device vs loaded by workers: the same run, measured side by side.

Two contenders, one ``RunConfig`` that differs only in ``data_on_device``:

- **loader**: the trainer's default: every image decoded and augmented (PIL crop and flip) in ``DataLoader``
  workers (``--num-workers``; 0 = in the training process), every epoch;
- **on device**: ``data_on_device=True``: every split read once onto the device
  (:mod:`cnnkit.bench.data.on_device`), each batch cropped and flipped there by one gather.

Three figures per contender, each the median of ``--repeats`` measurements taken in ABBA order (so drift in
the machine's load is shared):

1. **data alone**: batches per second of the trainer's training batch stream over ``--steps`` batches,
   with no model: what a fast GPU waits for (the loader's figure includes starting its workers, which the
   trainer does once per epoch: over a few steps this weighs more than over a whole epoch);
2. **training**: the trainer's own training samples per second (its clock covers the training steps only)
   over one epoch of ``--steps`` steps, protocol ``last``;
3. **setup**: the trainer's setup (datasets, model, methods), which for ``on device`` includes reading every
   split once: the one-time price.

The ratios ``on device / loader`` are printed last. The first line names the machine.

    python benchmarks/data_on_device.py                                # CIFAR-10 JPEG, ResNet-18, CPU
    python benchmarks/data_on_device.py --device cuda --num-workers 12 --steps 200
    python benchmarks/data_on_device.py --dataset fashion_mnist_mini --model lenet5_caffe   # no data root
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _machine import describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)

from cnnkit.bench.runconfig import RunConfig
from cnnkit.bench.trainer import Trainer, resolve_device

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("loader", "on device")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18", help="bench model (default: CIFAR ResNet-18)")
    parser.add_argument("--dataset", default="cifar10_jpeg", help="bench dataset (default: cifar10_jpeg)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed batches / training steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0, help="the loader contender's workers")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser.parse_args()


def make_config(args: argparse.Namespace, *, on_device: bool) -> RunConfig:
    return RunConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=1,
        batch_size=args.batch_size,
        max_steps_per_epoch=args.steps,
        protocol="last",
        device=args.device,
        measure_latency=False,
        progress=False,
        num_workers=args.num_workers,
        data_on_device=on_device,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_data(cfg: RunConfig) -> tuple[float, float]:
    """(setup seconds, training batches per second with no model) of one fresh trainer."""
    trainer = Trainer(cfg)
    started = time.perf_counter()
    trainer._setup()
    setup = time.perf_counter() - started
    started = time.perf_counter()
    count = sum(1 for _ in trainer._batches())  # the trainer's epoch: --steps batches
    _sync(trainer.device)
    return setup, count / (time.perf_counter() - started)


def measure_training(cfg: RunConfig) -> float:
    """The trainer's training samples per second over one epoch of ``--steps`` steps (its own clock, which
    covers the steps only; the final test evaluation of ``fit`` is skipped: it would dominate on a CPU)."""
    trainer = Trainer(cfg)
    trainer._setup()
    trainer._train_epoch()
    return trainer.state.train_samples / trainer.state.train_seconds


def abba(repeats: int) -> list[int]:
    """Contender order 0 1 1 0 0 1 1 0 ...: ``repeats`` measurements of each."""
    return [(i // 2 + i) % 2 for i in range(2 * repeats)]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(describe_machine(device))
    configs = [make_config(args, on_device=flag) for flag in (False, True)]
    measure_data(configs[0]), measure_data(configs[1])  # warm-up: imports, caches, extraction
    setups: list[list[float]] = [[], []]
    rates: list[list[float]] = [[], []]
    trains: list[list[float]] = [[], []]
    for who in abba(args.repeats):
        setup, rate = measure_data(configs[who])
        setups[who].append(setup)
        rates[who].append(rate)
    for who in abba(args.repeats):
        trains[who].append(measure_training(configs[who]))
    print(
        f"\n{args.model} on {args.dataset}, batch {args.batch_size}, {args.steps} steps, device {device}, "
        f"loader workers {args.num_workers}; medians of {args.repeats}\n"
    )
    print("| contender | data alone (batches/s) | training (samples/s) | setup (s) |")
    print("|---|---|---|---|")
    medians = []
    for who, name in enumerate(CONTENDERS):
        row = [statistics.median(v[who]) for v in (rates, trains, setups)]
        medians.append(row)
        print(f"| {name} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.2f} |")
    (rate_l, train_l, setup_l), (rate_d, train_d, setup_d) = medians
    print(
        f"\non device / loader: data alone {rate_d / rate_l:.2f}x, training {train_d / train_l:.2f}x, "
        f"setup {setup_d - setup_l:+.2f} s"
    )


if __name__ == "__main__":
    main()
