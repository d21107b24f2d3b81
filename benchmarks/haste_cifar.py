"""HASTE on a CIFAR ResNet trained by the bench: accuracy drop, FLOPs reduction and CPU speed-up over L.

1. Train (once) a CIFAR ResNet-18 (bench model ``resnet18``) on ``cifar10_jpeg`` with the bench trainer
   (``cnnkit.bench.trainer.run``), a short CPU run by default: ``--epochs`` full epochs (3) of
   ``--batch-size`` 128, SGD with Nesterov momentum, one-cycle schedule to lr 0.1, protocol ``last``
   (about 62 minutes on one thread of a 2-core AMD EPYC, 79.5 % test top-1; ``--epochs 6``: 84.6 %, about
   63 minutes on two threads; ``--epochs 15 --cpu-amp`` (bfloat16 autocast and channels-last, about 3x
   faster per step on a CPU with native bfloat16): 88.4 %, 78 minutes on two threads;
   ``--steps-per-epoch`` caps an epoch for a quicker, weaker model; a GPU machine trains with
   ``--device cuda``: bfloat16 autocast and channels-last; on one H100 with ``--num-workers 12``, 40 epochs
   took 346 s for ResNet-34 (91.15 %) and 326 s for ResNet-18 (90.80 %)).
   The run's checkpoint lives in ``--cache-dir`` under the run config's key; a re-run with the same
   settings reuses it (and a killed training resumes from its last finished epoch).
2. Evaluate the dense model and HASTE (``create_method("haste", hyperplanes=L, ...)``) for each L of
   ``--hyperplanes`` and each projection seed of ``--haste-seeds`` on ``--test-images`` test images (a
   seeded random subset): top-1, the drop vs dense (pp), the FLOPs reduction from ``HASTE.stats`` (mean
   over the test images seen, hashing and merging overhead included; whole model and the replaced convs
   alone; and, for comparison with counts that leave it out, the model's reduction without the
   overhead). ``--eval-device cuda`` runs this step on a GPU (on an H100, a ResNet-34 sweep over all
   10,000 test images at patch 2 finished 7 values of L within 100 s).
3. Time the dense model, a tuned dense model (each conv on the faster of PyTorch's default backend and
   oneDNN at its shape, timed first: PyTorch picks a slower path for some batch-1 convs, and HASTE's
   reduced convs use oneDNN, so this baseline shows what HASTE adds beyond the backend), the HASTE
   model in ``compressed`` mode (the fast path) and the tuned HASTE model (the convs that HASTE leaves
   dense on the tuned dense model's backends) side by side in one process with
   ``torch.utils.benchmark`` at batch 1 and ``--latency-batch``: speed-up = dense time / HASTE time and,
   in brackets, tuned dense time / tuned HASTE time (medians of 3 interleaved measurements), cycling over
   ``--latency-images`` distinct test images (HASTE's cost depends on the image). Tuned against tuned
   credits HASTE with its own layers only: the dense-left convs gain the same from the backend in both.
   Beside them, the **ceiling**: the tuned dense model with each replaced conv cut to the
   layer's mean bucket count of input channels (a plain conv on the first channels, each conv on its
   faster backend): the reduced convs' work at one dense conv's efficiency, with hashing, bucketing and
   merging free, an optimistic bound for any implementation (a fused kernel included); speed-up = dense
   time / ceiling time. The ceiling's sliced weights are smaller than the layer's (cache-resident where the
   full ones are not), so beside it the **merge bound**: the ceiling plus one read of each replaced conv's
   whole weight per tile of each image, the filter merge's irreducible memory traffic (every filter slice
   is summed into some bucket), a tighter optimistic bound. With ``--threads 1`` the clock is the process's
   CPU time, which other jobs on a shared machine do not inflate. Each HASTE layer's compressed output
   is checked against its simulate output on the same input (max abs difference): through the whole
   model, a rounding-level difference can flip a later layer's hash bit, so the models' logits may differ
   more although every layer agrees.

The first line names the machine (benchmarks/_machine.py). Goals (issue 7): >= 40 % FLOPs reduction at
<= 1.5 pp accuracy drop; a real CPU speed-up >= 1.2x. Paper: -46.7 % FLOPs at -1.25 pp (ResNet-34).

    python benchmarks/haste_cifar.py --threads 1             # train once (cached), then the table
    python benchmarks/haste_cifar.py --epochs 15 --cpu-amp --train-only   # the better CPU model (bf16)
    python benchmarks/haste_cifar.py --train-only
    python benchmarks/haste_cifar.py --hyperplanes 12,14,16 --test-images 1000 --patch 4
    python benchmarks/haste_cifar.py --threads 1 --hyperplanes 10 --patch 32   # per-image hashing (fastest)
    python benchmarks/haste_cifar.py --epochs 40 --device cuda --num-workers 8 --train-only   # on a GPU
    python benchmarks/haste_cifar.py --epochs 40 --no-latency --hyperplanes 8,10,12,14   # accuracy only
    python benchmarks/haste_cifar.py --epochs 40 --no-latency --split validation --hyperplanes 14 \
        --stage-hyperplanes 1:16,4:10 --patch 2 --start-layer 1   # tune L per stage on one half ...
    python benchmarks/haste_cifar.py --epochs 40 --no-latency --split test --hyperplanes 14 \
        --stage-hyperplanes 1:16,4:10 --patch 2 --start-layer 1   # ... and report on the other
    python benchmarks/haste_cifar.py --epochs 40 --device cuda --no-latency --eval-device cuda  # GPU sweep
    python benchmarks/haste_cifar.py --epochs 40 --no-latency --split test --test-images 5000 --patch 2 \
        --start-layer 1 --hyperplanes 14 --allocate 0.397   # L per layer for a FLOPs target, chosen on
                                                            # the validation half, reported on the test half
    python benchmarks/haste_cifar.py --epochs 40 --threads 1 --split test --test-images 5000 --patch 32 \
        --start-layer layer4.0.conv2 --hyperplanes 8 --allocate 0.145 \
        --allocate-candidates 4,5,6,7,8,10,12,14,16   # the CPU speed-up setting (per image, last stage)

``--allocate`` adds one row per target of the model's FLOPs reduction, with L per layer
(``layer_hyperplanes``) from :mod:`cnnkit.efficiency.haste_tuning`: each HASTE conv alone at each L of
``--allocate-candidates`` on the first ``--allocate-images`` of the validation half (never the test half,
whatever ``--split``; cached as JSON beside the checkpoint), then the least summed KL that meets the target.

``--patch 32`` (>= every map of a CIFAR ResNet) hashes per image and runs HASTE's per-image fast path (one
reduced-depth conv per image); ``--min-out-pixels`` leaves convs with small output maps dense (a latency
knob for large batches). benchmarks/haste_layer.py times single layers at each stage shape.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from _machine import describe_machine  # benchmarks/_machine.py (the script's folder is on sys.path)
from torch import nn
from torch.utils.data import DataLoader, Subset

from cnnkit.bench.runconfig import RunConfig
from cnnkit.bench.trainer import build_datasets, build_model, run
from cnnkit.core import Context, create_method
from cnnkit.efficiency.haste_tuning import Sensitivity, allocate_hyperplanes, layer_sensitivity

REPO = Path(__file__).resolve().parents[1]


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers (an argparse type: bad input becomes a usage error)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def stage_map(text: str) -> dict[int, int]:
    """``STAGE:L`` pairs, comma-separated (``2:12,4:10``), as a dict (an argparse type)."""
    try:
        pairs = [part.split(":") for part in text.split(",")]
        return {int(stage): int(planes) for stage, planes in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STAGE:L pairs such as 2:12,4:10, got {text!r}") from None


def stage_or_conv(text: str) -> int | str:
    """HASTE's ``start_layer``: a stage number, or the qualified name of the first conv to replace (an
    argparse type; HASTE checks that the model has it)."""
    return int(text) if text.isdigit() else text


def fraction_list(text: str) -> list[float]:
    """Comma-separated fractions in (0, 1) (an argparse type)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in (0, 1), got {text!r}")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18", help="bench model (CIFAR form)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "cnnkit" / "haste_cifar"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="0: full epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", default="onecycle", help="cosine | onecycle | multistep | constant")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where the model trains"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers for training")
    parser.add_argument(
        "--cpu-amp",
        action="store_true",
        help="train on CPU with bfloat16 autocast and channels-last (about 3x faster with native bf16)",
    )
    parser.add_argument(
        "--data-on-device",
        action="store_true",
        help="train with the data read once onto the device, cropped and flipped there",
    )
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument(
        "--eval-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where the accuracy and FLOPs sweep runs (cuda: float32 without TF32; needs --no-latency)",
    )
    parser.add_argument(
        "--no-latency", action="store_true", help="accuracy and FLOPs only (no timings): a quick sweep"
    )
    parser.add_argument(
        "--hyperplanes", type=int_list, default="8,10,12,14,16", help="comma-separated values of L"
    )
    parser.add_argument(
        "--stage-hyperplanes",
        type=stage_map,
        default=None,
        help="L per stage, STAGE:L pairs (2:12,4:10), overriding --hyperplanes in those stages",
    )
    parser.add_argument(
        "--patch", type=int, default=4, help="HASTE output tile side P (>= 32: one tile per image)"
    )
    parser.add_argument("--sparsity", type=float, default=2 / 3, help="HASTE projection sparsity s")
    parser.add_argument(
        "--kernel",
        choices=("auto", "native", "torch"),
        default="auto",
        help="HASTE's per-image bucketing and merges: the C kernel (native), PyTorch ops, or auto",
    )
    parser.add_argument(
        "--start-layer",
        type=stage_or_conv,
        default=2,
        help="HASTE start: a stage number, or the name of the first conv replaced (layer4.0.conv2)",
    )
    parser.add_argument(
        "--haste-seeds",
        type=int_list,
        default="0",
        help="comma-separated seeds of HASTE's projections: one row per L and seed",
    )
    parser.add_argument(
        "--min-out-pixels", type=int, default=0, help="HASTE: leave convs with smaller output maps dense"
    )
    parser.add_argument(
        "--allocate",
        type=fraction_list,
        default=None,
        help="targets of the model's FLOPs reduction (0.40,0.42): one row each, with L per layer chosen from "
        "per-layer sensitivities on the validation half (cnnkit.efficiency.haste_tuning), whatever --split",
    )
    parser.add_argument(
        "--allocate-images", type=int, default=1000, help="validation images for the per-layer sensitivities"
    )
    parser.add_argument(
        "--allocate-candidates",
        type=int_list,
        default="8,10,12,14,16",
        help="the values of L a layer may take",
    )
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument(
        "--split",
        default="all",
        choices=("all", "validation", "test"),
        help="which test images: all, or one half of the seeded shuffle (validation: the first 5,000, to "
        "tune on; test: the other 5,000, to report on)",
    )
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument(
        "--latency-images", type=int, default=128, help="distinct test images the timed forwards cycle over"
    )
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per latency measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model=args.model,
        dataset="cifar10_jpeg",
        data_root=args.data_root,
        epochs=args.epochs,
        max_steps_per_epoch=args.steps_per_epoch or None,
        batch_size=args.batch_size,
        optimizer={"lr": args.lr, "nesterov": True},
        schedule={"name": args.schedule},
        protocol="last",
        device=args.device,
        num_workers=args.num_workers,
        cpu_amp=args.cpu_amp,
        data_on_device=args.data_on_device,
        measure_latency=False,
        progress=False,
        seed=args.seed,
    )


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, RunConfig]:
    """The trained dense model: from the cached checkpoint when its run is complete, else trained now."""
    cfg = train_config(args)
    run_dir = Path(args.cache_dir) / f"{cfg.model}-{cfg.key()}"
    path = run_dir / "checkpoint.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
    if blob is None or blob["epoch"] < cfg.epochs:
        started = time.perf_counter()
        metrics = run(cfg, run_dir)
        print(
            f"trained {cfg.model} for {metrics['steps']} steps in {time.perf_counter() - started:.0f} s: "
            f"test top-1 {metrics['test_top1']:.2f} % (checkpoint {path})"
        )
        blob = torch.load(path, map_location="cpu", weights_only=True)
    else:
        print(f"reusing the trained {cfg.model} from {path} ({blob['step']} steps)")
    model = build_model(cfg)
    model.load_state_dict(blob["model"])
    return model.eval(), cfg


