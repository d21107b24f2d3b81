"""Per-layer L for HASTE: sensitivities against an independent one-conv-replaced model, the allocation
against brute force, and bad input."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from cnnkit.core import Context, create_method
from cnnkit.core.cost import count_flops
from cnnkit.core.testing import TinyResNet, seeded_batch
from cnnkit.efficiency.haste import HASTEConv2d, haste_layers
from cnnkit.efficiency.haste_tuning import (
    LayerCost,
    Sensitivity,
    allocate_hyperplanes,
    layer_sensitivity,
    predicted_kl,
    predicted_reduction,
)


def _dense_and_haste(patch: int = 2) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    dense = TinyResNet().eval()
    with torch.no_grad():
        dense.fc.weight.mul_(40.0)  # confident outputs: merging changes them measurably
    x = torch.relu(seeded_batch(12, seed=3)[0])
    method = create_method("haste", start_layer=1, patch=patch, hyperplanes=9)
    model = method.apply(copy.deepcopy(dense), Context(example_input=x[:2])).eval()
    return dense, model, x


def _alone(dense: nn.Module, name: str, like: HASTEConv2d, planes: int) -> tuple[nn.Module, HASTEConv2d]:
    """``dense`` with only the conv ``name`` replaced by a fresh HASTE conv at L = ``planes``."""
    model = copy.deepcopy(dense)
    parent, _, attr = name.rpartition(".")
    conv = model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d)
    layer = HASTEConv2d(conv, hyperplanes=planes, patch=like.patch, seed=like.seed, sparsity=like.sparsity)
    setattr(model.get_submodule(parent) if parent else model, attr, layer)
    return model.eval(), layer


def test_sensitivity_equals_one_conv_replaced_models() -> None:
    dense, model, x = _dense_and_haste()
    before = model(x)
    sens = layer_sensitivity(model, x, candidates=(2, 5), batch_size=5)
    with torch.no_grad():
        p = dense(x).softmax(dim=1)
        assert list(sens.layers) == [name for name, _ in haste_layers(model)]
        for name, like in haste_layers(model):
            for planes in (2, 5):
                ref_model, ref_layer = _alone(dense, name, like, planes)
                q = ref_model(x).softmax(dim=1)
                kl = float((p * (p.log() - q.log())).sum(dim=1).mean())
                tally = ref_layer.tally
                got = sens.layers[name][planes]
                assert got.kl == pytest.approx(kl, rel=1e-4, abs=1e-7), (name, planes)
                assert got.saved_flops == pytest.approx((tally.dense - tally.needed) / tally.images)
    assert sens.layers["layer2.0.conv1"][2].kl > 0  # L = 2 merges: the test can see a difference
    assert sens.model_flops == count_flops(dense, x[:1]).flops
    # the model is as it was: same L, eval mode, same outputs
    assert all(layer.hyperplanes == 9 and not layer.training for _, layer in haste_layers(model))
    assert torch.equal(model(x), before)
    assert Sensitivity.from_dict(json.loads(json.dumps(sens.to_dict()))) == sens


def test_sensitivity_of_singleton_buckets_is_zero_kl_and_negative_saving() -> None:
    # at L = 64 every channel gets its own code: the output is the dense one, only the overhead is left
    # (and every other HASTE conv must be running as its plain conv for the KL to be zero)
    _, model, x = _dense_and_haste()
    sens = layer_sensitivity(model, x, candidates=[2, 64])
    for name, options in sens.layers.items():
        assert options[2].kl > 1e-5, name  # merging at L = 2 is visible, 100x above the rounding level
        assert options[64].kl == pytest.approx(0.0, abs=1e-7), name
        assert options[64].saved_flops < 0, name


def _table(seed: int, layers: int = 4, options: int = 3) -> Sensitivity:
    gen = torch.Generator().manual_seed(seed)
    table = {}
    for i in range(layers):
        saved = torch.rand(options, generator=gen).tolist()
        kl = torch.rand(options, generator=gen).tolist()
        table[f"l{i}"] = {8 + 2 * j: LayerCost(kl=kl[j], saved_flops=saved[j]) for j in range(options)}
    return Sensitivity(model_flops=float(layers), layers=table)


@pytest.mark.parametrize("seed", range(6))
def test_allocation_meets_the_target_and_no_allocation_saving_as_much_has_less_kl(seed: int) -> None:
    sens = _table(seed)
    names = list(sens.layers)
    every = [dict(zip(names, picks, strict=True)) for picks in itertools.product(*sens.layers.values())]
    most = max(predicted_reduction(sens, a) for a in every)
    for fraction in [f for f in (0.1, 0.3, 0.5, 0.7) if f < most] + [0.99 * most]:
        got = allocate_hyperplanes(sens, fraction)
        saving, kl = predicted_reduction(sens, got), predicted_kl(sens, got)
        assert saving >= fraction - 1e-12
        better = [
            a for a in every if predicted_reduction(sens, a) >= saving and predicted_kl(sens, a) < kl - 1e-12
        ]
        assert not better, (fraction, got, better[:1])
        # and it is the least-KL of the relaxation's picks that meet the target
        hull = [a for a in _lagrangian_picks(sens) if predicted_reduction(sens, a) >= fraction]
        assert kl == pytest.approx(min(predicted_kl(sens, a) for a in hull), abs=1e-12)


def _lagrangian_picks(sens: Sensitivity) -> list[dict[str, int]]:
    """Every allocation that maximises saving - lambda * KL for some lambda >= 0, by enumeration: the picks
    only change where two options of a layer trade evenly, so one lambda between each pair of such
    breakpoints (and one beyond the last) finds them all."""
    breaks = {0.0}
    for options in sens.layers.values():
        for a, b in itertools.combinations(options.values(), 2):
            if a.kl != b.kl:
                breaks.add(abs((a.saved_flops - b.saved_flops) / (a.kl - b.kl)))
    ordered = sorted(breaks)
    lambdas = [(lo + hi) / 2 for lo, hi in itertools.pairwise(ordered)] + [ordered[-1] + 1.0, 0.0]
    return [
        {
            n: max(o, key=lambda p, o=o, lam=lam: o[p].saved_flops - lam * o[p].kl)
            for n, o in sens.layers.items()
        }
        for lam in lambdas
    ]


def test_allocation_spends_the_budget_where_kl_is_cheapest() -> None:
    # layer "a" saves as much as "b" for a tenth of the KL: a target one layer can meet merges "a" only
    cost = {16: LayerCost(kl=0.0, saved_flops=0.0), 8: LayerCost(kl=0.1, saved_flops=1.0)}
    cheap = {16: LayerCost(kl=0.0, saved_flops=0.0), 8: LayerCost(kl=0.01, saved_flops=1.0)}
    sens = Sensitivity(model_flops=4.0, layers={"b": cost, "a": cheap})
    assert allocate_hyperplanes(sens, 0.2) == {"b": 16, "a": 8}
    assert allocate_hyperplanes(sens, 0.5) == {"b": 8, "a": 8}


def test_bad_input_is_named() -> None:
    dense, model, x = _dense_and_haste()
    with pytest.raises(ValueError, match="no HASTE convs"):
        layer_sensitivity(dense, x)
    with pytest.raises(ValueError, match=r"candidates.*1\.\.64"):
        layer_sensitivity(model, x, candidates=[0, 8])
    with pytest.raises(ValueError, match="candidates"):
        layer_sensitivity(model, x, candidates=[])
    with pytest.raises(ValueError, match="batch_size"):
        layer_sensitivity(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, classes\) logits"):
        layer_sensitivity(nn.Sequential(model, nn.Unflatten(1, (1, -1))), x)
    assert all(layer.hyperplanes == 9 for _, layer in haste_layers(model))  # restored after the error
    spare = copy.deepcopy(dict(haste_layers(model))["layer1.0.conv1"])
    with pytest.raises(ValueError, match="spare: the model's forward never ran this HASTE conv"):
        layer_sensitivity(_WithSpare(model, spare), x, candidates=[12])
    sens = _table(0)
    with pytest.raises(ValueError, match=r"flops_reduction must be in \(0, 1\)"):
        allocate_hyperplanes(sens, 1.5)
    with pytest.raises(ValueError, match=r"flops_reduction=0\.9900 is out of reach.*reach 0\.\d+"):
        allocate_hyperplanes(sens, 0.99)


class _WithSpare(nn.Module):
    """``model`` plus a HASTE conv that its forward never calls."""

    def __init__(self, model: nn.Module, spare: nn.Module) -> None:
        super().__init__()
        self.model, self.spare = model, spare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out
