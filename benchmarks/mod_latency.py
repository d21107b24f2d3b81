"""CPU inference latency of ResNet-50 vs the ResNet-MoD models (METHODS.md §7f), side by side in one process.

What is measured: one forward pass (eval mode, ``torch.inference_mode``) on a fixed random batch
(N, 3, 224, 224), N = 1 and 16, timed with ``torch.utils.benchmark.Timer.blocked_autorange`` (the paper's
tool). Contenders: torchvision ResNet-50 (the baseline) and ``cnnkit.efficiency.models`` R50-MoD, R75-MoD
and R86-MoD (``--models`` adds e.g. ``resnet101_mod``; ``--baseline resnet101`` compares with ResNet-101,
as the paper does for R101/R152-MoD). All models are random-init, built once from the same seed.

Interleaving: ``--repeats`` rounds, each ``B m1 B m2 B ... mk B`` (reversed in odd rounds); a model's
speed-up in a round is the mean of its two flanking baseline medians over its own median, so load that
drifts over the run (other jobs on a shared machine) cancels out of every ratio. Reported: params (M),
conv+FC GMACs (``cnnkit.core.cost.count_flops``; the paper's also count BN/ReLU/add, about +0.04 G), the
median latency per batch size over all rounds, the speed-up (median of the per-round ratios, min-max beside
it), the paper's CPU speed-up (i7-10850H, batch not stated: R50-MoD 1.48, R75-MoD 1.25, R86-MoD 1.06 vs
ResNet-50; R101-MoD 1.55, R152-MoD 1.20 vs ResNet-101) and whether the goal (at least the paper's) is met.
The noise floor printed under the table is the median |r - 1| of r = each inner baseline measurement over
the mean of its two neighbours; a verdict within it of the goal is marked ``?``.

``--ops`` adds a per-block breakdown of the MoD-specific work at the shapes of R50-MoD's seven MoD blocks
(selector + top-k, channel gather, reduced block, fusion), comparing gathers (ours: ``index_select`` at
batch 1, else advanced indexing; ``gather`` with broadcast indices; sorting the indices first) and fusions:
the paper's literal ``cat`` of the updated first k channels with the rest, a copy plus an in-place add of the
k channels (``inplace_fusion=False``) and ours, the add into the input itself (no copy). Isolated ops
understate the copy: inside the model each copy also faults in a fresh buffer and evicts the cache, so
compare the whole model with ``--copy-fusion`` too.

``--in-model`` times each MoD block of R50-MoD, its selector and its reduced block inside the model's
forward (by hooks) against alone on the same input (repeated, so with warm caches): inside, the standard
blocks have evicted their weights (the selector's FCs: 2 MB at C = 2048) and their code, so they run slower.

``--bound`` adds an ablation row per MoD model: the model with its MoD blocks replaced by identities, the
speed-up that zero-cost MoD blocks would give on this machine (a ceiling for that model: what is left
above it is the cost of the standard blocks on this CPU, which no MoD implementation can change).

Clock (``--clock``): with one torch thread (the default) the Timer reads the process's CPU time
(``time.process_time``), the forward's own work, which does not count the time other jobs hold the core; with
several threads CPU time would add up the threads' spinning, so ``auto`` then uses wall time. Cache and
memory-bandwidth contention from other jobs still reaches the CPU clock: the interleaving handles that.

Defaults: 1 torch thread (steady on a shared machine, where several spinning OpenMP threads are slowed
several-fold by other jobs; ``--threads 0`` keeps torch's default), 3 rounds, at least 1 s (batch 1) and
4 s (batch 16) of timing per measurement, NCHW (``--channels-last``), the MoD models' default safe fusion
(``--copy-fusion`` builds them with ``inplace_fusion=False``). Ratios measured side by side in one run:
never turn them into a timed unit test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils import benchmark
from torchvision import models as tvm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine

from cnnkit.core.cost import count_flops
from cnnkit.efficiency import models as mod_models
from cnnkit.efficiency.mod import MoDBlock, gather_channels, mod_blocks

#: the paper's CPU speed-ups (Table 7) and the baseline each is measured against
PAPER: dict[str, tuple[float, str]] = {
    "resnet50_mod": (1.48, "resnet50"),
    "resnet75_mod": (1.25, "resnet50"),
    "resnet86_mod": (1.06, "resnet50"),
    "resnet101_mod": (1.55, "resnet101"),
    "resnet152_mod": (1.20, "resnet101"),
}


@dataclass
class Contender:
    name: str
    model: nn.Module
    params: int
    gmacs: float
    times: dict[int, list[float]] = field(default_factory=dict)  # batch -> medians (s) per measurement
    ratios: dict[int, list[float]] = field(default_factory=dict)  # batch -> speed-up per round


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet50_mod", "resnet75_mod", "resnet86_mod"])
    p.add_argument("--baseline", default="resnet50", choices=["resnet50", "resnet101"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.0, help="s of timing per measurement at batch 1")
    p.add_argument("--min-time-large", type=float, default=4.0, help="s per measurement at batch > 1")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    p.add_argument("--copy-fusion", action="store_true", help="MoD models with inplace_fusion=False")
    p.add_argument("--bound", action="store_true", help="add each MoD model with identities as MoD blocks")
    p.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="cpu: process CPU time (with 1 thread: the forward's own work, not the time other jobs hold "
        "the core); auto: cpu with 1 thread, else wall",
    )
    p.add_argument("--ops", action="store_true", help="also time the MoD-specific ops per block")
    p.add_argument(
        "--in-model",
        action="store_true",
        help="also time each MoD block's parts inside R50-MoD's forward vs alone on the same input",
    )
    return p.parse_args(argv)


#: the clock every Timer uses (set in main from --clock)
CLOCK: dict[str, Callable[[], float]] = {"timer": time.perf_counter}


def build(name: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    if name in ("resnet50", "resnet101"):
        model: nn.Module = getattr(tvm, name)()
    else:
        model = getattr(mod_models, name)(**options)
    return model.eval()


BOUND = ", MoD blocks = identity (ceiling)"


def without_mod_blocks(model: nn.Module) -> nn.Module:
    """``model`` with every MoD block replaced by an identity (in place)."""
    for name, _ in mod_blocks(model):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, nn.Identity())
    return model


def measure(model: nn.Module, x: Tensor, min_time: float) -> float:
    timer = benchmark.Timer(
        "model(x)",
        globals={"model": model, "x": x},
        num_threads=torch.get_num_threads(),
        timer=CLOCK["timer"],
    )
    with torch.inference_mode():
        return float(timer.blocked_autorange(min_run_time=min_time).median)


def run_round(
    base: Contender, others: list[Contender], x: Tensor, batch: int, min_time: float, reverse: bool
) -> None:
    order = others[::-1] if reverse else others
    before = measure(base.model, x, min_time)
    base.times[batch].append(before)
    for c in order:
        t = measure(c.model, x, min_time)
        after = measure(base.model, x, min_time)
        base.times[batch].append(after)
        c.times[batch].append(t)
        c.ratios[batch].append((before + after) / 2 / t)
        before = after


def noise_floor(times: list[float]) -> float:
    rel = [abs(times[i] / ((times[i - 1] + times[i + 1]) / 2) - 1) for i in range(1, len(times) - 1)]
    return statistics.median(rel) if rel else float("nan")


def table(base: Contender, others: list[Contender], batches: list[int]) -> list[str]:
    lat = " | ".join(f"ms b{b}" for b in batches)
    spd = " | ".join(f"speed-up b{b} (min-max)" for b in batches)
    lines = [
        f"| model | params (M) | GMACs | {lat} | {spd} | paper CPU | goal met? |",
        "|---" * (5 + 2 * len(batches)) + "|",
    ]
    floors = {b: noise_floor(base.times[b]) for b in batches}
    for c in [base, *others]:
        ms = " | ".join(f"{statistics.median(c.times[b]) * 1e3:.1f}" for b in batches)
        if c is base:
            cells, paper, verdict = " | ".join("1.00" for _ in batches), "-", "-"
        else:
            meds = {b: statistics.median(c.ratios[b]) for b in batches}
            cells = " | ".join(
                f"{meds[b]:.2f} ({min(c.ratios[b]):.2f}-{max(c.ratios[b]):.2f})" for b in batches
            )
            goal, vs = PAPER.get(c.name, (float("nan"), "?"))
            paper = f"{goal:.2f} (vs {vs})" if c.name in PAPER else "-"
            verdict = ", ".join(_verdict(meds[b], goal, floors[b]) + f" b{b}" for b in batches)
            verdict = verdict if c.name in PAPER else "-"
        lines.append(
            f"| {c.name} | {c.params / 1e6:.2f} | {c.gmacs:.2f} | {ms} | {cells} | {paper} | {verdict} |"
        )
    lines.append(
        "noise floor (median |r-1| of the baseline vs its neighbours): "
        + ", ".join(f"b{b} {floors[b] * 100:.1f} %" for b in batches)
    )
    return lines


def _verdict(value: float, goal: float, floor: float) -> str:
    mark = "yes" if value >= goal else "no"
    return mark + ("?" if abs(value - goal) <= goal * floor else "")


# --------------------------------------------------------------------------------------------- --ops


def _time(stmt: Callable[[], object], min_time: float) -> float:
    timer = benchmark.Timer(
        "stmt()", globals={"stmt": stmt}, num_threads=torch.get_num_threads(), timer=CLOCK["timer"]
    )
    with torch.inference_mode():
        return float(timer.blocked_autorange(min_run_time=min_time).median)


def op_breakdown(model: nn.Module, batch: int, min_time: float, channels_last: bool) -> list[str]:
    """Per-forward µs of the MoD-specific ops, summed over the model's MoD blocks at their real shapes."""
    shapes: list[tuple[MoDBlock, tuple[int, ...]]] = []
    hooks = [
        b.register_forward_pre_hook(lambda m, a: shapes.append((m, tuple(a[0].shape))))
        for _, b in mod_blocks(model)
    ]
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    totals: dict[str, float] = {}
    for block, shape in shapes:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn(batch, *shape[1:]).contiguous(memory_format=fmt)
        k = block.k
        with torch.inference_mode():
            _, idx = block.select(x)
            y = block.block(gather_channels(x, idx))
        variants: dict[str, Callable[[], object]] = {
            "selector + top-k": lambda b=block, x=x: b.select(x),  # type: ignore[misc]
            "gather, ours (index_select at b1, else advanced indexing)": lambda x=x, i=idx: gather_channels(
                x, i
            ),  # type: ignore[misc]
            "gather with broadcast indices": lambda x=x, i=idx: x.gather(
                1, i[:, :, None, None].expand(-1, -1, *x.shape[2:])
            ),  # type: ignore[misc]
            "gather after sorting the indices": lambda x=x, i=idx: gather_channels(x, i.sort(1).values),  # type: ignore[misc]
            "reduced block f (k channels)": lambda b=block, x=x, i=idx: b.block(gather_channels(x, i)),  # type: ignore[misc]
            "fusion, paper literal: cat": lambda x=x, y=y, k=k: torch.cat([x[:, :k] + y, x[:, k:]], 1),  # type: ignore[misc]
            "fusion, inplace_fusion=False: clone + add_": lambda x=x, y=y, k=k: x.clone()[:, :k].add_(y),  # type: ignore[misc]
            "fusion, ours (default): add_ into x": lambda b=block, x=x, y=y, i=idx: b.fuse(x, y, i),  # type: ignore[misc]
        }
        for name, fn in variants.items():
            totals[name] = totals.get(name, 0.0) + _time(fn, min_time)
    forward = measure(model, torch.randn(batch, 3, 224, 224), min_time)
    lines = [
        f"MoD-specific ops of {len(shapes)} blocks, batch {batch}: µs per forward (share of the "
        f"{forward * 1e3:.1f} ms forward)",
        "| op | µs | % of forward |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t * 1e6:.0f} | {100 * t / forward:.2f} |" for name, t in totals.items()]
    return lines