def split_indices(total: int, count: int, split: str, seed: int) -> list[int]:
    """The first ``count`` of a seeded shuffle of ``range(total)``, or of its first (``"validation"``) or
    second (``"test"``) half: the two halves never share an index."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    half = total // 2
    pool = {"all": order, "validation": order[:half], "test": order[half:]}[split]
    return [int(i) for i in pool[:count]]


def test_images(args: argparse.Namespace, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``--test-images`` of a seeded shuffle of the test split (the folder is sorted by class),
    or of one half of it (``--split``: disjoint halves, to tune on one and report on the other), decoded
    once."""
    test = build_datasets(cfg)["test"]
    chosen = split_indices(len(test), args.test_images, args.split, args.seed)  # type: ignore[arg-type]
    loader = DataLoader(Subset(test, chosen), batch_size=256, shuffle=False)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = 0
    for xb, yb in zip(torch.split(x, batch), torch.split(y, batch), strict=True):
        correct += int((model(xb).argmax(1) == yb).sum())
    return 100.0 * correct / len(y)


def seconds(model: nn.Module, batches: list[torch.Tensor], min_run_time: float, clock: Any) -> float:
    """Median seconds per forward, cycling through ``batches``: HASTE's work (and oneDNN's kernel for
    each reduced depth) changes with the image, so one repeated image would flatter it."""
    from torch.utils import benchmark

    env = {"model": model, "batches": itertools.cycle(batches), "next": next}
    timer = benchmark.Timer("model(next(batches))", globals=env, timer=clock)
    with torch.no_grad():
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)


