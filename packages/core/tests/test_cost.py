"""Tests of cnnkit.core.cost: parameter counts, MACs (closed forms, ResNet-18), effective MACs, reports."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnnkit.core.cost import (
    FlopCount,
    ParamCount,
    count_flops,
    count_params,
    report_macs,
    reporting_macs,
)
from cnnkit.core.masks import apply_mask


@pytest.fixture(scope="module")
def torchvision() -> Any:
    return pytest.importorskip("torchvision")


def lenet_300_100() -> nn.Sequential:
    """LeNet-300-100 with every parameter strictly non-zero (a random init hits an exact 0.0 now and then,
    which would make the non-zero counts below flaky)."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(0.01, 0.1, generator=torch.Generator().manual_seed(param.numel()))
    return model


def exact_mask(shape: torch.Size, kept: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(shape.numel())
    mask[torch.randperm(shape.numel(), generator=g)[:kept]] = 1
    return mask.view(shape)


# ------------------------------------------------------------------------------------- parameters


def test_param_counts_of_reference_models(torchvision: Any) -> None:
    assert count_params(torchvision.models.resnet18(weights=None)).total == 11_689_512
    counts = count_params(lenet_300_100())
    assert counts == ParamCount(total=266_610, nonzero=266_610, trainable=266_610)
    assert counts.as_dict()["total"] == 266_610.0 and counts.density == 1.0


def test_param_counts_under_prune_mask() -> None:
    model = lenet_300_100()
    mask = exact_mask(model[1].weight.shape, kept=1000)
    apply_mask(model[1], mask, mode="prune")
    counts = count_params(model)
    masked_out = 784 * 300 - 1000
    assert counts.total == 266_610  # the masked weight counts once, not original + buffers
    assert counts.nonzero == 266_610 - masked_out
    assert counts.trainable == 266_610 - masked_out
    assert (counts.masked_total, counts.masked_kept) == (784 * 300, 1000)
    assert counts.as_dict()["masked_density"] == pytest.approx(1000 / (784 * 300))


def test_param_counts_under_freeze_mask_and_frozen_params() -> None:
    model = lenet_300_100()
    apply_mask(model[1], exact_mask(model[1].weight.shape, kept=500), mode="freeze")
    apply_mask(model[3], exact_mask(model[3].weight.shape, kept=100, seed=1), mode="freeze")
    counts = count_params(model)
    assert counts.total == 266_610
    assert counts.nonzero == 266_610  # frozen weights are not zero
    non_masked = 300 + 100 + 100 * 10 + 10
    assert counts.trainable == 500 + 100 + non_masked
    model[5].requires_grad_(False)
    model[1].parametrizations.weight.original.requires_grad_(False)
    assert count_params(model).trainable == 100 + 300 + 100


def test_param_counts_shared_weights_once() -> None:
    lin = nn.Linear(4, 4)
    assert count_params(nn.Sequential(lin, lin)).total == 20


# ------------------------------------------------------------------------------------- MACs


def test_resnet18_macs(torchvision: Any) -> None:
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # a random init holds an exact 0.0 now and then; this model must be fully dense
        for param in model.parameters():
            param.masked_fill_(param == 0, 1e-3)
    result = count_flops(model, torch.randn(1, 3, 224, 224))
    assert result.macs == pytest.approx(1.82e9, rel=0.01)
    assert result.flops == 2 * result.macs
    assert sum(result.by_module.values()) == result.macs  # all conv + fc work sits in weighted leaves
    assert result.by_module["fc"] == 512 * 1000
    assert result.by_module["conv1"] == 3 * 64 * 49 * 112 * 112
    assert result.effective_macs == pytest.approx(result.macs)


def test_closed_forms() -> None:
    conv = count_flops(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 16, 16))
    assert conv.macs == 3 * 8 * 9 * 16 * 16
    assert conv.by_module == {"": 3 * 8 * 9 * 16 * 16}
    lin = count_flops(nn.Linear(10, 5), torch.randn(4, 10))
    assert (lin.macs, lin.flops, lin.effective_macs) == (200, 400, 200.0)


