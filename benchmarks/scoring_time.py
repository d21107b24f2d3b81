"""Scoring time of the pruning-at-init scores (SNIP, GraSP, SynFlow; magnitude for reference) on CPU.

Times ``compute_scores(model, ctx)`` of each pruner of cnnkit-pruning -- the whole scoring step a pruner runs
at ``apply``: the private scoring copy of the model, the score itself, the checks and the normalisation (not
the top-k selection, which is the same for every score) -- on

* the CIFAR ResNet-18 (``cnnkit.bench.models.cifar_resnet:resnet18``, 11.2 M parameters), one training batch
  of ``--cifar-batch`` 32×32 images (SNIP's "one mini-batch", 128 on CIFAR);
* the ImageNet ResNet-50 (bench model ``imagenet_resnet50``, torchvision v1.5, 25.6 M parameters), a batch of
  ``--imagenet-batch`` 224×224 images.

Inputs are random (scoring time does not depend on the pixel values). SynFlow runs ``--rounds`` rounds (the
paper's 100 is slow on ResNet-50: the default is 10; its cost is linear in the rounds, so the table also gives
the time per round). After one untimed training step (warm-up), each score is timed ``--repeats`` times and
the median is printed, side by side with one training step's forward + backward on the same batch (``step``):
the ``x step`` column is the score's time in units of that step, measured in the same run.

    python benchmarks/scoring_time.py                       # both models, 1 thread, SynFlow 10 rounds
    python benchmarks/scoring_time.py --models cifar_resnet18 --rounds 100
    python benchmarks/scoring_time.py --threads 0           # torch's default thread count

One CPU thread is the default because on a shared machine several OpenMP threads are slowed down
unpredictably by other jobs (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _machine import describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from torch import nn

from cnnkit.core.context import Context
from cnnkit.pruning._base import ScoredPruner
from cnnkit.pruning.scores import SNIP, GraSP, Magnitude, SynFlow

MODELS: dict[str, tuple[str, int, int]] = {  # name -> (factory target, input side, classes)
    "cifar_resnet18": ("cnnkit.bench.models.cifar_resnet:resnet18", 32, 10),
    "imagenet_resnet50": ("cnnkit.bench.models.imagenet:imagenet_resnet50", 224, 1000),
}
SCORES = ("magnitude", "snip", "grasp", "synflow")


def build_model(name: str) -> nn.Module:
    import importlib

    target, _, classes = MODELS[name]
    module, attr = target.split(":")
    torch.manual_seed(0)
    model: nn.Module = getattr(importlib.import_module(module), attr)(num_classes=classes)
    return model


def make_pruner(score: str, rounds: int) -> ScoredPruner:
    if score == "magnitude":
        return Magnitude()
    if score == "snip":
        return SNIP()
    if score == "grasp":
        return GraSP()
    return SynFlow(rounds=rounds)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    model.zero_grad(set_to_none=True)


def run_model(name: str, batch: int, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    _, side, classes = MODELS[name]
    model = build_model(name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    ctx = Context(example_input=x, batches=[(x, y)], seed=0)
    train_step(model, x, y)  # warm-up (one-time kernel setup)
    rows = [("step (fwd+bwd)", median_seconds(lambda: train_step(model, x, y), args.repeats), "")]
    for score in args.scores:
        pruner = make_pruner(score, args.rounds)
        seconds = median_seconds(lambda p=pruner: p.compute_scores(model, ctx), args.repeats)  # type: ignore[misc]
        note = f"{args.rounds} rounds, {seconds / args.rounds:.3f} s/round" if score == "synflow" else ""
        rows.append((score, seconds, note))
        print(f"  done: {name} / {score} ({seconds:.2f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--scores", nargs="+", choices=SCORES, default=list(SCORES))
    parser.add_argument("--rounds", type=int, default=10, help="SynFlow rounds (paper: 100)")
    parser.add_argument("--cifar-batch", type=int, default=128, help="scoring batch on CIFAR ResNet-18")
    parser.add_argument("--imagenet-batch", type=int, default=4, help="scoring batch on ImageNet ResNet-50")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per score (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(describe_machine(torch.device("cpu")), flush=True)
    print(
        f"setup: compute_scores on CPU, float32 models, median of {args.repeats}, "
        f"SynFlow {args.rounds} rounds"
    )
    results = {}
    for name in args.models:
        batch = args.cifar_batch if name == "cifar_resnet18" else args.imagenet_batch
        results[name] = (batch, run_model(name, batch, args))
    print()
    header = f"{'model':>17} | {'batch':>5} | {'score':>14} | {'seconds':>8} | {'x step':>7} | notes"
    print(header)
    print("-" * len(header))
    for name, (batch, rows) in results.items():
        step = rows[0][1]
        for score, seconds, note in rows:
            print(f"{name:>17} | {batch:>5} | {score:>14} | {seconds:8.3f} | {seconds / step:7.2f} | {note}")
    print(f"\n{describe_machine(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