class OneDNNConv(nn.Module):
    """``conv`` computed by oneDNN (``aten.mkldnn_convolution``), the backend HASTE's reduced convs use."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.ops.aten.mkldnn_convolution(
            x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups
        )


def plain_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The plain ``nn.Conv2d`` of ``model`` (not HASTE's, which subclass it) that oneDNN can run."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d and m.padding_mode == "zeros"}


def tuned_copy(
    original: nn.Module, x: torch.Tensor, clock: Any, min_run_time: float = 0.1
) -> tuple[nn.Module, int]:
    """A copy of ``original`` in which every plain conv (:func:`plain_convs`) runs on the faster of
    PyTorch's own choice and oneDNN at its input shape for ``x`` (timed here): of the dense model, the
    strongest dense baseline, so HASTE's speed-up cannot come from a better conv backend alone. Returns the
    copy and the number of convs switched to oneDNN."""
    model = copy.deepcopy(original).eval()
    inputs: dict[str, torch.Tensor] = {}
    convs = plain_convs(model)
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=n: inputs.__setitem__(name, args[0]))
        for n, m in convs.items()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    faster = [
        name
        for name, conv in convs.items()
        if seconds(OneDNNConv(conv), [inputs[name]], min_run_time, clock)
        < seconds(conv, [inputs[name]], min_run_time, clock)
    ]
    switch_to_onednn(model, faster)
    return model, len(faster)


def switch_to_onednn(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Run ``model``'s plain convs among ``names`` on oneDNN, in place (other names are skipped: a HASTE
    model keeps its HASTE convs where the dense model had plain ones)."""
    convs = plain_convs(model)
    for name in set(names) & set(convs):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, OneDNNConv(convs[name]))
    return model


