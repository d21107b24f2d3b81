"""Data-parallel training under ``torchrun``: process group, data sharding, replica checks.

``cnnkit run`` (and ``sweep``) under ``torchrun --nproc-per-node N`` (single- or multi-node) trains every run
with ``torch.nn.parallel.DistributedDataParallel``. Without torchrun's environment (``WORLD_SIZE`` > 1)
nothing here creates a process group and the trainer behaves exactly as in a single process.

Semantics (documented for users; the trainer implements them with the helpers below):

* ``batch_size`` is the **global** batch. Global batch ``t`` of an epoch is exactly the batch a single
  process would draw (same seed, same sampler, same generator); rank ``r`` takes the ``r``-th of ``N``
  contiguous, near-equal slices of it (:class:`ShardedBatchSampler`). Every rank therefore takes the same
  number of steps and a run's config key does not depend on ``N``.
* The local loss is weighted by ``n_r·N / n`` (``n_r`` local, ``n`` global samples; exactly 1 for even
  slices) so that DDP's gradient average equals the gradient of the global mean loss, also for an uneven
  last batch. A final global batch smaller than ``N`` is dropped [choice] (at most ``N − 1`` samples/epoch).
* The step's loss is all-reduced (one 2-element all-reduce per step): every rank sees the same value, the
  NaN check stops all ranks at the same step, and the reported ``train_loss`` is the global one.
* Evaluation is sharded (contiguous slices of the split) and its sums are all-reduced.
* Replicas: the model is wrapped after the methods' ``apply``. DDP's constructor broadcasts parameters and
  buffers from rank 0, and (``broadcast_buffers=True``, torch's default) buffers again at every forward,
  so method state held in buffers -- core's :class:`~cnnkit.core.masks.WeightMask` ``mask``/``frozen``/
  ``seed`` -- is identical on all ranks. At the end of every epoch buffers are broadcast from rank 0 once
  more (BatchNorm running statistics included) and a digest of the model state is compared across ranks;
  a mismatch stops the run (:func:`replicas_agree`), since it means a method's update is not synchronised.
* Randomness: setup (model init, ``apply``) uses the run's seed on every rank; afterwards ranks > 0 reseed
  the global generator with a rank-dependent seed [choice] so stochastic regularizers (dropouts) draw
  independent noise per rank, as a single process draws independent noise per sample. Rank 0 keeps the
  single-process stream.
* Only rank 0 writes checkpoints and the results store; every rank reads the checkpoint on resume, so the
  run folder must be on a filesystem all nodes share (checked: a checkpoint seen by some ranks only fails
  the run).

Per method family (see also the bench README, "Scaling out"):

* one-shot scores (SNIP, GraSP, SynFlow, COPS, FreezeNet): computed in ``apply`` on **every rank from the
  same seeded global batches** (``ctx.batches`` is not sharded), so all ranks compute the same masks; DDP's
  broadcast then makes them bitwise equal even if a nondeterministic GPU kernel broke a tie differently.
  :attr:`cnnkit.bench.trainer.Trainer.replicas_agreed_at_wrap` records whether they agreed before it.
* DST (SET, RigL): drops use the (identical) weights, SET grows from ``ctx.generator`` (seeded identically
  on all ranks) and RigL averages the dense gradients it captures over the ranks (``.grad`` itself is
  all-reduced by DDP), so topologies agree; masks are buffers and follow rank 0 anyway. A method that
  needs an extra backward pass during training must not run it outside DDP's forward.
* IMP: prune-and-rewind in ``after_epoch`` acts on identical replicas, so it stays identical.
* BatchNorm-like running statistics (BatchNorm, SBN, SR has none): per rank on the local slice, like
  torch's BatchNorm under DDP (no SyncBatchNorm: it has no CPU kernel); rank 0's statistics are kept.
  Hence DDP equals the single process exactly only for models without batch statistics in training.
* ``ctx.extras["cnnkit.distributed"]`` holds ``{"rank": r, "world_size": N}`` for methods that care.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Sampler

__all__ = [
    "DistInfo",
    "ShardedBatchSampler",
    "all_gather",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "current",
    "init_from_env",
    "is_main",
    "launched_by_torchrun",
    "replicas_agree",
    "shard_range",
    "shutdown",
    "state_digest",
]

T = TypeVar("T")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun's variables say this process is one of several (``WORLD_SIZE`` > 1)."""
    if not all(key in os.environ for key in _ENV_KEYS):
        return False
    return int(os.environ["WORLD_SIZE"]) > 1


def current() -> DistInfo | None:
    """The process group's rank and size, or ``None`` when no process group of size > 1 exists."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def is_main() -> bool:
    """True in a single process and on rank 0."""
    info = current()
    return info is None or info.is_main


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo | None:
    """Join torchrun's process group (once; later calls return the same info).

    ``nccl`` when the run will use CUDA (``device`` ``auto`` with CUDA present, or ``cuda``), each process
    on ``cuda:LOCAL_RANK``; ``gloo`` otherwise. Returns ``None`` (and does nothing) without torchrun.
    """
    info = current()
    if info is not None or not launched_by_torchrun():
        return info
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
    )
    return current()


def shutdown() -> None:
    """Destroy the process group if one exists, once every rank has arrived here.

    Without the barrier a rank could tear gloo down while its peer still closes its side of the last
    collective; on a loaded machine that aborted a process at exit ("terminate called without an active
    exception") after all its work had finished.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# -- data --------------------------------------------------------------------------------------------------


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The ``rank``-th of ``world_size`` contiguous, near-equal slices of ``range(n)`` (larger ones first)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's slice of every global batch of ``batches`` (see :func:`shard_range`).

    A global batch with fewer than ``world_size`` samples is skipped on every rank, so no rank ever gets an
    empty batch and all ranks take the same number of steps.

    Args:
        batches: the global batch sampler (the one a single process would use).
        rank, world_size: this rank and the number of ranks.
    """

    def __init__(self, batches: BatchSampler, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world_size:
                yield [batch[i] for i in shard_range(len(batch), self.rank, self.world_size)]

    def __len__(self) -> int:
        full, last = divmod(len(self.batches.sampler), self.batches.batch_size)  # type: ignore[arg-type]
        if self.batches.drop_last:
            return full
        return full + int(last >= self.world_size)


# -- collectives (all no-ops in a single process) ------------------------------------------------------


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over ranks, in float64 (the values themselves in a single process)."""
    if current() is None:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if current() is not None:
        dist.barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (picklable objects)."""
    if current() is None:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[no-any-return]


def all_gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    info = current()
    if info is None:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every buffer (BatchNorm statistics, masks, ...) with rank ``src``'s values."""
    if current() is None:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


# -- replica checks ------------------------------------------------------------------------------------


def state_digest(module: nn.Module) -> str:
    """SHA-256 of the module's ``state_dict`` (names, dtypes, shapes and exact bytes)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(pickle.dumps(value))
    return digest.hexdigest()


def replicas_agree(module: nn.Module) -> bool:
    """Whether the module's state is bitwise identical on every rank (True in a single process)."""
    digests = all_gather(state_digest(module))
    return all(d == digests[0] for d in digests)
