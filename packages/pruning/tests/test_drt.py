"""The survey's dimensionality-reduced-training view (METHODS.md §15): for every registered pruner and freezer
the reported trained-parameter count D equals the number of parameter entries one SGD step actually moves,
and the untrained background (0 for pruning, θ₀ for freezing) does not move."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cnnkit.core.loop import MethodRunner
from cnnkit.core.masks import get_weight_mask
from cnnkit.core.testing import (
    TinyResNet,
    make_context,
    method_factory,
    registered_method_names,
    seeded_batch,
)

PRUNERS = registered_method_names(kind="pruner")


def _effective(model: nn.Module) -> dict[str, Tensor]:
    """Every tensor the model computes with: plain parameters and the effective (masked) tensors."""
    out: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        if ".parametrizations" in f".{module_name}" or isinstance(module, parametrize.ParametrizationList):
            continue
        prefix = f"{module_name}." if module_name else ""
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations:  # type: ignore[union-attr]
                out[prefix + tensor_name] = getattr(module, tensor_name).detach().clone()
        for name, p in module.named_parameters(recurse=False):
            out[prefix + name] = p.detach().clone()
    return out


def _no_zero_parameters(model: nn.Module) -> nn.Module:
    """BN biases start at 0: shift them so that weight decay moves every trained entry, even one whose
    gradient is 0 (e.g. behind a layer the pruner emptied)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.uniform_(0.05, 0.1)
    return model


def _backgrounds(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (untrained entries, their fixed value)}`` of every masked tensor."""
    out = {}
    for module_name, module in model.named_modules():
        wm = get_weight_mask(module)
        if wm is not None:
            fixed = torch.zeros_like(wm.mask) if wm.mode == "prune" else wm.frozen
            out[f"{module_name}.weight"] = (~wm.keep(), fixed.clone())
    return out


@pytest.mark.parametrize("interspace", [False, True], ids=["sp", "ip"])
@pytest.mark.parametrize("name", PRUNERS)
def test_trained_params_equal_the_entries_one_step_moves(name: str, interspace: bool) -> None:
    overrides = {"interspace": True} if interspace else {}
    method = method_factory(name, **overrides)()
    torch.manual_seed(0)
    runner = MethodRunner(method, make_context(seed=0, total_steps=50))
    model = runner.apply(_no_zero_parameters(TinyResNet()))
    groups = runner.param_groups(model, weight_decay=1e-3)
    runner.set_optimizer(torch.optim.SGD(groups, lr=0.1, momentum=0.9))
    before, background = _effective(model), _backgrounds(model)
    assert background, f"{name} masked nothing"
    runner.train_step(model, *seeded_batch(batch_size=16, seed=1))
    after = _effective(model)
    moved = sum(int((after[k] != before[k]).sum()) for k in before)
    stats = method.stats(model)
    assert moved == stats["trained_params"], (name, moved, stats["trained_params"])
    assert stats["dense_params"] == sum(t.numel() for t in before.values())
    assert stats["trained_fraction"] == pytest.approx(stats["trained_params"] / stats["dense_params"])
    assert stats["stored_params"] >= stats["trained_params"]
    for key, (untrained, fixed) in background.items():
        assert torch.equal(after[key][untrained], fixed[untrained]), f"{key}: the background moved"
        assert torch.equal(before[key][untrained], fixed[untrained]), key
    if interspace:
        assert stats["basis_params"] == 81.0 * 7  # seven 3×3 convs in TinyResNet, all trained
    else:
        assert stats.get("basis_params", 0.0) == 0.0
