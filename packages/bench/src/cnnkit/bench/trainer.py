"""One trainer for every method: drives the Method events, checkpoints, resumes and measures.

Choices (documented for users):
- The learning-rate schedule is stepped per optimizer step (milestones are fractions of training).
- On CUDA, mixed precision uses bfloat16 autocast (no loss scaling needed) and channels_last memory format;
  on CPU too with ``cpu_amp`` (opt-in: fast only where the CPU has native bfloat16).
- On CPU, runs are seeded and deterministic (``torch.use_deterministic_algorithms`` during the run).
- The data order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same batches.
- ``data_on_device``: the splits are read once onto the device and the training batches (the same indices)
  are cropped and flipped there, with draws that depend only on ``(seed, e)`` too
  (:mod:`cnnkit.bench.data.on_device`).
- Protocol ``val``: the checkpoint with the best validation top-1 is evaluated on test (papers' protocol);
  only checkpoints of the methods' latest phase compete (``Method.checkpoint_phase``: IMP's rounds).
- Test metrics are measured on ``method.export(model)``: the model one would deploy.
- Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is data-parallel (DDP); ``batch_size`` stays the global
  batch and only rank 0 writes checkpoints. See :mod:`cnnkit.bench.distributed` for what holds for every
  method family. Without torchrun no process group is created and nothing changes.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
)

from cnnkit.bench import distributed
from cnnkit.bench.distributed import DistInfo, ShardedBatchSampler
from cnnkit.bench.runconfig import RunConfig
from cnnkit.core.context import Batch, Context
from cnnkit.core.cost import count_flops, count_params
from cnnkit.core.loop import MethodRunner
from cnnkit.core.method import Method, MethodStack, create_method
from cnnkit.core.plugins import get_registries

if TYPE_CHECKING:
    from cnnkit.bench.data.on_device import DeviceSplit

__all__ = ["RunFailed", "Trainer", "environment", "measure_latency", "run"]

SCORING_BATCHES = 10


class RunFailed(RuntimeError):
    """A run stopped (non-finite loss, bad configuration, ...); the message says why."""


_ONEDNN_MIN_STRIDED_1X1_CHANNELS = 16


def _refuse_convs_that_corrupt_memory(model: nn.Module) -> None:
    """``cpu_amp`` trains channels-last on oneDNN, whose backward of a 1×1 conv with stride > 1 and fewer
    input channels than its channel block writes past its workspace (oneDNN issue #6035; torch 2.14.1,
    bfloat16 on AVX512: heap corruption with 8 and 12 input channels, none seen with 16 or more): refuse
    such a model rather than crash or train on corrupted memory."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.kernel_size == (1, 1)
            and max(module.stride) > 1
            and module.in_channels < _ONEDNN_MIN_STRIDED_1X1_CHANNELS
        ):
            raise RunFailed(
                f"cpu_amp=True cannot train this model: its 1x1 conv {name!r} with stride "
                f"{tuple(module.stride)} has {module.in_channels} input channels (fewer than "
                f"{_ONEDNN_MIN_STRIDED_1X1_CHANNELS}), a shape whose channels-last backward corrupts memory "
                "on CPU (oneDNN issue #6035); train with cpu_amp=False (or channels_last=False, slower)"
            )


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best_val_top1: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, Any] | None = None
    best_val: dict[str, float] = field(default_factory=dict)
    best_phase: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str, dist: DistInfo | None = None) -> torch.device:
    """``auto`` picks CUDA when available; under DDP each process uses ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RunFailed("device='cuda' was requested but CUDA is not available; use device='cpu' or 'auto'")
    if name == "cuda" and dist is not None:
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for seeding
        pass


def build_datasets(cfg: RunConfig) -> dict[str, Dataset[Any]]:
    """The splits the protocol needs: train/val/test (``val``) or train_full/test (``last``)."""
    factory = get_registries().datasets.get(cfg.dataset).load()
    splits = (
        {"train": "train", "val": "val", "test": "test"}
        if cfg.protocol == "val"
        else {"train": "train_full", "test": "test"}
    )
    kwargs = {"root": cfg.data_root, "download": cfg.download, **cfg.dataset_args}
    return {role: factory(split=split, **kwargs) for role, split in splits.items()}


def read_onto_device(
    cfg: RunConfig, data: dict[str, Dataset[Any]], device: torch.device
) -> dict[str, DeviceSplit]:
    """Every split of ``data`` as a :class:`DeviceSplit` on ``device`` (``RunConfig.data_on_device``): read
    without augmentation; the training split replays its augmentation per batch."""
    from cnnkit.bench.data.on_device import DataOnDeviceError, DeviceSplit

    try:
        return {
            role: DeviceSplit.read(
                split, device=device, augmented=role == "train", num_workers=cfg.num_workers
            )
            for role, split in data.items()
        }
    except DataOnDeviceError as exc:
        raise RunFailed(f"dataset {cfg.dataset!r}: {exc}") from exc


def build_model(cfg: RunConfig, train_set: Dataset[Any] | None = None) -> nn.Module:
    """The model factory called with ``num_classes`` / ``in_channels`` of the data (``model_args`` override).

    They are read from ``train_set`` when given (its first input's channels and its ``num_classes``), so
    dataset options that change them (e.g. the synthetic ``shape``) are honoured; else from the dataset spec.
    """
    spec = get_registries().datasets.get(cfg.dataset)
    defaults: dict[str, Any] = {}
    num_classes = getattr(train_set, "num_classes", None) or spec.num_classes
    if num_classes is not None:
        defaults["num_classes"] = int(num_classes)
    if train_set is not None:
        defaults["in_channels"] = int(train_set[0][0].shape[0])
    elif spec.input_shape is not None:
        defaults["in_channels"] = spec.input_shape[0]
    factory = get_registries().models.get(cfg.model).load()
    model: nn.Module = factory(**{**defaults, **cfg.model_args})
    return model


def build_method(cfg: RunConfig) -> Method:
    return MethodStack([create_method(ref.name, **ref.config) for ref in cfg.methods])


def _loader(
    dataset: Dataset[Any],
    cfg: RunConfig,
    *,
    shuffle: bool,
    seed: int,
    batch_size: int,
    shard: DistInfo | None = None,
    num_workers: int | None = None,
) -> DataLoader[Any]:
    """Exactly ``DataLoader(dataset, batch_size, shuffle, generator=Generator(seed))``, spelled out so that
    under DDP each rank can take its slice of the very same global batches (``shard``)."""
    generator = torch.Generator().manual_seed(seed)
    sized: Any = dataset
    sampler: Sampler[int] = RandomSampler(sized, generator=generator) if shuffle else SequentialSampler(sized)
    global_batches = BatchSampler(sampler, batch_size, drop_last=False)
    batches: Sampler[list[int]] = global_batches
    if shard is not None:
        batches = ShardedBatchSampler(global_batches, shard.rank, shard.world_size)
    workers = cfg.num_workers if num_workers is None else num_workers
    return DataLoader(dataset, batch_sampler=batches, generator=generator, num_workers=workers)


class _ScoringBatches:
    """Re-iterable: the first ``limit`` training batches (fixed order), on the run's device."""

    def __init__(self, dataset: Dataset[Any], cfg: RunConfig, device: torch.device) -> None:
        self.loader = _loader(dataset, cfg, shuffle=True, seed=cfg.seed + 7919, batch_size=cfg.batch_size)
        self.device = device

    def __iter__(self) -> Iterator[Batch]:
        for i, (x, y) in enumerate(self.loader):
            if i >= SCORING_BATCHES:
                return
            yield x.to(self.device), y.to(self.device)


class Trainer:
    """Trains ``cfg.model`` on ``cfg.dataset`` with ``cfg.methods``; see the module docstring.

    Args:
        cfg: the run.
        run_dir: where the checkpoint lives (``checkpoint.pt``); a run with an existing checkpoint resumes.
    """

    replicas_agreed_at_wrap: bool
    """Under DDP: whether every rank's model (weights, masks, buffers) was bitwise identical after the
    methods' ``apply``, before DDP's broadcast from rank 0 (always True in a single process)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = distributed.init_from_env(cfg.device)
        self.device = resolve_device(cfg.device, self.dist)
        self.cuda = self.device.type == "cuda"
        fast = self.cuda or cfg.cpu_amp
        self.amp = fast and cfg.amp
        self.channels_last = fast and cfg.channels_last
        self.state = _State()
        self.replicas_agreed_at_wrap = True
        self.on_device: dict[str, DeviceSplit] = {}

    # -- setup --------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.data = build_datasets(cfg)
        if cfg.data_on_device:
            self.on_device = read_onto_device(cfg, self.data, self.device)
        self.steps_per_epoch = self._steps_in(len(self.data["train"]))  # type: ignore[arg-type]
        if cfg.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        model = build_model(cfg, self.data["train"]).to(self.device)
        if self.channels_last:
            if not self.cuda:
                _refuse_convs_that_corrupt_memory(model)
            model = model.to(memory_format=torch.channels_last)
        example = next(iter(_loader(self.data["train"], cfg, shuffle=False, seed=0, batch_size=2)))[0]
        self.ctx = Context(
            example_input=example.to(self.device),
            batches=_ScoringBatches(self.data["train"], cfg, self.device),
            total_steps=self.total_steps,
            total_epochs=cfg.epochs,
            device=self.device,
            seed=cfg.seed,
        )
        if self.dist is not None:
            self.ctx.extras["cnnkit.distributed"] = {
                "rank": self.dist.rank,
                "world_size": self.dist.world_size,
            }
        self.method = build_method(cfg)
        self.runner = MethodRunner(self.method, self.ctx)
        self.model = self.runner.apply(model)
        self.train_model = self._wrap(self.model)
        self.optimizer = self._optimizer()
        self.runner.set_optimizer(self.optimizer)
        self.scheduler = self._scheduler()

    def _steps_in(self, n: int) -> int:
        """Steps per epoch, ``ceil(n / batch_size)``; DDP drops a last batch smaller than the world."""
        world = self.dist.world_size if self.dist is not None else 1
        if self.cfg.batch_size < world:
            raise RunFailed(
                f"batch_size ({self.cfg.batch_size}) is the global batch: it must be >= the {world} ranks"
            )
        full, last = divmod(n, self.cfg.batch_size)
        return full + int(last >= world)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the applied model (the model itself in one process); methods keep ``self.model``."""
        if self.dist is None:
            return model
        self.replicas_agreed_at_wrap = distributed.replicas_agree(model)
        if not self.replicas_agreed_at_wrap and self.dist.is_main:
            warnings.warn(
                "the ranks' models differed after the methods' apply; DDP makes them rank 0's", stacklevel=2
            )
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)

    def _reseed_rank(self) -> None:
        """Ranks > 0 draw their own training noise (dropouts); rank 0 keeps the single-process stream."""
        if self.dist is not None and self.dist.rank > 0:
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.dist.rank * 7_919 + self.state.epoch) % 2**63)

    def _optimizer(self) -> torch.optim.Optimizer:
        opt = self.cfg.optimizer
        groups = self.runner.param_groups(self.model, weight_decay=opt.weight_decay)
        if opt.name == "sgd":
            return torch.optim.SGD(
                groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0
            )
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas)

    def _scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        sched, total = self.cfg.schedule, self.total_steps
        if sched.name == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.cfg.optimizer.lr, total_steps=total
            )
        warmup = int(sched.warmup_fraction * total)
        milestones = [int(m * total) for m in sched.milestones]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if sched.name == "multistep":
                return float(sched.gamma ** sum(step >= m for m in milestones))
            if sched.name == "cosine":
                progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    def _save(self) -> None:
        path = self.checkpoint_path
        if path is None or not distributed.is_main():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        s = self.state
        blob = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "best_val_top1": s.best_val_top1,
            "best_epoch": s.best_epoch,
            "best_state": s.best_state,
            "history": s.history,
            "best_val": s.best_val,
            "best_phase": s.best_phase,
            "train_seconds": s.train_seconds,
            "train_samples": s.train_samples,
            "config_key": self.cfg.key(),
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)

    def _maybe_resume(self) -> bool:
        path = self.checkpoint_path
        distributed.barrier()  # rank 0 has finished writing whatever it wrote before
        found = path is not None and path.exists()
        if len(set(distributed.all_gather(found))) > 1:
            raise RunFailed(
                f"the checkpoint {path} is visible on some ranks only: under torchrun the store (run folder) "
                "must be on a filesystem every node shares"
            )
        if path is None or not found:
            return False
        blob = torch.load(path, map_location=self.device, weights_only=True)
        if blob.get("config_key") != self.cfg.key():
            raise RunFailed(
                f"checkpoint {path} belongs to another configuration; remove it or use another run dir"
            )
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.method.load_state_dict(blob["method"])
        torch.set_rng_state(blob["rng"].cpu())
        self.state = _State(
            epoch=blob["epoch"],
            step=blob["step"],
            best_val_top1=blob["best_val_top1"],
            best_epoch=blob["best_epoch"],
            best_state=blob["best_state"],
            history=blob["history"],
            best_val=blob["best_val"],
            best_phase=blob.get("best_phase", 0),
            train_seconds=blob["train_seconds"],
            train_samples=blob["train_samples"],
        )
        self.ctx.step, self.ctx.epoch = self.state.step, self.state.epoch
        return True

    # -- training --------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or resume) and return the run's metrics."""
        started = time.perf_counter()
        previous = torch.are_deterministic_algorithms_enabled()
        try:
            if self.cfg.deterministic and not torch.cuda.is_available():
                torch.use_deterministic_algorithms(True, warn_only=True)
            self._setup()
            self._maybe_resume()
            self._reseed_rank()
            while self.state.epoch < self.cfg.epochs:
                self._train_epoch()
            metrics = self._final_metrics()
        finally:
            torch.use_deterministic_algorithms(previous)
        metrics["wall_time_s"] = time.perf_counter() - started
        return metrics

    def _batches(self) -> Iterator[Batch]:
        seed = self.cfg.seed * 100_003 + self.state.epoch
        batches: Iterable[Batch] = (
            self._device_batches(seed) if self.on_device else self._loaded_batches(seed)
        )
        for x, y in itertools.islice(batches, self.steps_per_epoch):  # never loads an unused batch
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def _loaded_batches(self, seed: int) -> DataLoader[Any]:
        return _loader(
            self.data["train"],
            self.cfg,
            shuffle=True,
            seed=seed,
            batch_size=self.cfg.batch_size,
            shard=self.dist,
        )

    def _device_batches(self, seed: int) -> Iterator[Batch]:
        """The loader's batches (the same indices, drawn by the same sampler) gathered on the device; the
        epoch's indices go there in one copy, not one blocking copy per step."""
        split = self.on_device["train"]
        draws = split.draws(seed)
        positions = _loader(
            range(len(split)),  # type: ignore[arg-type]
            self.cfg,
            shuffle=True,
            seed=seed,
            batch_size=self.cfg.batch_size,
            shard=self.dist,
            num_workers=0,
        )
        batches = list(itertools.islice(positions, self.steps_per_epoch))
        if not batches:
            return
        flat = torch.cat(batches).to(split.images.device)
        for indices in torch.split(flat, [len(b) for b in batches]):
            yield split.batch(indices, draws)

    def _train_epoch(self) -> None:
        from tqdm.auto import tqdm

        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(
            self._batches(),
            total=self.steps_per_epoch,
            leave=False,
            disable=None if self.cfg.progress else True,  # None: off when stderr is no terminal
            desc=f"epoch {self.state.epoch + 1}/{self.cfg.epochs}",
        )
        started = time.perf_counter()
        for x, y in bar:
            loss, n = self._train_step(x, y)
            total, count = total + loss * n, count + n
            bar.set_postfix(loss=f"{loss:.3f}")
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.state.train_seconds += time.perf_counter() - started
        self.state.train_samples += count
        self.runner.end_epoch()
        self.state.epoch += 1
        self._check_replicas()
        record = {"epoch": float(self.state.epoch), "train_loss": total / max(1, count)}
        if "val" in self.data:
            val = self.evaluate(self.model, self.data["val"])
            record.update({f"val_{k}": v for k, v in val.items()})
            self._start_new_phase_if_any()
            if val["top1"] > self.state.best_val_top1:
                self.state.best_val_top1, self.state.best_epoch = val["top1"], self.state.epoch
                self.state.best_state = copy.deepcopy(self.model.state_dict())
                self.state.best_val = val
        self.state.history.append(record)
        self._save()

    def _start_new_phase_if_any(self) -> None:
        """Forget the best checkpoint when the methods entered a new phase (IMP: a new pruning round)."""
        phase = self.method.checkpoint_phase()
        if phase != self.state.best_phase:
            self.state.best_phase = phase
            self.state.best_val_top1, self.state.best_epoch = -1.0, -1
            self.state.best_state, self.state.best_val = None, {}

    def _check_replicas(self) -> None:
        """Under DDP: rank 0's buffers everywhere (BatchNorm statistics), then every rank must agree."""
        if self.dist is None:
            return
        distributed.broadcast_buffers(self.model)
        if not distributed.replicas_agree(self.model):
            raise RunFailed(
                f"the ranks' models differ after epoch {self.state.epoch}: a method updates its state "
                "differently on different ranks (not synchronised under DDP)"
            )

    def _global_loss(self, loss: torch.Tensor, n: int) -> tuple[torch.Tensor, float, int]:
        """DDP: the loss weighted so that the gradient average is the global mean's, its global value, and
        the global number of samples (one all-reduce)."""
        assert self.dist is not None
        total, count = distributed.all_reduce_sum([float(loss.detach()) * n, n], device=self.device)
        weight = n * self.dist.world_size / count
        return (loss if weight == 1.0 else loss * weight), total / count, int(count)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """One optimizer step; returns the step's (global) mean loss and number of samples."""
        runner, optimizer = self.runner, self.optimizer
        runner.before_step(x, y)
        optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.train_model(x)
            loss = runner.loss(self.model, output.float(), y)
        if self.dist is None:
            value, n = float(loss.detach()), len(y)  # the step's only host-device synchronization
        else:
            loss, value, n = self._global_loss(loss, len(y))
        if not math.isfinite(value):
            raise RunFailed(
                f"loss became {value} at epoch {self.state.epoch + 1}, step {self.state.step}: "
                "the run is stopped (try a lower learning rate)"
            )
        loss.backward()  # type: ignore[no-untyped-call]
        runner.after_backward()
        optimizer.step()
        runner.after_step()
        self.scheduler.step()
        self.state.step += 1
        return value, n

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # -- evaluation and metrics ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset[Any]) -> dict[str, float]:
        """Top-1 and top-5 accuracy (%) and mean cross-entropy on ``dataset`` (under DDP each rank evaluates a
        contiguous slice and the sums are all-reduced)."""
        model.eval()
        correct1 = correct5 = 0
        loss_sum, n = 0.0, 0
        for x, y in self._eval_batches(dataset):
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = model(x).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(dim=1).sum())
            n += len(y)
        model.train()
        correct1, correct5, loss_sum, n = distributed.all_reduce_sum(  # type: ignore[assignment]
            [correct1, correct5, loss_sum, n], device=self.device
        )
        return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}

    def _eval_batches(self, dataset: Dataset[Any]) -> Iterator[Batch]:
        """``dataset`` in order (under DDP this rank's contiguous slice): sliced from its device copy when
        the run holds one, else loaded."""
        size = len(dataset)  # type: ignore[arg-type]
        part = (
            range(size)
            if self.dist is None
            else distributed.shard_range(size, self.dist.rank, self.dist.world_size)
        )
        for role, split in self.on_device.items():
            if self.data.get(role) is dataset:
                yield from split.slices(self.cfg.eval_batch_size, part)
                return
        if self.dist is not None:
            dataset = Subset(dataset, list(part))
        yield from _loader(dataset, self.cfg, shuffle=False, seed=0, batch_size=self.cfg.eval_batch_size)

    def _final_metrics(self) -> dict[str, Any]:
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        stats = {f"method.{k}": float(v) for k, v in self.method.stats(self.model).items()}
        deployed = self.method.export(copy.deepcopy(self.model)).eval()
        test = self.evaluate(deployed, self.data["test"])
        stats.update({f"method.{k}": float(v) for k, v in self.method.test_stats(deployed).items()})
        params = count_params(deployed)
        flops = count_flops(deployed, self.ctx.example_input[:1])
        has_val = "val" in self.data
        metrics: dict[str, Any] = {
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "val_top1": self.state.best_val.get("top1") if has_val else None,
            "val_top5": self.state.best_val.get("top5") if has_val else None,
            "val_loss": self.state.best_val.get("loss") if has_val else None,
            "best_val_top1": self.state.best_val_top1 if has_val else None,
            "best_epoch": self.state.best_epoch if has_val else self.state.epoch,
            "train_loss": self.state.history[-1]["train_loss"] if self.state.history else None,
            "train_samples_per_s": self.state.train_samples / max(self.state.train_seconds, 1e-9),
            "params_total": params.total,
            "params_nonzero": params.nonzero,
            "params_trainable": params.trainable,
            "macs": flops.macs,
            "flops": flops.flops,
            "effective_macs": flops.effective_macs,
            "sparsity": 1.0 - params.nonzero / max(1, params.total),
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "device": str(self.device),
            "world_size": self.dist.world_size if self.dist is not None else 1,
            **stats,
        }
        if self.cfg.measure_latency and distributed.is_main():
            metrics.update(measure_latency(deployed, self.ctx.example_input[:1], self.device))
        metrics["peak_memory_mb"] = peak_memory_mb(self.device)
        return metrics