def _block_parts(model: nn.Module) -> dict[str, nn.Module]:
    """Each MoD block and its selector and reduced block, by qualified name."""
    parts: dict[str, nn.Module] = {}
    for name, block in mod_blocks(model):
        parts[name] = block
        if block.selector is not None:
            parts[f"{name}.selector"] = block.selector
        parts[f"{name}.block"] = block.block
    return parts


def _inputs_of(model: nn.Module, modules: dict[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    """The input each of ``modules`` gets in one forward of ``model`` on ``x``."""
    seen: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0].clone()))
        for n, m in modules.items()
    ]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _in_model_seconds(
    model: nn.Module, modules: dict[str, nn.Module], x: Tensor, rounds: int
) -> dict[str, float]:
    """Mean seconds (the Timer clock) each of ``modules`` takes inside ``model``'s forward, by hooks."""
    clock = CLOCK["timer"]
    spent = dict.fromkeys(modules, 0.0)
    started: dict[str, float] = {}

    def enter(n: str) -> None:
        started[n] = clock()

    def leave(n: str) -> None:
        spent[n] += clock() - started[n]

    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: enter(n)) for n, m in modules.items()]
    hooks += [m.register_forward_hook(lambda _m, _a, _o, n=n: leave(n)) for n, m in modules.items()]
    with torch.inference_mode():
        model(x)  # warm-up
        spent.update(dict.fromkeys(modules, 0.0))
        for _ in range(rounds):
            model(x)
    for h in hooks:
        h.remove()
    return {n: t / rounds for n, t in spent.items()}


