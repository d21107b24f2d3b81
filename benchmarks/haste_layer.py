"""HASTE microbenchmark: one 3x3 conv, dense vs HASTE's ``compressed`` path, at each ResNet-18 stage shape.

For each stage shape (C = O channels, H x W map: 64@32, 128@16, 256@8, 512@4; with ``--imagenet`` the
shapes at 224x224 input, 64@56, 128@28, 256@14, 512@7; stride 1, padding 1), each
bucket fraction b/C of ``--fractions`` and each patch of ``--patches`` (an integer P, or ``image``: P >= the
map, one tile per image, i.e. per-image hashing and one real reduced-depth conv per image), the script times

* the dense conv (``F.conv2d``, PyTorch's default backend) and
* the :class:`~cnnkit.efficiency.haste.HASTEConv2d` in ``compressed`` mode (hashing, merging and the
  reduced conv all included), with each ``kernel`` of ``--kernels``: ``torch`` (PyTorch ops) and
  ``native`` (the C kernel of ``cnnkit.efficiency._haste_native`` for the per-image bucketing and merges;
  the tile path has no native kernel)

at batch 1 and ``--batch``, interleaved (``--repeats`` pairs, medians), with ``torch.utils.benchmark`` and,
with ``--threads 1`` (the default), the process's CPU time as the clock (other jobs on a shared machine do
not inflate it). The bucket fraction is controlled exactly: the input has ``round(f·C)`` distinct post-ReLU
random channels, each repeated (channels shuffled), and L = 20 hyperplanes separate the distinct ones, so
HASTE merges exactly the duplicates. Each measurement runs ``--stack`` distinct convs of the
shape one after another and reports the time per conv: inside a network each layer's weights come from
memory, not from the cache (six 512-channel 3x3 convs hold 57 MB), and both the dense conv and HASTE's
filter merge read all of them. The table gives the speed-up (dense time / HASTE time) and the measured
buckets per channel. The first line names the machine (benchmarks/_machine.py).

    python benchmarks/haste_layer.py
    python benchmarks/haste_layer.py --fractions 0.3,0.5 --patches 4,8,image --batch 32
    python benchmarks/haste_layer.py --stages 3,4 --fractions 0.1,0.2,0.4 --patches image
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from _machine import describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from torch import nn

from cnnkit.efficiency.haste import HASTEConv2d

STAGES = ((64, 32), (128, 16), (256, 8), (512, 4))
IMAGENET_STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18/34 at 224x224


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fractions", default="0.25,0.4,0.6", help="bucket fractions b/C")
    parser.add_argument("--patches", default="4,image", help="patch sizes P (integers or 'image')")
    parser.add_argument("--stages", default="1,2,3,4", help="ResNet-18 stages (1: 64@32 ... 4: 512@4)")
    parser.add_argument(
        "--imagenet", action="store_true", help="the stage shapes at 224x224 input (64@56 ... 512@7)"
    )
    parser.add_argument("--batch", type=int, default=32, help="the larger batch (batch 1 is always timed)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved dense/HASTE measurement pairs")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--kernels", default="torch,native", help="HASTE kernels to time (torch, native, auto)"
    )
    parser.add_argument(
        "--stack", type=int, default=6, help="distinct convs per measurement (weights out of cache)"
    )
    return parser.parse_args()


def duplicated_input(n: int, c: int, h: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """``(n, c, h, h)`` post-ReLU input with ``round(fraction·c)`` distinct channels per image."""
    gen = torch.Generator().manual_seed(seed)
    distinct = max(1, round(fraction * c))
    base = torch.relu(torch.randn(n, distinct, h, h, generator=gen))
    source = torch.cat([torch.arange(distinct), torch.randint(0, distinct, (c - distinct,), generator=gen)])
    source = source[torch.randperm(c, generator=gen)]
    return base[:, source].contiguous()


def seconds(stmt: str, env: dict[str, Any], args: argparse.Namespace, clock: Any) -> float:
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt, globals=env, timer=clock)
    with torch.no_grad():
        return float(timer.blocked_autorange(min_run_time=args.min_run_time).median)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(torch.device("cpu")), flush=True)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    kernels = args.kernels.split(",")
    print(
        f"clock: {'process CPU time (1 thread)' if args.threads == 1 else 'wall'}; L = 20, s = 2/3; "
        f"{args.stack} distinct convs per measurement; kernels: {', '.join(kernels)}"
    )
    shapes = IMAGENET_STAGES if args.imagenet else STAGES
    stages = [shapes[int(s) - 1] for s in args.stages.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    ms = " | ".join(f"HASTE {k} ms" for k in kernels)
    ups = " | ".join(f"speed-up {k}" for k in kernels)
    print(
        f"\n| stage | C@HxW | patch | b/C | batch | dense ms | {ms} | {ups} | ideal (C/b) |\n"
        + "|---" * (7 + 2 * len(kernels))
        + "|"
    )
    for c, h in stages:
        torch.manual_seed(0)
        convs = [nn.Conv2d(c, c, 3, padding=1, bias=False).eval() for _ in range(args.stack)]
        stage = shapes.index((c, h)) + 1
        for name in args.patches.split(","):
            patch = max(h, 1) if name == "image" else int(name)
            layers = {k: [haste_layer(conv, patch, k) for conv in convs] for k in kernels}
            for fraction in fractions:
                for batch in (1, args.batch):
                    x = duplicated_input(batch, c, h, fraction)
                    print(table_row(stage, c, h, name, x, convs, layers, args, clock), flush=True)


def haste_layer(conv: nn.Conv2d, patch: int, kernel: str) -> HASTEConv2d:
    return HASTEConv2d(conv, hyperplanes=20, patch=patch, mode="compressed", kernel=kernel).eval()  # type: ignore[arg-type]


def table_row(
    stage: int,
    c: int,
    h: int,
    patch: str,
    x: torch.Tensor,
    convs: list[nn.Conv2d],
    layers: dict[str, list[HASTEConv2d]],
    args: argparse.Namespace,
    clock: Any,
) -> str:
    """Time the dense stack and each kernel's HASTE stack, interleaved; one Markdown row."""
    env: dict[str, Any] = {"F": F, "x": x, "weights": [conv.weight for conv in convs], "layers": layers}
    times: dict[str, list[float]] = {"dense": [], **{k: [] for k in layers}}
    for _ in range(args.repeats):
        times["dense"].append(seconds("for w in weights: F.conv2d(x, w, None, 1, 1)", env, args, clock))
        for k in layers:
            times[k].append(seconds(f"for layer in layers[{k!r}]: layer(x)", env, args, clock))
    median = {k: statistics.median(v) / len(convs) for k, v in times.items()}
    first = next(iter(layers.values()))[0]
    first.reset_tally()
    with torch.no_grad():
        first(x)
    buckets = first.tally.bucket_fraction / first.tally.tiles
    hastes = " | ".join(f"{1e3 * median[k]:.3f}" for k in layers)
    ups = " | ".join(f"{median['dense'] / median[k]:.2f}x" for k in layers)
    return (
        f"| {stage} | {c}@{h}x{h} | {patch} | {buckets:.3f} | {x.shape[0]} | {1e3 * median['dense']:.3f} | "
        f"{hastes} | {ups} | {1 / buckets:.2f}x |"
    )


if __name__ == "__main__":
    main()
