"""The ``cnnkit`` command line: list, show, run, sweep, report, demo, reproduce.

Exit codes: 0 success; 1 one or more runs failed; 2 bad usage or configuration; 130 interrupted.

Scaling out: under ``torchrun`` every rank runs the same command, each run is data-parallel and only rank 0
opens the results store (:mod:`cnnkit.bench.distributed`); ``sweep --executor ray`` runs each run as a Ray
task (:mod:`cnnkit.bench.executors`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cnnkit.core.config import ConfigError
from cnnkit.core.registry import UnknownNameError

DEFAULT_STORE = Path(os.environ.get("CNNKIT_RESULTS", "cnnkit-results"))
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    columns = zip(header, *rows, strict=True)
    widths = [max(len(str(cell)) for cell in column) for column in columns]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    from cnnkit.core.plugins import get_registries

    registries = get_registries()
    registry = getattr(registries, args.what)
    rows = []
    for spec in registry:
        kind = getattr(spec, "kind", "")
        if args.kind and kind != args.kind:
            continue
        rows.append([spec.name, kind or "-", registry.source(spec.name).split(" (")[0], spec.paper or "-"])
    _print_table(rows, ["name", "kind", "provided by", "paper"])
    if not rows:
        print(f"(no {args.what} installed{' of kind ' + args.kind if args.kind else ''})")
    for name, message in registries.failed.items():
        print(f"warning: plugin {name} was skipped: {message}", file=sys.stderr)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from cnnkit.core.config import describe_field
    from cnnkit.core.plugins import get_registries

    registries = get_registries()
    spec = registries.methods.get(args.name)
    cls = spec.load()
    print(f"{spec.name} ({spec.kind}) — {spec.summary}")
    print(f"paper: {spec.paper or '-'}\nprovided by: {registries.methods.source(spec.name)}\n")
    rows = []
    for field_name, info in cls.Config.model_fields.items():
        rows.append(
            [field_name, repr(info.default), describe_field(cls.Config, field_name), info.description or ""]
        )
    _print_table(rows, ["field", "default", "allowed", "description"])
    if args.schema:
        print(json.dumps(cls.Config.model_json_schema(), indent=2))
    return EXIT_OK


def _store(args: argparse.Namespace) -> Any:
    """The results store; under torchrun only rank 0 opens it (the others get a :class:`NullStore`)."""
    from cnnkit.bench import distributed
    from cnnkit.bench.results import NullStore, ResultStore

    if not distributed.is_main():
        return NullStore()
    return ResultStore(Path(args.store) / "results.sqlite")


def execute(
    configs: Iterable[Any], store: Any, runs_dir: Path, *, retry_failed: bool = True
) -> tuple[int, int, int, int]:
    """Run each config not already finished, here; returns (ran, reused, failed, not applicable).

    A failure never stops the sweep: it is recorded with its reason and the next run starts. Under
    torchrun every rank calls this with the same configs; rank 0 decides which runs are needed.
    """
    from cnnkit.bench import distributed
    from cnnkit.bench.executors import label, needs_run, run_local
    from cnnkit.bench.trainer import environment

    main = distributed.is_main()
    counts = {"ran": 0, "reused": 0, "failed": 0, "skipped": 0}
    env = environment() if main else {}
    for cfg in configs:
        key = cfg.key()
        if not distributed.broadcast_object(needs_run(store, key, retry_failed=retry_failed)):
            counts["reused"] += 1
            continue
        if main:
            print(f"run {key}: {label(cfg)}", file=sys.stderr)
        store.start(key, cfg.model_dump(mode="json"), env)
        counts[run_local(cfg, key, store, runs_dir, verbose=main)] += 1
    return counts["ran"], counts["reused"], counts["failed"], counts["skipped"]


def execute_ray(configs: list[Any], store: Any, runs_dir: Path, args: argparse.Namespace) -> tuple[int, ...]:
    """The sweep's pending runs as Ray tasks (:mod:`cnnkit.bench.executors`); same counts as ``execute``."""
    from cnnkit.bench.executors import needs_run, run_ray

    todo = [cfg for cfg in configs if needs_run(store, cfg.key(), retry_failed=not args.skip_failed)]
    counts = run_ray(
        todo,
        store,
        runs_dir,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        num_cpus=args.num_cpus,
    )
    return counts["ran"], len(configs) - len(todo), counts["failed"], counts["skipped"]