def test_effective_macs_of_pruned_conv() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(1, 3, 16, 16)
    dense = count_flops(conv, x)
    apply_mask(conv, exact_mask(conv.weight.shape, kept=conv.weight.numel() // 4), mode="prune")
    sparse = count_flops(conv, x)
    assert sparse.macs == dense.macs == 3 * 8 * 9 * 16 * 16
    assert dense.effective_macs == dense.macs
    assert sparse.effective_macs == 0.25 * dense.macs


def test_effective_macs_of_pruned_and_frozen_layers_in_a_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 16, 16)
    dense = count_flops(model, x)
    apply_mask(model[0], exact_mask(model[0].weight.shape, kept=8 * 3 * 9 // 4), mode="prune")
    sparse = count_flops(model, x)
    first = 2 * 3 * 8 * 9 * 16 * 16
    assert sparse.macs == dense.macs == first + 2 * 8 * 4 * 16 * 16
    assert sparse.by_module == dense.by_module == {"0": first, "2": 2 * 8 * 4 * 16 * 16}
    assert sparse.effective_macs == 0.25 * first + 2 * 8 * 4 * 16 * 16
    frozen = nn.Conv2d(3, 8, 3, padding=1)
    apply_mask(frozen, exact_mask(frozen.weight.shape, kept=54), mode="freeze")
    assert count_flops(frozen, x).effective_macs == first  # frozen weights still compute


def test_tuple_input_calls_with_several_arguments() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y) + self.a(x)  # ``a`` runs twice and counts twice

    result = count_flops(Two(), (torch.randn(2, 6), torch.randn(2, 4)))
    assert result.by_module == {"a": 2 * 2 * 6 * 3, "b": 2 * 4 * 3}
    assert result.macs == 2 * 2 * 6 * 3 + 2 * 4 * 3


class Skipper(nn.Module):
    """A toy data-dependent module: reports half of its MACs as skipped, plus some unseen work."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        report_macs(-0.5 * x.shape[0] * 64, note="skipped")
        report_macs(10, note="router")
        report_macs(5, note="router")
        return self.fc(x)


class Listener(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heard: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.heard.append(reporting_macs())
        return x


def test_reporting_macs_is_true_only_inside_count_flops() -> None:
    listener = Listener()
    listener(torch.randn(1, 2))
    count_flops(listener, torch.randn(1, 2))
    listener(torch.randn(1, 2))
    assert listener.heard == [False, True, False]


def test_report_macs() -> None:
    model = nn.Sequential(Skipper(), nn.Linear(8, 2))
    result = count_flops(model, torch.randn(4, 8))
    assert result.macs == 4 * 64 + 4 * 16
    assert result.reported == {"skipped": -128.0, "router": 15.0}
    assert result.effective_macs == 4 * 64 + 4 * 16 - 128 + 15
    assert result.as_dict()["reported_macs"] == -113.0
    assert set(result.as_dict()) == {"macs", "flops", "effective_macs", "reported_macs"}
    # outside count_flops: a no-op that leaks into nothing, and reporting_macs() says so
    assert not reporting_macs()
    report_macs(1e9, note="router")
    model(torch.randn(4, 8))
    assert count_flops(model, torch.randn(4, 8)).reported == {"skipped": -128.0, "router": 15.0}


def test_train_mode_restored_and_no_grad() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    running = model[1].running_mean.clone()

    seen: list[bool] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    result = count_flops(model, torch.randn(2, 3, 8, 8))
    assert isinstance(result, FlopCount) and seen == [False]
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    assert torch.equal(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_restored_after_error() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(2, 2), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        count_flops(model, torch.randn(1, 2))
    assert all(m.training for m in model.modules())
    report_macs(3.0)  # the collector was popped: still a no-op


def test_attention_is_counted_although_eval_mode_would_take_the_fused_path() -> None:
    torch.manual_seed(0)
    q = torch.randn(1, 4, 8)  # L = 4 tokens, E = 8, 2 heads
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    # closed form: q/k/v projections 3·L·E·E + scores and weighted sum 2·L·L·E + output projection L·E·E
    assert count_flops(mha, (q, q, q)).macs == 3 * 4 * 8 * 8 + 2 * 4 * 4 * 8 + 4 * 8 * 8
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    # at least the q/k/v/output projections and the two feed-forward linears (torch's counter does not see
    # the CPU scaled-dot-product kernel the layer uses for the 2·L·L·E score MACs)
    assert count_flops(layer, q).macs >= 4 * 4 * 8 * 8 + 2 * 4 * 8 * 16
    assert torch.backends.mha.get_fastpath_enabled()  # the global switch is restored