def onednn_names(model: nn.Module) -> list[str]:
    """The convs that :func:`tuned_copy` switched to oneDNN in ``model``."""
    return [name for name, module in model.named_modules() if isinstance(module, OneDNNConv)]


class SlicedConv(nn.Module):
    """``conv`` over only the first ``depth`` input channels: the dense conv HASTE would run if hashing,
    bucketing and merging cost nothing and every tile had ``depth`` buckets (the speed ceiling).

    With ``reads`` > 0 (set by :func:`merge_bound`) it also reads ``conv``'s whole weight ``reads`` times
    per image (a sum, result unused): the filter merge's irreducible memory traffic, since every filter
    slice belongs to some bucket and so is read once per tile (the merge bound)."""

    def __init__(self, conv: nn.Conv2d, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.reads = 0
        self.conv = nn.Conv2d(
            depth, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, :depth])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.register_buffer("full_weight", conv.weight.detach())  # shared with conv: read, never written

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reads:
            times = x.shape[0] * self.reads
            self.full_weight.expand(times, *self.full_weight.shape).sum()
        return self.conv(x[:, : self.depth])


def ceiling_model(dense: nn.Module, haste_model: nn.Module) -> nn.Module:
    """A copy of ``dense`` whose HASTE-replaced convs are :class:`SlicedConv` of depth = the layer's mean
    bucket count over the tiles it saw: an optimistic bound on HASTE's time at these buckets (hashing and
    merging free)."""
    from cnnkit.efficiency.haste import haste_layers

    model = copy.deepcopy(dense).eval()
    for name, layer in haste_layers(haste_model):
        tally = layer.tally
        depth = max(1, round(layer.in_channels * tally.bucket_fraction / max(1, tally.tiles)))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, SlicedConv(layer, depth))
    return model