def in_model_breakdown(model: nn.Module, batch: int, min_time: float, rounds: int = 30) -> list[str]:
    """µs of each MoD block's selector, reduced block and whole block inside the model's forward (timed by
    hooks, which add a few µs each) and alone on the same input (repeated, so with warm caches). The gap is
    what the rest of the forward does to them, e.g. evicting their weights (the selector's two FCs hold
    2·C²/r floats: 2 MB at C = 2048), which must then come from memory again."""
    parts = _block_parts(model)
    x = torch.randn(batch, 3, 224, 224)
    inputs = _inputs_of(model, parts, x)
    inside = _in_model_seconds(model, parts, x, rounds)
    lines = [
        f"MoD block parts inside R50-MoD's forward vs alone, batch {batch}: µs",
        "| part | input | weights KB | in the model | alone | in / alone |",
        "|---|---|---|---|---|---|",
    ]
    alone = {n: _time(lambda p=p, i=inputs[n]: p(i), min_time) for n, p in parts.items()}  # type: ignore[misc]
    for name, part in parts.items():
        kb = sum(t.numel() * t.element_size() for t in part.parameters()) / 1024
        lines.append(
            f"| {name} | {'x'.join(map(str, inputs[name].shape[1:]))} | {kb:.0f} | "
            f"{inside[name] * 1e6:.0f} | {alone[name] * 1e6:.0f} | {inside[name] / alone[name]:.2f} |"
        )
    blocks = [n for n, _ in mod_blocks(model)]
    lines.append(
        f"all MoD blocks: {sum(inside[n] for n in blocks) * 1e6:.0f} µs per forward in the model, "
        f"{sum(alone[n] for n in blocks) * 1e6:.0f} µs alone"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = args.clock if args.clock != "auto" else ("cpu" if torch.get_num_threads() == 1 else "wall")
    CLOCK["timer"] = time.process_time if clock == "cpu" else time.perf_counter
    print(describe_machine(torch.device("cpu")))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    contenders = []
    bounds = [m + BOUND for m in args.models if m.endswith("_mod")] if args.bound else []
    for name in [args.baseline, *args.models, *bounds]:
        options = {"inplace_fusion": False} if args.copy_fusion and name.endswith("_mod") else {}
        if name.endswith(BOUND):
            built = without_mod_blocks(build(name.removesuffix(BOUND)))
        else:
            built = build(name, **options)
        model = built.to(memory_format=fmt)
        macs = count_flops(model, torch.zeros(1, 3, 224, 224)).macs
        contenders.append(Contender(name, model, sum(p.numel() for p in model.parameters()), macs / 1e9))
    base, others = contenders[0], contenders[1:]
    for b in args.batches:
        x = torch.randn(b, 3, 224, 224).contiguous(memory_format=fmt)
        for c in contenders:
            c.times[b], c.ratios[b] = [], []
            measure(c.model, x, 0.1)  # warm-up
        min_time = args.min_time if b == 1 else args.min_time_large
        for r in range(args.repeats):
            run_round(base, others, x, b, min_time, reverse=r % 2 == 1)
            print(f"  batch {b}: round {r + 1}/{args.repeats} done", flush=True)
    print(
        f"\nCPU latency at 224x224, {torch.get_num_threads()} thread(s), "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.repeats} interleaved rounds, "
        f"{clock} clock, {'copy' if args.copy_fusion else 'in-place'} fusion"
    )
    print("\n".join(table(base, others, args.batches)))
    r50 = next((c.model for c in others if c.name == "resnet50_mod"), None)
    for b in args.batches if args.ops or args.in_model else []:
        r50 = r50 or build("resnet50_mod")
        if args.ops:
            print("\n" + "\n".join(op_breakdown(r50, b, 0.2, args.channels_last)))
        if args.in_model:
            print("\n" + "\n".join(in_model_breakdown(r50, b, 0.2)))
    print(f"\nafter the run: {describe_machine(torch.device('cpu')).split(', ')[-1]}")


if __name__ == "__main__":
    main()