LATENCY_BATCHES = (1, 64)


def measure_latency(model: nn.Module, example: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Median latency (ms) at batch 1 and 64 on CPU, and on the GPU when the run used one
    (``torch.utils.benchmark``, which synchronizes CUDA), plus CPU throughput (images/s) at batch 64."""
    out: dict[str, float] = {}
    targets = [("cpu", torch.device("cpu"))] + ([("gpu", device)] if device.type == "cuda" else [])
    for label, target in targets:
        copy_on_target = copy.deepcopy(model).to(target).eval()
        for batch in LATENCY_BATCHES:
            x = example[:1].to(target).expand(batch, *example.shape[1:]).contiguous()
            median = _median_seconds(copy_on_target, x)
            out[f"{label}_latency_ms_b{batch}"] = median * 1000.0
            if batch == LATENCY_BATCHES[-1]:
                out[f"{label}_throughput"] = batch / median
    return out


def _median_seconds(model: nn.Module, x: torch.Tensor) -> float:
    from torch.utils import benchmark

    timer = benchmark.Timer(
        stmt="model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads()
    )
    with torch.no_grad():
        return float(timer.blocked_autorange(min_run_time=0.2).median)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(cfg: RunConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one configuration and return its metrics (raises :class:`RunFailed` on a failed run)."""
    return Trainer(cfg, run_dir).fit()


def environment(device: str | None = None) -> dict[str, Any]:
    """Where a run ran: Python, torch, cnnkit package versions, device name and git revision."""
    import platform
    import subprocess
    from importlib import metadata

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.startswith("cnnkit-") or name in {"torchvision", "numpy"}:
            env[name] = dist.version
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    env["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        here = Path(__file__).resolve().parent
        revision = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        env["git_revision"] = revision.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_revision"] = None
    return env
