"""COPS: the analytic LP solver (cnnkit.pruning.cops.combine) against HiGHS, and alone at ResNet-50 size.

Setup of METHODS.md §10f: a SNIP-like main score s₁ = |N(0,1)·N(0,1)| ≥ 0, a signed auxiliary score
s₂ ~ N(0,1), k = 5 % of d, control γ = 0.8 with the zero baseline (c = 0.8·B₂), L1 normalisation; float32
scores as a pruner would pass them. The analytic time is the whole ``combine`` call (float64 copies,
normalisation, B₂, the search, the mask). HiGHS (``scipy.optimize.linprog(method="highs")``) solves the same
LP — ``build_lp``'s normalised scores and level, rows rescaled to unit largest coefficient, feasibility
tolerances 1e-10 — and only its ``linprog`` call is timed. The objective difference is relative to HiGHS.

Goals (issue 5): ≥ 100× faster than HiGHS at d = 2·10⁴ and 2·10⁵ with the same objective, and the ResNet-50
size (its 25,502,912 maskable conv + fc weights) in < 2 s on CPU.

    python benchmarks/cops_speed.py                      # 1 thread, 3 repeats of the analytic solver
    python benchmarks/cops_speed.py --threads 0          # torch's default thread count
    python benchmarks/cops_speed.py --baseline auto      # the pruner's default (range form for signed s₂)
    python benchmarks/cops_speed.py --skip-highs         # analytic solver only

One CPU thread is the default because on a shared machine several OpenMP threads are slowed down
unpredictably by other jobs (see benchmarks/README.md); the ResNet-50 goal is met on one thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import scipy
import torch
from _machine import cpu_model  # benchmarks/_machine.py (the script's folder is on sys.path)
from scipy.optimize import linprog

from cnnkit.pruning.cops import CombineResult, CopsLP, build_lp, combine

RESNET50_MASKABLE = 25_502_912  # conv + fc weights of torchvision's resnet50 (25,557,032 parameters in all)


@dataclass
class Row:
    label: str
    d: int
    k: int
    analytic_s: float
    result: CombineResult
    highs_s: float | None = None
    highs_value: float | None = None


def scores(d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    main = (torch.randn(d, generator=g) * torch.randn(d, generator=g)).abs()
    return [main, torch.randn(d, generator=g)]


def time_analytic(s: list[torch.Tensor], k: int, args: argparse.Namespace) -> tuple[float, CombineResult]:
    combine(s, k, [args.gamma], baseline=args.baseline)  # warm-up (first-touch of allocator pages)
    times, result = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = combine(s, k, [args.gamma], baseline=args.baseline)
        times.append(time.perf_counter() - t0)
    assert result is not None
    return statistics.median(times), result


def time_highs(lp: CopsLP) -> tuple[float, float]:
    x = [s.numpy() for s in lp.scores]
    f = [1.0 / float(np.abs(v).max()) for v in x]
    t0 = time.perf_counter()
    res = linprog(
        -x[0] * f[0],
        A_ub=-(x[1] * f[1])[None, :],
        b_ub=[-lp.rhs[0] * f[1]],
        A_eq=np.ones((1, x[0].size)),
        b_eq=[lp.keep],
        bounds=(0, 1),
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    elapsed = time.perf_counter() - t0
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return elapsed, -res.fun / f[0]


def run(args: argparse.Namespace) -> list[Row]:
    rows = []
    sizes = [("2e4", 20_000, True), ("2e5", 200_000, True), ("ResNet-50", RESNET50_MASKABLE, False)]
    for label, d, with_highs in sizes:
        k = round(args.density * d)
        s = scores(d, args.seed)
        analytic_s, result = time_analytic(s, k, args)
        row = Row(label, d, k, analytic_s, result)
        if with_highs and not args.skip_highs:
            lp = build_lp(s, k, [args.gamma], baseline=args.baseline)
            row.highs_s, row.highs_value = time_highs(lp)
        rows.append(row)
        print(f"  done: {label} (d = {d:,})", flush=True)
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, scipy {scipy.__version__}, Python {platform.python_version()}"
    )
    print(
        f"setup: s1 = |N·N| >= 0, s2 = N(0,1) signed, k = {args.density:.0%} of d, gamma = {args.gamma}, "
        f"baseline {args.baseline}, normalize l1, float32 input; analytic = median of {args.repeats}"
    )
    header = (
        f"{'size':>9} | {'d':>10} | {'analytic s':>10} | {'HiGHS s':>8} | {'speedup':>8} | "
        f"{'LP value':>18} | {'rel. diff':>9} | {'lambda':>8} | {'evals':>5} | {'frac':>4} | {'gap':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        res = r.result
        highs = f"{r.highs_s:8.2f}" if r.highs_s is not None else f"{'-':>8}"
        speed = f"{r.highs_s / r.analytic_s:7.0f}x" if r.highs_s is not None else f"{'-':>8}"
        diff = (
            f"{abs(res.value - r.highs_value) / abs(r.highs_value):9.1e}"
            if r.highs_value is not None
            else f"{'-':>9}"
        )
        print(
            f"{r.label:>9} | {r.d:>10,} | {r.analytic_s:10.3f} | {highs} | {speed} | {res.value:18.15f} | "
            f"{diff} | {res.lambdas[0]:8.4f} | {res.evaluations:5d} | {res.fractional:4d} | {res.gap:7.1e}"
        )
    print()
    for r in rows:
        if r.highs_s is not None and r.highs_value is not None:
            speedup = r.highs_s / r.analytic_s
            same = abs(r.result.value - r.highs_value) <= 1e-9 * abs(r.highs_value)
            verdict = "PASS" if speedup >= 100 and same else "FAIL"
            print(f"goal d = {r.d:,}: >= 100x faster with the same objective (1e-9 rel.): {verdict}")
        if r.label == "ResNet-50":
            verdict = "PASS" if r.analytic_s < 2.0 else "FAIL"
            print(f"goal ResNet-50 size: < 2 s on CPU ({r.analytic_s:.2f} s): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the analytic solver")
    parser.add_argument("--density", type=float, default=0.05, help="kept fraction k/d")
    parser.add_argument("--gamma", type=float, default=0.8, help="control of the auxiliary score")
    parser.add_argument("--baseline", choices=["zero", "auto", "range"], default="zero")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-highs", action="store_true", help="time the analytic solver only")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report(run(args), args)


if __name__ == "__main__":
    main()