def merge_bound(ceiling: nn.Module, haste_model: nn.Module) -> nn.Module:
    """A copy of the (tuned) ``ceiling`` whose sliced convs also read their full weight once per tile of
    each image: the ceiling plus the filter merge's memory traffic, a tighter optimistic bound (a fused
    kernel included) that the ceiling's small, cache-resident sliced weights leave out."""
    from cnnkit.efficiency.haste import haste_layers

    layers = haste_layers(haste_model)
    tiles = {name: layer.tally.tiles // max(1, layer.tally.images) for name, layer in layers}
    model = copy.deepcopy(ceiling)
    for name, module in model.named_modules():
        if isinstance(module, SlicedConv):
            module.reads = max(1, tiles[name])
    return model


def tuned_per_batch(
    args: argparse.Namespace, model: nn.Module, x: torch.Tensor, clock: Any
) -> dict[int, tuple[nn.Module, int]]:
    """:func:`tuned_copy` of ``model`` for each timed batch size: (tuned copy, convs on oneDNN)."""
    tuning_time = min(0.1, args.min_run_time)  # seconds per conv and backend
    return {b: tuned_copy(model, x[:b].contiguous(), clock, tuning_time) for b in (1, args.latency_batch)}


def tuned_ceilings(
    args: argparse.Namespace, dense: nn.Module, haste_model: nn.Module, x: torch.Tensor, clock: Any
) -> dict[int, nn.Module]:
    """The ceiling model for each timed batch size, each conv on its faster backend (as the tuned dense)."""
    tuned = tuned_per_batch(args, ceiling_model(dense, haste_model), x, clock)
    return {batch: model for batch, (model, _) in tuned.items()}


def with_haste(
    args: argparse.Namespace,
    dense: nn.Module,
    x: torch.Tensor,
    planes: int,
    seed: int = 0,
    layer_hyperplanes: dict[str, int] | None = None,
) -> tuple[nn.Module, Any]:
    method = create_method(
        "haste",
        hyperplanes=planes,
        seed=seed,
        patch=args.patch,
        sparsity=args.sparsity,
        start_layer=args.start_layer,
        min_out_pixels=args.min_out_pixels,
        stage_hyperplanes=args.stage_hyperplanes,
        layer_hyperplanes=layer_hyperplanes,
        kernel=args.kernel,
    )
    model = method.apply(copy.deepcopy(dense), Context(example_input=x[:2]))
    return model.eval(), method


def tuned_baselines(
    args: argparse.Namespace, dense: nn.Module, x: torch.Tensor, clock: Any
) -> dict[int, nn.Module]:
    """The tuned dense model for each timed batch size."""
    tuned = {}
    for batch, (model, switched) in tuned_per_batch(args, dense, x, clock).items():
        with torch.no_grad():
            gap = float((model(x[:batch]) - dense(x[:batch])).abs().max())
        print(f"tuned dense baseline, batch {batch}: {switched} convs on oneDNN (max |diff| {gap:.1e})")
        tuned[batch] = model
    return tuned


def compressed_gap(model: nn.Module, x: torch.Tensor) -> float:
    """Max |compressed − simulate| over the HASTE layers, each given the same input (the one it gets in a
    compressed forward of ``x``); leaves ``model`` in compressed mode. Layer by layer, since through the
    whole model a rounding-level difference can flip a later layer's hash bit (a value on a hyperplane),
    which changes that layer's buckets: both outputs are then right, but for different codes."""
    from cnnkit.efficiency.haste import haste_layers, set_mode

    layers = haste_layers(model)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, (a[0], o)))
        for name, layer in layers
    ]
    with torch.no_grad():
        set_mode(model, "compressed")
        model(x)
        for h in hooks:
            h.remove()
        gap = 0.0
        for name, layer in layers:
            layer.mode = "simulate"
            inputs, fast = seen[name]
            gap = max(gap, float((layer(inputs) - fast).abs().max()))
            layer.mode = "compressed"
    return gap