def _run_fields(args: argparse.Namespace) -> dict[str, Any]:
    from cnnkit.bench.sweep import load_config_file

    fields: dict[str, Any] = load_config_file(args.config) if args.config else {}
    flags = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "data_root": args.data_root or os.environ.get("CNNKIT_DATA"),
        "max_steps_per_epoch": args.max_steps_per_epoch,
    }
    fields.update({k: v for k, v in flags.items() if v is not None})
    if args.download:
        fields["download"] = True
    if args.no_progress:
        fields["progress"] = False
    if args.cpu_amp:
        fields["cpu_amp"] = True
    if args.data_on_device:
        fields["data_on_device"] = True
    if args.method:
        fields["methods"] = list(args.method)
    if args.lr is not None:
        fields["optimizer"] = _with_lr(fields.get("optimizer", {}), args.lr)
    return fields


def _with_lr(optimizer: Any, lr: float) -> dict[str, Any]:
    """The config file's ``optimizer`` mapping with ``--lr`` put in."""
    if not isinstance(optimizer, dict):
        raise ConfigError(
            "run config",
            [
                (
                    "optimizer",
                    f"must be a mapping such as {{name: sgd, lr: 0.1}} to use with --lr; got {optimizer!r}",
                )
            ],
        )
    return {**optimizer, "lr": lr}


