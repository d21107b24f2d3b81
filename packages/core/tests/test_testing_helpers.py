"""cnnkit.core.testing: the contract checks pass for a well-behaved method and catch broken ones."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from cnnkit.core import Context, Method, MethodConfig
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.testing import (
    TINY_MODELS,
    check_apply_train_export,
    check_determinism,
    check_export_preserves_output,
    check_method_contract,
    check_state_dict_roundtrip,
    check_stats,
    make_context,
    seeded_batch,
)


class Scale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


class AddGain(Method):
    """Well-behaved: inserts a learnable per-channel gain after the first BN and adds a small L2 loss."""

    name = "addgain"
    kind = "regularizer"

    class Config(MethodConfig):
        l2: float = Field(1e-3, ge=0.0)

    config: Config

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        bn.register_module("gain", Scale(bn.num_features))
        bn.register_forward_hook(lambda module, args, out: module.gain(out))
        return model

    def extra_loss(self, model: nn.Module, ctx: Context) -> torch.Tensor | float:
        return self.config.l2 * sum(p.pow(2).sum() for p in model.parameters())

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"gain_params": float(sum(m.gain.numel() for m in model.modules() if isinstance(m, Scale)))}


class NaNMethod(AddGain):
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model


class Unseeded(AddGain):
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        state = random.random()  # Python's RNG is not seeded by the checks: a real nondeterminism bug
        with torch.no_grad():
            next(model.parameters()).add_(state)
        return model


class LossyExport(AddGain):
    def export(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            next(model.parameters()).mul_(2.0)
        return model


class Halve(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5


class CopyUnsafeExport(AddGain):
    """Exports with torch's ``remove_parametrizations``, which breaks the original of a deep copy."""

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        parametrize.register_parametrization(conv, "weight", Halve())
        return model

    def export(self, model: nn.Module) -> nn.Module:
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        parametrize.remove_parametrizations(conv, "weight")
        return model


class HiddenState(AddGain):
    """Keeps a tensor outside the state_dict that changes the function: the round trip must catch it."""

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        shift = torch.randn(1)
        original = model.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            return original(x) + shift

        model.forward = forward  # type: ignore[method-assign]
        return model


class BadStats(AddGain):
    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"ratio": float("inf")}


def test_a_well_behaved_method_passes_every_check() -> None:
    check_method_contract(AddGain)


class ResNetsOnly(AddGain):
    """Declares itself not applicable to models without a residual stage (as MoD does on a VGG)."""

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if "ResNet" not in type(model).__name__:
            raise MethodNotApplicableError(f"{type(model).__name__} has no residual blocks")
        return super().apply(model, ctx)


class AppliesNowhere(AddGain):
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        raise MethodNotApplicableError("nothing to act on")


def test_a_model_the_method_is_not_applicable_to_is_skipped_but_one_must_apply() -> None:
    check_method_contract(ResNetsOnly)
    with pytest.raises(AssertionError, match="applies to none of the test models"):
        check_method_contract(AppliesNowhere)


def test_contract_reports_nan() -> None:
    with pytest.raises(AssertionError, match="NaN"):
        check_method_contract(NaNMethod)


@pytest.mark.parametrize(
    ("factory", "check", "message"),
    [
        (Unseeded, check_determinism, "same seed differ"),
        (CopyUnsafeExport, check_apply_train_export, "broke the original model"),
        (LossyExport, check_export_preserves_output, "export changed"),
        (HiddenState, check_state_dict_roundtrip, "round trip"),
        (BadStats, check_stats, "not finite"),
    ],
)
def test_each_check_can_fail(factory: Callable[[], Method], check: Callable[..., None], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check(factory, TINY_MODELS["tiny_resnet"])


def test_seeded_batch_and_context_are_reproducible() -> None:
    a, b = seeded_batch(seed=5), seeded_batch(seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(seeded_batch(seed=6)[0], a[0])
    ctx = make_context(seed=2)
    assert len(ctx.scoring_batches()) == 2 and ctx.seed == 2


def test_fixtures_are_available(
    cnnkit_tiny_model: nn.Module, cnnkit_batch: tuple[torch.Tensor, torch.Tensor], cnnkit_context: Context
) -> None:
    out = cnnkit_tiny_model(cnnkit_batch[0])
    assert out.shape == (8, 10)
    assert cnnkit_context.example_input.shape == (8, 3, 16, 16)


def test_one_torch_thread_sets_one_thread_and_restores_even_on_error() -> None:
    import torch

    from cnnkit.core.testing import one_torch_thread

    def fail_inside() -> None:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert torch.get_num_threads() == before