def timings(
    args: argparse.Namespace, models_at: dict[int, tuple[nn.Module, ...]], x: torch.Tensor, clock: Any
) -> list[tuple[float, ...]]:
    """For each timed batch size (the keys of ``models_at``), the median seconds of each of its models,
    measured in three interleaved rounds so drifting load hits all alike."""
    per_batch = []
    for batch, models in models_at.items():
        pool = min(len(x) // batch, max(1, args.latency_images // batch))
        xb = [x[i * batch : (i + 1) * batch].contiguous() for i in range(pool)]
        rounds = [tuple(seconds(m, xb, args.min_run_time, clock) for m in models) for _ in range(3)]
        per_batch.append(tuple(statistics.median(r[i] for r in rounds) for i in range(len(models))))
    return per_batch


def eval_device(args: argparse.Namespace) -> torch.device:
    """The sweep's device, checked before any training. Timings are CPU timings, so a CUDA sweep must be
    ``--no-latency``."""
    if args.eval_device == "cpu":
        return torch.device("cpu")
    if not (args.no_latency or args.train_only):
        raise SystemExit(
            "--eval-device cuda measures accuracy and FLOPs only (no CPU timings): add --no-latency"
        )
    if not torch.cuda.is_available():
        raise SystemExit("--eval-device cuda: CUDA is not available here; use --eval-device cpu")
    return torch.device("cuda")


def evaluate_haste(args: argparse.Namespace, dense: nn.Module, cfg: RunConfig, device: torch.device) -> None:
    if device.type == "cuda":  # true float32 convs and matmuls, as on CPU, so hash bits see the same values
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    x, y = (t.to(device) for t in test_images(args, cfg))
    dense = dense.to(device)
    single = torch.get_num_threads() == 1
    clock = time.process_time if single else time.perf_counter
    clock_name = "process CPU time (1 thread)" if single else "wall"
    print(
        f"{len(y)} test images (seeded subset, split {args.split}); HASTE patch={args.patch}, "
        f"s={args.sparsity:.3g}, L per stage {args.stage_hyperplanes or '-'}, "
        f"start {args.start_layer}, min_out_pixels={args.min_out_pixels}, kernel {args.kernel}, "
        f"on {device.type}; " + ("no timings" if args.no_latency else f"latency clock: {clock_name}")
    )
    base = accuracy(dense, x, y, args.eval_batch)
    tuned = {} if args.no_latency else tuned_baselines(args, dense, x, clock)
    rows = []
    seeds = args.haste_seeds
    for L, seed in itertools.product(args.hyperplanes, seeds):
        label = str(L) if seeds == [0] else f"{L}, seed {seed}"
        if args.stage_hyperplanes:
            per_stage = sorted(args.stage_hyperplanes.items())
            label += " (" + ", ".join(f"stage {k}: {v}" for k, v in per_stage) + ")"
        rows.append(evaluate_row(args, dense, x, y, tuned, clock, label, with_haste(args, dense, x, L, seed)))
    for target, per_layer in layer_allocations(args, dense, cfg, device):
        label = f"per layer, {100 * target:.1f} % predicted"
        print(f"  L per layer ({label}): {json.dumps(per_layer)}")
        haste = with_haste(args, dense, x, args.hyperplanes[0], seeds[0], per_layer)
        rows.append(evaluate_row(args, dense, x, y, tuned, clock, label, haste))
    print_table(args, base, rows)


def evaluate_row(
    args: argparse.Namespace,
    dense: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tuned: dict[int, nn.Module],
    clock: Any,
    label: str,
    haste: tuple[nn.Module, Any],
) -> tuple[Any, ...]:
    """One table row: accuracy and FLOPs of the HASTE model (simulate mode), its paths' agreement and the
    timings."""
    model, method = haste
    top1 = accuracy(model, x, y, args.eval_batch)  # simulate mode: the reference path
    stats = method.stats(model)
    gap = compressed_gap(model, x[: args.latency_batch])
    ceilings = {} if args.no_latency else tuned_ceilings(args, dense, model, x, clock)
    bounds = {b: merge_bound(ceilings[b], model) for b in ceilings}
    # the convs HASTE leaves dense on the tuned dense model's backends: tuned against tuned
    tuned_haste = {b: switch_to_onednn(copy.deepcopy(model), onednn_names(tuned[b])) for b in tuned}
    timed = timings(
        args, {b: (dense, tuned[b], model, tuned_haste[b], ceilings[b], bounds[b]) for b in tuned}, x, clock
    )
    print(f"  L={label}: top-1 {top1:.2f} %, FLOPs -{100 * stats['flops_reduction']:.1f} %", flush=True)
    return (label, top1, stats, gap, timed)


def layer_allocations(
    args: argparse.Namespace, dense: nn.Module, cfg: RunConfig, device: torch.device
) -> list[tuple[float, dict[str, int]]]:
    """For each ``--allocate`` target, L per layer (:func:`allocate_hyperplanes`) from the sensitivities."""
    if not args.allocate:
        return []
    sensitivity = validation_sensitivity(args, dense, cfg, device)
    allocations = []
    for target in args.allocate:
        try:
            allocations.append((target, allocate_hyperplanes(sensitivity, target)))
        except ValueError as err:  # one unreachable target must not lose the other rows
            print(f"  --allocate {target}: skipped, {err}")
    return allocations


def validation_sensitivity(
    args: argparse.Namespace, dense: nn.Module, cfg: RunConfig, device: torch.device
) -> Sensitivity:
    """Per-layer sensitivities (:func:`layer_sensitivity`) on the first ``--allocate-images`` of the
    validation half, never the test half; cached as JSON beside the checkpoint under the settings."""
    settings = [args.patch, args.sparsity, args.start_layer, args.min_out_pixels, args.haste_seeds[0]]
    settings += [args.allocate_candidates, args.allocate_images, args.seed]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    path = Path(args.cache_dir) / f"{cfg.model}-{cfg.key()}" / f"sensitivity-{key}.json"
    if path.exists():
        print(f"reusing the per-layer sensitivities in {path}")
        return Sensitivity.from_dict(json.loads(path.read_text()))
    chosen = argparse.Namespace(**{**vars(args), "split": "validation", "test_images": args.allocate_images})
    x, _ = test_images(chosen, cfg)
    x = x.to(device)
    model, _ = with_haste(args, dense, x, args.hyperplanes[0], args.haste_seeds[0])
    started = time.perf_counter()
    sensitivity = layer_sensitivity(model, x, args.allocate_candidates, args.eval_batch)
    print(f"per-layer sensitivities on {len(x)} validation images in {time.perf_counter() - started:.0f} s")
    path.write_text(json.dumps(sensitivity.to_dict()))
    return sensitivity


def print_table(args: argparse.Namespace, base: float, rows: list[tuple[Any, ...]]) -> None:
    nb = args.latency_batch
    head = (
        "| L | top-1 % | drop pp | FLOPs red. (model) | FLOPs red. (HASTE convs) | buckets/C | "
        "sim-vs-fast max diff (per layer) | FLOPs red. (model, overhead not counted) |"
    )
    if not args.no_latency:
        head += (
            " ms b1: dense / tuned / HASTE / tuned HASTE / ceiling / merge bound | "
            "speed-up b1 vs dense (tuned vs tuned) | ceiling / merge bound b1 vs dense (vs tuned) | "
            f"ms b{nb}: dense / tuned / HASTE / tuned HASTE / ceiling / merge bound | "
            f"speed-up b{nb} vs dense (tuned vs tuned) | ceiling / merge bound b{nb} vs dense (vs tuned) |"
        )
    print()
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    dense_row = f"| dense | {base:.2f} | 0.00 | 0.0 % | 0.0 % | 1.000 | - | 0.0 % |"
    print(dense_row + " - |" * (head.count("|") - dense_row.count("|")))
    for L, top1, stats, gap, timed in rows:
        cells = [
            " " + " / ".join(f"{1e3 * v:.2f}" for v in (d, t, h, th, c, m)) + " | "
            f"{d / h:.2f}x ({t / th:.2f}x) | {d / c:.2f}x / {d / m:.2f}x ({t / c:.2f}x / {t / m:.2f}x) |"
            for d, t, h, th, c, m in timed
        ]
        print(
            f"| {L} | {top1:.2f} | {base - top1:.2f} | {100 * stats['flops_reduction']:.1f} % | "
            f"{100 * stats['haste_flops_reduction']:.1f} % | {stats['bucket_fraction']:.3f} | {gap:.1e} | "
            f"{100 * stats['flops_reduction_without_overhead']:.1f} % |" + "".join(cells)
        )
    print(
        "\nGoal (issue 7): FLOPs reduction >= 40 % at drop <= 1.5 pp; "
        "CPU speed-up (compressed path) >= 1.2x. "
        "Paper: -46.7 % FLOPs at -1.25 pp (ResNet-34, CIFAR-10)."
    )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = eval_device(args)  # before training: a bad combination fails at once
    print(describe_machine(torch.device("cpu")), flush=True)
    model, cfg = trained_model(args)
    if args.train_only:
        return
    evaluate_haste(args, model, cfg, device)


if __name__ == "__main__":
    main()
