"""Training-step time multiplier of each cnnkit regularizer vs the plain CIFAR ResNet-18, in one process.

What is measured: the time of one training step of the CIFAR ResNet-18
(``cnnkit.bench.models.cifar_resnet:resnet18``, 10 classes) on a fixed random batch (N, 3, 32, 32), plain
("baseline") and with each regularizer applied at its default config (the papers' CIFAR placements live in
each method's ``Config``; only ``variant`` is set here): SR, WC, SBN, 1D/2D-SFD and 1D/2D-SWD. A method
the registry does not know, or that fails to import, build or train, is skipped with the reason printed.

One training step is what the bench trainer does: ``before_step``, forward and cross-entropy plus the
method's ``extra_loss`` (through :class:`cnnkit.core.MethodRunner`), backward, ``after_backward``, an SGD
step (momentum 0.9, weight decay 5e-4 on the default group of ``cnnkit.core.build_param_groups``, which
honours the method's own parameter groups; constant lr 0.01, which does not change the work), and
``after_step``, in train mode. On CUDA the forward runs under bfloat16 autocast with a channels_last
model and batch, as in ``cnnkit.bench.trainer``; step times are CUDA-event intervals (no per-step host
synchronisation; one synchronisation per measurement). On CPU each step is timed with ``perf_counter`` and
with the process's CPU time (``time.process_time``). With one torch thread (the CPU default) CPU time is the
step's own work and does not count the time other jobs hold the core, so the multipliers use it
(``--clock auto``); the wall-clock multiplier is printed beside it. With several threads CPU time would add
up the threads' spinning, so ``auto`` then uses wall time.

Every contender (the baseline and one model per method, all built from the same seed and kept for the
whole run) is built and warmed up once (``--warmup`` untimed steps). Then ``--repeats`` rounds time
``--steps`` consecutive steps per measurement, each method between two baseline measurements that it shares
with its neighbours: ``B m1 B m2 B ... mk B``, the methods in reverse order in odd rounds. A method's ratio
in a round is the median of its step times over the mean of the two flanking baseline medians, so load
that drifts over the run (other jobs on a shared machine) cancels out of every ratio.

Reported per method: the median step time (ms) over all its timed steps; the multiplier, the median of its
per-round ratios (their min-max beside it shows the noise); the paper's figure (METHODS.md §2f, 3f, 4f, 5f,
6f: CIFAR ResNet-18 unless marked), the goal, pass/fail, and the parameter overhead vs the baseline from
``cnnkit.core.cost.count_params`` (effective parameters, so WC adds none). The resolution of the run is
printed as a noise floor: the median |r - 1| of r = each baseline measurement over the mean of its two
neighbours (what an unchanged model gets); a verdict whose multiplier lies within it of the goal is marked
``?``. ``--profile`` adds, for each
method above its goal, a torch.profiler comparison of one of its steps with one baseline step: the
operators it calls more often, by self time added, and which cnnkit functions (file and the line of their
``def``, two levels) or which autograd nodes ran them.

On CPU (glibc) the script first makes malloc keep freed memory for reuse (``mallopt``: trim threshold
2 GiB, mmap threshold 32 MiB; ``--default-malloc`` skips this). With glibc's adaptive defaults a batch-128
step spent 5-25 % of its time page-faulting fresh memory, by an amount that depended on each model's heap
history rather than on its method (the baseline 628 ms of 2.8 s in the kernel, a 2D-SFD model 214 ms):
noise of the same size as the overheads measured here.

Defaults: batch 128; on CPU 1 step x 5 rounds, 1 warm-up step and 1 torch thread (a step takes seconds;
one thread is steady on a shared machine, where several spinning OpenMP threads can be slowed several-fold
by other jobs; ``--threads 0`` keeps torch's default); on CUDA 50 steps x 5 rounds, 10 warm-up steps.
These are ratios measured side by side in one run: never turn them into a timed unit test.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from _machine import (  # benchmarks/_machine.py (the script's folder is on sys.path)
    describe_machine,
    load_average,
)
from torch import nn

from cnnkit.bench.models.cifar_resnet import resnet18
from cnnkit.core import Context, Method, MethodRunner, create_method
from cnnkit.core.cost import count_params

NUM_CLASSES = 10
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9
LR = 0.01
#: (steps, repeats, warm-up steps) when not given on the command line.
DEFAULTS = {"cpu": (1, 5, 1), "cuda": (50, 5, 10)}
#: per-round ratios of one method spread wider than this (max/min) get a noise note.
NOISY_SPREAD = 1.10
#: seconds of each timed step, per clock: "wall" always, "cpu" (process CPU time) on CPU.
Timing = dict[str, list[float]]
#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: a profiler frame in cnnkit source: "cnnkit/regularizers/wc.py(144): forward".
CNNKIT_FRAME = re.compile(r"cnnkit/[\w/]+\.py\(\d+\): \w+")


@dataclass(frozen=True)
class Variant:
    """One method as benchmarked: registry name, config overrides, the paper's figure and our goal."""

    key: str
    method: str
    overrides: dict[str, Any]
    paper: str
    goal: float


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        # SR §2f: CIFAR-100 ResNet-50, batch 128, 377 -> 379 ms (no ResNet-18 figure is given).
        Variant("sr", "sr", {}, "1.005 (R50)", 1.02),
        # WC §6f: "training 7-14 % slower" (no model named).
        Variant("wc", "wc", {}, "1.07-1.14", 1.05),
        # SBN §5f, Table VI: ResNet-18, CIFAR-10 and CIFAR-100 16 %.
        Variant("sbn", "sbn", {}, "1.16", 1.16),
        # SFD §4f / SWD paper §3f: CIFAR ResNet-18 training-time multipliers.
        Variant("sfd-1d", "sfd", {"variant": "1d"}, "1.15", 1.15),
        Variant("sfd-2d", "sfd", {"variant": "2d"}, "1.59", 1.59),
        Variant("swd-1d", "swd", {"variant": "1d"}, "1.12", 1.12),
        Variant("swd-2d", "swd", {"variant": "2d"}, "2.22", 1.30),
        # Reference implementations, only when named in --methods: SBN's Algorithm 1 with torch.fft.
        Variant("sbn-fft", "sbn", {"impl": "fft"}, "1.16", 1.16),
    )
}
#: measured by default (the others only when named in --methods).
DEFAULT_VARIANTS = ("sr", "wc", "sbn", "sfd-1d", "sfd-2d", "swd-1d", "swd-2d")


