"""``Context``: what a method may need to know about the run it is part of."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Batch", "Context"]

Batch = tuple[torch.Tensor, torch.Tensor]


def _cross_entropy() -> Callable[..., torch.Tensor]:
    return nn.CrossEntropyLoss()


@dataclass
class Context:
    """Run information shared between the loop and the methods.

    Only ``example_input`` is required. Whoever runs the loop (the bench's trainer, :class:`MethodRunner`,
    or the user) sets ``optimizer`` once it exists and keeps the counters up to date.

    Args:
        example_input: a batch of inputs shaped like the real ones (used to trace shapes and count FLOPs).
        batches: optional iterable of ``(x, y)`` for data-driven selection at ``apply`` (SNIP, COPS, ...).
        loss_fn: the training loss, ``loss_fn(logits, targets)``; cross-entropy by default.
        optimizer: the optimizer, once built.
        step: optimizer steps taken so far (incremented after ``after_step``).
        epoch: epochs finished so far (incremented after ``after_epoch``).
        total_steps: planned number of optimizer steps, if known (DST schedules need it).
        total_epochs: planned number of epochs, if known.
        device: where the model runs; defaults to ``example_input.device``.
        seed: the run's seed; methods derive their own generators from it.
        model: the model being trained, once ``apply`` has returned it.
        batch: the current ``(x, y)`` during a training step.
        extras: free-form values that methods or loops want to share (namespaced keys, please).
    """

    example_input: torch.Tensor
    batches: Iterable[Batch] | None = None
    loss_fn: Callable[..., torch.Tensor] = field(default_factory=_cross_entropy)
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    total_epochs: int | None = None
    device: torch.device | None = None
    seed: int | None = None
    model: nn.Module | None = None
    batch: Batch | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.example_input, torch.Tensor):
            raise TypeError(
                f"Context.example_input must be a torch.Tensor, got {type(self.example_input).__name__}"
            )
        if self.device is None:
            self.device = self.example_input.device
        for name in ("step", "epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"Context.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("total_steps", "total_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Context.{name} must be >= 1 or None, got {value}")

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed + offset`` (a fresh random seed when ``seed`` is None)."""
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed + offset)
        return gen

    def scoring_batches(self, limit: int | None = None) -> list[Batch]:
        """Up to ``limit`` batches from ``batches``; raises a clear error when none were given."""
        if self.batches is None:
            raise ValueError(
                "this method needs data to score weights, but Context.batches is None: "
                "pass batches=[(x, y), ...] (e.g. a few batches of your training loader)"
            )
        out: list[Batch] = []
        for batch in self.batches:
            out.append(batch)
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise ValueError("Context.batches is empty: pass at least one (x, y) batch")
        return out
