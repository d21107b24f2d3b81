"""``MethodRunner``: drive a method's events around any plain PyTorch training loop (no Lightning).

Either call the events yourself::

    runner = MethodRunner(method, Context(example_input=x0))
    model = runner.apply(model)
    optimizer = torch.optim.SGD(runner.param_groups(model, weight_decay=5e-4), lr=0.1, momentum=0.9)
    runner.set_optimizer(optimizer)
    for epoch in range(epochs):
        for x, y in loader:
            loss = runner.train_step(model, x, y)    # before_step .. after_step, counters updated
        runner.end_epoch()

or use the pieces (``before_step``, ``loss``, ``after_backward``, ``after_step``) in a custom step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cnnkit.core.context import Context
from cnnkit.core.method import Method, MethodStack, build_param_groups

__all__ = ["MethodRunner"]


class MethodRunner:
    """Calls a method's (or a list of methods') events at the right moments and keeps ``ctx`` current.

    Args:
        method: a :class:`Method`, or a list of them (wrapped in a :class:`MethodStack`).
        ctx: the run's :class:`Context`.
    """

    def __init__(self, method: Method | list[Method], ctx: Context) -> None:
        self.method = MethodStack(method) if isinstance(method, list) else method
        self.ctx = ctx

    def apply(self, model: nn.Module) -> nn.Module:
        model = self.method.apply(model, self.ctx)
        self.ctx.model = model
        return model

    def param_groups(self, model: nn.Module, **defaults: Any) -> list[dict[str, Any]]:
        return build_param_groups(model, self.method, **defaults)

    def set_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.ctx.optimizer = optimizer

    def before_step(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        self.ctx.batch = (x, y) if x is not None and y is not None else None
        self.method.before_step(self.ctx)

    def loss(self, model: nn.Module, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``ctx.loss_fn(output, y)`` plus the method's extra loss."""
        return self.ctx.loss_fn(output, y) + self.method.extra_loss(model, self.ctx)

    def after_backward(self) -> None:
        self.method.after_backward(self.ctx)

    def after_step(self) -> None:
        self.method.after_step(self.ctx)
        self.ctx.step += 1

    def end_epoch(self) -> None:
        self.method.after_epoch(self.ctx)
        self.ctx.epoch += 1

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One full step: events, forward, loss, backward, optimizer step. Returns the (detached) loss."""
        optimizer = self.ctx.optimizer
        if optimizer is None:
            raise RuntimeError(
                "MethodRunner.train_step needs an optimizer: call set_optimizer(optimizer) first"
            )
        model.train()
        self.before_step(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, model(x), y)
        value = float(loss.detach())  # the step's only host-device synchronization
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {self.ctx.step}; stopping")
        loss.backward()  # type: ignore[no-untyped-call]
        self.after_backward()
        optimizer.step()
        self.after_step()
        return loss.detach()