@dataclass
class Contender:
    """A model with its method, runner and optimizer, and the step times measured so far."""

    name: str
    model: nn.Module
    runner: MethodRunner
    optimizer: torch.optim.Optimizer
    params: int
    rounds: list[Timing] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    last_loss: torch.Tensor | None = None

    def all_steps(self, clock: str) -> list[float]:
        return [t for timing in self.rounds for t in timing[clock]]

    def measure(self, batch: Batch, steps: int) -> dict[str, float]:
        """Time ``steps`` steps; return their median seconds per clock."""
        gc.collect()
        self.rounds.append(time_steps(self, batch, steps))
        return {clock: statistics.median(times) for clock, times in self.rounds[-1].items()}


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor


# -- command line ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per measurement (1 CPU, 50 CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="measurement rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (1 CPU, 10 CUDA)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (CPU default 1; 0 = torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="what the multipliers use: wall time, or (CPU only) process CPU time; auto: cpu when the "
        "device is the CPU with 1 thread, else wall",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="on CPU, leave glibc malloc's trim and mmap thresholds as they are (see the module docstring)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile one step of each method above its goal"
    )
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in VARIANTS]
    if unknown:
        parser.error(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in ("batch_size", "steps", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def apply_defaults(args: argparse.Namespace, device: torch.device) -> None:
    steps, repeats, warmup = DEFAULTS[device.type]
    args.steps = args.steps or steps
    args.repeats = args.repeats or repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.threads is None and device.type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.malloc = "default" if device.type != "cpu" or args.default_malloc else steady_malloc()
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures CPU runs only; on CUDA the steps are timed with events")
    if args.clock == "auto":
        args.clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


def steady_malloc() -> str:
    """Make glibc keep freed memory for reuse (trim threshold 2 GiB, fixed mmap threshold 32 MiB).

    By default glibc returns freed heap tops and large blocks to the kernel, and how much depends on the
    heap's history: a ResNet-18 step at batch 128 then spends a varying 5-25 % of its time in page faults on
    fresh memory, a cost that differs between models for no reason of their own and hides the methods' cost.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return "default (not glibc)"
    done = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    return "glibc trim threshold 2 GiB, mmap threshold 32 MiB" if done else "default (mallopt refused)"


# -- building --------------------------------------------------------------------------------------------
def make_batch(batch_size: int, device: torch.device, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
    x, y = x.to(device), y.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return Batch(x, y)


def create_variant(variant: Variant) -> Method | str:
    """The method, or the reason it cannot be created (not registered, import error, bad config)."""
    try:
        return create_method(variant.method, **variant.overrides)
    except Exception as exc:  # any failure only skips this method
        return _reason(exc)


def _reason(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"


def build_contender(name: str, method: Method, batch: Batch, device: torch.device, seed: int) -> Contender:
    """Seeded ResNet-18 (channels_last on CUDA), the method applied, SGD on the method's param groups."""
    torch.manual_seed(seed)
    model = resnet18(num_classes=NUM_CLASSES).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    runner = MethodRunner(method, Context(example_input=batch.x[:2], device=device, seed=seed))
    model = runner.apply(model)
    groups = runner.param_groups(model, weight_decay=WEIGHT_DECAY)
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    runner.set_optimizer(optimizer)
    return Contender(name, model, runner, optimizer, count_params(model).total)


# -- timing ----------------------------------------------------------------------------------------------
def train_step(c: Contender, batch: Batch) -> torch.Tensor:
    """One training step through the method's events (no host synchronisation)."""
    runner, optimizer = c.runner, c.optimizer
    runner.before_step(batch.x, batch.y)
    optimizer.zero_grad(set_to_none=True)
    cuda = batch.x.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        output = c.model(batch.x)
        loss = runner.loss(c.model, output.float(), batch.y)
    loss.backward()  # type: ignore[no-untyped-call]
    runner.after_backward()
    optimizer.step()
    runner.after_step()
    return loss.detach()


def time_steps(c: Contender, batch: Batch, steps: int) -> Timing:
    """Seconds of each of ``steps`` consecutive training steps: wall clock (CUDA: event intervals) and, on
    CPU, the process's CPU time."""
    c.model.train()
    if batch.x.device.type != "cuda":
        timing: Timing = {"wall": [], "cpu": []}
        for _ in range(steps):
            wall, cpu = time.perf_counter(), time.process_time()
            c.last_loss = train_step(c, batch)
            timing["cpu"].append(time.process_time() - cpu)
            timing["wall"].append(time.perf_counter() - wall)
        return timing
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]  # type: ignore[no-untyped-call]
    torch.cuda.synchronize()
    events[0].record()
    for i in range(steps):
        c.last_loss = train_step(c, batch)
        events[i + 1].record()
    torch.cuda.synchronize()
    return {"wall": [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]}


def prepare(
    methods: list[str], batch: Batch, device: torch.device, args: argparse.Namespace
) -> tuple[Contender, list[Contender], dict[str, str]]:
    """Build and warm up the baseline and every method that can run; the others with their reasons."""
    baseline = build_contender("baseline", Method(), batch, device, args.seed)
    time_steps(baseline, batch, args.warmup)
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    for key in methods:
        method = create_variant(VARIANTS[key])
        if isinstance(method, str):
            skipped[key] = method
            print(f"skip {key}: {method}", flush=True)
            continue
        try:
            contender = build_contender(key, method, batch, device, args.seed)
            time_steps(contender, batch, args.warmup)
        except Exception as exc:  # a method that cannot be applied or trained is skipped, not fatal
            skipped[key] = _reason(exc)
            print(f"skip {key}: {skipped[key]}", flush=True)
            continue
        contenders.append(contender)
        print(f"built {key}: {type(method).__name__}, {contender.params:,} params", flush=True)
    return baseline, contenders, skipped


def measure(baseline: Contender, methods: list[Contender], batch: Batch, steps: int, repeats: int) -> None:
    """``repeats`` rounds; in each, every method is measured between two baseline measurements (which it
    shares with its neighbours): B m1 B m2 B ... mk B, the methods in reverse order in odd rounds. A
    method's ratio for the round, per clock, is its median step time over the mean of the flanking
    baselines' medians.
    """
    before = baseline.measure(batch, steps)
    progress(0, repeats, baseline.name, before)
    for r in range(repeats):
        for c in methods if r % 2 == 0 else methods[::-1]:
            mine = c.measure(batch, steps)
            progress(r + 1, repeats, c.name, mine)
            after = baseline.measure(batch, steps)
            progress(r + 1, repeats, baseline.name, after)
            for clock, seconds in mine.items():
                c.ratios.setdefault(clock, []).append(seconds / ((before[clock] + after[clock]) / 2.0))
            before = after


def progress(r: int, repeats: int, name: str, seconds: dict[str, float]) -> None:
    times = ", ".join(f"{clock} {1e3 * value:7.1f}" for clock, value in seconds.items())
    print(f"  round {r}/{repeats}  {name:<9} ms/step: {times}", flush=True)


# -- report ----------------------------------------------------------------------------------------------
def describe_run(args: argparse.Namespace, device: torch.device) -> str:
    precision = "bf16 autocast + channels_last" if device.type == "cuda" else "fp32"
    return (
        f"run: CIFAR ResNet-18, batch {args.batch_size}x3x32x32 (fixed random, {NUM_CLASSES} classes), "
        f"{precision}, SGD lr {LR} momentum {MOMENTUM} wd {WEIGHT_DECAY}, {args.warmup} warm-up + "
        f"{args.steps} timed steps x {args.repeats} rounds (each method between baseline measurements), "
        f"seed {args.seed}, multipliers on {args.clock} time, malloc {args.malloc}"
    )


#: (title, width) of the report's columns; "wall x" only when the multiplier is taken on another clock.
COLUMNS: tuple[tuple[str, int], ...] = (
    ("method", 9),
    ("ms/step", 9),
    ("x base", 7),
    ("rounds min-max", 15),
    ("paper", 12),
    ("goal", 7),
    ("result", 6),
    ("params", 8),
    ("wall x", 7),
)


def row(*cells: str) -> str:
    first, *rest = zip(cells, COLUMNS, strict=False)
    return " ".join([f"{first[0]:<{first[1][1]}}", *(f"{cell:>{width}}" for cell, (_, width) in rest)])


def report(
    baseline: Contender, methods: list[Contender], skipped: dict[str, str], clock: str
) -> list[Contender]:
    """Print the table (multipliers on ``clock``); return the methods above their goal."""
    titles = [name for name, _ in COLUMNS][: None if clock != "wall" else -1]
    header = row(*titles)
    print("\n" + header + "\n" + "-" * len(header))
    base_ms = 1e3 * statistics.median(baseline.all_steps(clock))
    print(row(*["baseline", f"{base_ms:.1f}", "1.000", "", "", "", "", "+0.00%", "1.000"][: len(titles)]))
    floor = noise_floor(baseline, clock)
    failing = [c for c in methods if not report_row(c, baseline, clock, floor)]
    for key, reason in skipped.items():
        print(f"{key:<9} skipped: {reason}")
    what = "process CPU time" if clock == "cpu" else "wall time"
    print(
        f"ms/step = median step {what}; x base = median of the per-round ratios to the flanking baseline "
        f"measurements (rounds: their min-max);\npaper = METHODS.md (CIFAR ResNet-18 unless marked); "
        f"params = parameter overhead vs the baseline's {baseline.params:,}"
        + ("; wall x = the multiplier on wall-clock time" if clock != "wall" else "")
    )
    if floor is not None:
        print(
            f"noise floor: each baseline measurement vs the mean of its two neighbours differs from 1 by "
            f"{floor:.1%} (median); a result marked '?' is closer than that to its goal"
        )
    notes(methods, clock)
    return failing


def noise_floor(baseline: Contender, clock: str) -> float | None:
    """Median |r - 1| of r = a baseline measurement over the mean of its two neighbours: the ratio an
    unchanged model gets, i.e. the resolution of this run (None with fewer than three measurements)."""
    medians = [statistics.median(timing[clock]) for timing in baseline.rounds]
    ratios = [b / ((a + c) / 2.0) for a, b, c in zip(medians, medians[1:], medians[2:], strict=False)]
    return statistics.median(abs(r - 1.0) for r in ratios) if ratios else None


def report_row(c: Contender, baseline: Contender, clock: str, floor: float | None) -> bool:
    """Print the method's row; return whether it meets its goal."""
    variant = VARIANTS[c.name]
    ratios = c.ratios[clock]
    ratio = statistics.median(ratios)
    ok = ratio <= variant.goal
    unsure = floor is not None and abs(ratio - variant.goal) <= floor
    cells = [
        c.name,
        f"{1e3 * statistics.median(c.all_steps(clock)):.1f}",
        f"{ratio:.3f}",
        f"{min(ratios):.3f}-{max(ratios):.3f}",
        variant.paper,
        f"<={variant.goal:.2f}",
        ("pass" if ok else "FAIL") + ("?" if unsure else ""),
        f"{100.0 * (c.params / baseline.params - 1.0):+.2f}%",
    ]
    if clock != "wall":
        cells.append(f"{statistics.median(c.ratios['wall']):.3f}")
    print(row(*cells))
    return ok


def notes(methods: list[Contender], clock: str) -> None:
    spreads = {c.name: max(c.ratios[clock]) / min(c.ratios[clock]) for c in methods}
    noisy = [f"{name} {spread - 1:.0%}" for name, spread in spreads.items() if spread > NOISY_SPREAD]
    if noisy:
        hint = "more --repeats" + (", or --threads 1" if torch.get_num_threads() > 1 else "")
        print(f"note: per-round ratios vary by {', '.join(noisy)} (busy machine?); rerun with {hint}")
    for c in methods:
        if c.last_loss is not None and not bool(torch.isfinite(c.last_loss)):
            print(f"note: {c.name} ended with a non-finite loss; its timing may not be representative")


# -- profile ---------------------------------------------------------------------------------------------
def profile_step(c: Contender, batch: Batch, stack: bool) -> Any:
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no kineto start-up warnings in the report
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if batch.x.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    time_steps(c, batch, 1)
    with profile(activities=activities, with_stack=stack) as prof:
        time_steps(c, batch, 1)
    return prof


def self_times(prof: Any, cuda: bool) -> dict[str, tuple[float, int]]:
    """Operator -> (self time in ms, calls): device time on CUDA, CPU time otherwise."""
    out = {}
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        out[event.key] = (us / 1e3, event.count)
    return out


def profile_against_baseline(c: Contender, baseline: Contender, batch: Batch, top: int = 12) -> None:
    """The operators the method calls more often than the baseline, by self time added, and the cnnkit
    functions that call them. Operators called as often as in the baseline do the same work: their difference
    is printed as one sum (noise between two single steps, or inputs the method made slower)."""
    cuda = batch.x.device.type == "cuda"
    base = self_times(profile_step(baseline, batch, stack=False), cuda)
    prof = profile_step(c, batch, stack=True)
    rows = []
    for op, (ms, calls) in self_times(prof, cuda).items():
        base_ms, base_calls = base.get(op, (0.0, 0))
        rows.append((ms - base_ms, op, calls - base_calls))
    more = sorted((row for row in rows if row[2] != 0), reverse=True)
    same = sum(delta for delta, _, calls in rows if calls == 0)
    unit = "device" if cuda else "CPU"
    print(
        f"\nprofile of one {c.name} step vs one baseline step ({unit} self time): "
        f"{sum(delta for delta, _, _ in more):+.1f} ms in operators called more often, "
        f"{same:+.1f} ms in those called as often"
    )
    for delta, op, calls in more[:top]:
        print(f"  {delta:+9.1f} ms  {calls:+5d} calls  {op}")
    print_call_sites(prof, {op for _, op, _ in more[:6]}, cuda)


def print_call_sites(prof: Any, ops: set[str], cuda: bool, top: int = 12) -> None:
    """Self time of ``ops`` by where they were called: the innermost two cnnkit functions above the op, as
    the profiler names them (file and the line of the ``def``), or the autograd node that ran it."""
    sites: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        if event.name not in ops:
            continue
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        entry = sites.setdefault((event.name, call_site(event)), [0.0, 0])
        entry[0] += us / 1e3
        entry[1] += 1
    print("  where the top operators' self time comes from:")
    for (op, where), (ms, count) in sorted(sites.items(), key=lambda item: item[1][0], reverse=True)[:top]:
        print(f"  {ms:9.1f} ms  {int(count):4d}x {op:<30} <- {where}")


def call_site(event: Any) -> str:
    frames: list[str] = []
    parent = event.cpu_parent
    while parent is not None and len(frames) < 2:
        name = str(parent.name)
        if name.startswith("autograd::engine::evaluate_function: ") and not frames:
            return "backward of " + name.split(": ", 1)[1]
        match = CNNKIT_FRAME.search(name)
        if match:
            frames.append(match.group(0))
        parent = parent.cpu_parent
    return " <- ".join(frames) or "?"


# -- main ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    apply_defaults(args, device)
    print(describe_machine(device))
    print(describe_run(args, device), flush=True)
    batch = make_batch(args.batch_size, device, args.seed)
    started = time.perf_counter()
    baseline, methods, skipped = prepare(args.methods, batch, device, args)
    if not methods:
        print("no method could be measured")
        return 1
    measure(baseline, methods, batch, args.steps, args.repeats)
    failing = report(baseline, methods, skipped, args.clock)
    print(f"load average after: {load_average()}; {time.perf_counter() - started:.0f} s")
    if args.profile:
        for c in failing:
            profile_against_baseline(c, baseline, batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