def _finish(store: Any, counts: tuple[int, ...], keys: list[str], *, single: bool = False) -> int:
    from cnnkit.bench import distributed
    from cnnkit.bench.report import aggregate, render

    ran, reused, failed, not_applicable = counts
    if not distributed.is_main():
        return EXIT_FAILED if failed or (single and not_applicable) else EXIT_OK
    records = [r for r in (store.get(k) for k in dict.fromkeys(keys)) if r is not None]  # distinct runs
    print(render(aggregate(records), "md"))
    print(
        f"\n{ran} run(s) trained, {reused} reused from {store.path}, {failed} failed, "
        f"{not_applicable} skipped (method not applicable).",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed or (single and not_applicable) else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from cnnkit.bench import distributed
    from cnnkit.bench.sweep import check_runs, make_run_config

    cfg = make_run_config(_run_fields(args))
    check_runs([cfg])
    distributed.init_from_env(cfg.device)
    store = _store(args)
    return _finish(store, execute([cfg], store, Path(args.store) / "runs"), [cfg.key()], single=True)


def cmd_sweep(args: argparse.Namespace) -> int:
    from cnnkit.bench import distributed
    from cnnkit.bench.sweep import check_runs, expand_sweep, load_config_file

    configs = list(expand_sweep(load_config_file(args.config)))
    check_runs(configs)
    runs_dir = Path(args.store).resolve() / "runs"
    if args.executor == "ray":
        if distributed.launched_by_torchrun():
            raise ConfigError(
                "sweep", [("--executor", "'ray' cannot run under torchrun; use one or the other")]
            )
        print(f"sweep: {len(configs)} run(s) on Ray", file=sys.stderr)
        store = _store(args)
        return _finish(store, execute_ray(configs, store, runs_dir, args), [c.key() for c in configs])
    distributed.init_from_env(configs[0].device if configs else "auto")
    if distributed.is_main():
        print(f"sweep: {len(configs)} run(s)", file=sys.stderr)
    store = _store(args)
    counts = execute(configs, store, runs_dir, retry_failed=not args.skip_failed)
    return _finish(store, counts, [c.key() for c in configs])


def cmd_report(args: argparse.Namespace) -> int:
    from cnnkit.bench.report import aggregate, render

    store = _store(args)
    records = store.records()
    print(render(aggregate(records), args.format))
    if args.out:
        _write_report(store, [r.key for r in records], Path(args.out))
    return EXIT_OK


def _write_report(store: Any, keys: list[str], out_dir: Path) -> None:
    from cnnkit.bench.report import write_report

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("report", [("--out", f"{out_dir} is a file, not a folder")])
    records = [r for r in (store.get(k) for k in keys) if r is not None]
    try:
        written = write_report(records, out_dir)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError("report", [("--out", f"cannot create the folder {out_dir}: {exc}")]) from None
    print(f"report: {', '.join(str(p) for p in written)}", file=sys.stderr)


DEMO_BASE: dict[str, Any] = {
    "model": "lenet5_caffe",
    "dataset": "fashion_mnist_mini",
    "batch_size": 64,
    "optimizer": {"lr": 0.05},
    "schedule": {"name": "cosine"},
}


def demo_methods() -> list[str]:
    """One method per installed distribution that registers methods: its spec tagged ``demo`` if any,
    else its first by name."""
    from cnnkit.core.plugins import get_registries

    methods = get_registries().methods
    chosen: dict[str, str] = {}
    for spec in methods:
        source = methods.source(spec.name).split(" ")[0]
        if source not in chosen or ("demo" in spec.tags and "demo" not in methods.get(chosen[source]).tags):
            chosen[source] = spec.name
    return [chosen[source] for source in sorted(chosen)]


def _demo_ref(name: str) -> dict[str, Any]:
    """The method with its ``demo_config`` (overrides for LeNet-5-Caffe, if its paper defaults need any)."""
    from cnnkit.core.plugins import get_registries

    overrides = dict(get_registries().methods.get(name).load().demo_config)
    return {"name": name, "config": overrides}


def demo_configs(epochs: int, seeds: int, max_steps: int | None) -> list[Any]:
    """The demo grid: LeNet-5-Caffe on the embedded Fashion-MNIST subset, dense and with one method of each
    installed method package, ``seeds`` seeds each."""
    from cnnkit.bench.sweep import make_run_config

    stacks: list[list[Any]] = [[], *([_demo_ref(name)] for name in demo_methods())]
    base = {**DEMO_BASE, "epochs": epochs, "max_steps_per_epoch": max_steps}
    return [
        make_run_config({**base, "seed": seed, "methods": stack}) for stack in stacks for seed in range(seeds)
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    from cnnkit.bench import distributed

    configs = demo_configs(args.epochs, args.seeds, args.max_steps_per_epoch)
    print(
        f"demo: {len(configs)} run(s) of LeNet-5-Caffe on the embedded Fashion-MNIST subset "
        f"(dense + {', '.join(demo_methods()) or 'no method installed yet'}), results in {args.store}",
        file=sys.stderr,
    )
    distributed.init_from_env()
    store = _store(args)
    code = _finish(store, execute(configs, store, Path(args.store) / "runs"), [c.key() for c in configs])
    if distributed.is_main():
        _write_report(store, [c.key() for c in configs], Path(args.store) / "demo-report")
    return code


def cmd_reproduce(args: argparse.Namespace) -> int:
    from cnnkit.bench.reproduce import load_preset

    return int(load_preset(args.preset).main(args))


def _add_reproduce_parser(sub: Any) -> None:
    from cnnkit.bench.reproduce import PRESETS

    presets = "; ".join(f"{name}: {summary}" for name, (_, summary) in sorted(PRESETS.items()))
    p = sub.add_parser("reproduce", help="run a paper's experiment (shortened to fit the machine)")
    p.add_argument("preset", choices=sorted(PRESETS), help=presets)
    p.add_argument("--store", default=str(DEFAULT_STORE), help="results folder (default: %(default)s)")
    p.add_argument("--data-root", help="dataset root (default: $CNNKIT_DATA, then ../shared/data)")
    p.add_argument("--out", help="folder for the table and plots (default: STORE/reproduce-PRESET)")
    p.add_argument(
        "--quick", action="store_true", help="a few steps per run: checks the pipeline, not the claim"
    )
    p.set_defaults(func=cmd_reproduce)


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def _add_executor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor (see 'Scaling out' in the README)")
    g.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="where runs execute (default: local)"
    )
    g.add_argument(
        "--address", help="ray: cluster address (auto, HOST:6379); default: start a local instance"
    )
    g.add_argument("--cpus-per-run", type=_non_negative, default=1.0, help="ray: CPUs per run (default: 1)")
    g.add_argument("--gpus-per-run", type=_non_negative, default=0.0, help="ray: GPUs per run, e.g. 1 or 0.5")
    g.add_argument("--num-cpus", type=int, help="ray: CPUs of the local instance (default: all)")


def build_parser() -> argparse.ArgumentParser:
    from cnnkit.bench.version import __version__

    parser = argparse.ArgumentParser(
        prog="cnnkit", description="Evaluate every installed cnnkit method uniformly."
    )
    parser.add_argument("--version", action="version", version=f"cnnkit-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list installed methods (or models, datasets, metrics)")
    p.add_argument("what", nargs="?", default="methods", choices=["methods", "models", "datasets", "metrics"])
    p.add_argument("--kind", choices=["regularizer", "pruner", "efficiency"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="a method's config fields, defaults, allowed values and paper")
    p.add_argument("name")
    p.add_argument("--schema", action="store_true", help="also print the JSON schema")
    p.set_defaults(func=cmd_show)

    for name, func, helptext in (
        ("run", cmd_run, "train one configuration"),
        ("sweep", cmd_sweep, "run a grid from a YAML/TOML file"),
        ("report", cmd_report, "tables of finished runs"),
        ("demo", cmd_demo, "baseline and every method on the embedded data"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--store", default=str(DEFAULT_STORE), help="results folder (default: %(default)s)")
        p.set_defaults(func=func)
        if name == "run":
            p.add_argument("config", nargs="?", help="YAML/TOML run config; flags override it")
            p.add_argument("--model")
            p.add_argument("--dataset")
            p.add_argument("--method", action="append", help="NAME[:key=value,...]; repeat to stack methods")
            p.add_argument("--epochs", type=int)
            p.add_argument("--seed", type=int)
            p.add_argument("--batch-size", type=int)
            p.add_argument("--lr", type=float)
            p.add_argument("--device", choices=["auto", "cpu", "cuda"])
            p.add_argument("--data-root", help="dataset root (default: $CNNKIT_DATA)")
            p.add_argument("--download", action="store_true", help="allow downloading datasets")
            p.add_argument("--max-steps-per-epoch", type=int)
            p.add_argument("--no-progress", action="store_true")
            p.add_argument(
                "--cpu-amp",
                action="store_true",
                help="bfloat16 autocast and channels-last on CPU too (fast with native bfloat16)",
            )
            p.add_argument(
                "--data-on-device",
                action="store_true",
                help="read the data once onto the run's device and crop/flip batches there",
            )
        if name == "sweep":
            p.add_argument("config")
            p.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
            _add_executor_arguments(p)
        if name == "report":
            p.add_argument("--format", choices=["md", "csv", "json"], default="md")
            p.add_argument("--out", help="also write tables and PNG plots into this folder")
        if name == "demo":
            p.add_argument("--epochs", type=int, default=3)
            p.add_argument("--seeds", type=int, default=2)
            p.add_argument("--max-steps-per-epoch", type=int, default=None)
    _add_reproduce_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from cnnkit.bench import distributed

    args = build_parser().parse_args(argv)
    joined = distributed.current() is None  # a process group created during this command is ours to end
    try:
        return int(args.func(args))
    except (ConfigError, UnknownNameError, FileNotFoundError) as exc:
        print(f"cnnkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if joined:
            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
