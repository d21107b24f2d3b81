"""The COPS pruner method (cnnkit.pruning.cops.COPS): its mask is the solver's on the sub-pruners' scores."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.masks import keep_masks
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.testing import TinyResNet, TinyVGG, make_context, seeded_batch
from cnnkit.pruning._base import keep_count
from cnnkit.pruning.cops import COPS, InfeasibleControlsError, combine
from cnnkit.pruning.scores import SNIP, Magnitude, SynFlow

SYNFLOW = {"synflow": {"rounds": 5}}


def _model(seed: int = 0, make: Any = TinyVGG) -> nn.Module:
    torch.manual_seed(seed)
    model: nn.Module = make()
    return model


def _flat(scores: dict[str, Tensor]) -> Tensor:
    return torch.cat([s.reshape(-1).double() for s in scores.values()])


def _reference_sets(
    model: nn.Module, ctx: Context, sparsity: float, scope: str = "global"
) -> list[dict[str, Tensor]]:
    """SNIP and SynFlow scores from independently built pruners (raw, unnormalised; SynFlow's iterative
    rounds prune within ``scope``)."""
    snip = SNIP(sparsity=sparsity, normalize="none", scope=scope)
    synflow = SynFlow(sparsity=sparsity, normalize="none", rounds=5, scope=scope)
    return [snip.compute_scores(model, ctx), synflow.compute_scores(model, ctx)]


def test_global_mask_equals_combine_on_the_sub_pruners_scores() -> None:
    ctx, q, gamma = make_context(seed=1), 0.9, 0.95
    reference = _reference_sets(_model(), ctx, q)
    s1, s2 = _flat(reference[0]), _flat(reference[1])
    k = keep_count(s1.numel(), Decimal(1) - Decimal(repr(q)))
    expected = combine([s1, s2], k, [gamma]).mask
    method = COPS(sparsity=q, controls=(gamma,), score_configs=SYNFLOW)
    model = method.apply(_model(), ctx)
    got = torch.cat([m.reshape(-1) for m in keep_masks(model).values()])
    assert torch.equal(got, expected)
    assert int(got.sum()) == k
    snip_only = SNIP(sparsity=q).apply(_model(), ctx)
    assert not torch.equal(got, torch.cat([m.reshape(-1) for m in keep_masks(snip_only).values()]))  # binding
    stats = method.stats(model)
    assert stats["cops_lambda_2"] > 0.0
    assert stats["cops_achieved_2"] >= stats["cops_rhs_2"] * (1 - 1e-9)


def test_layerwise_scope_solves_one_lp_per_layer() -> None:
    ctx, q, gamma = make_context(seed=2), 0.8, 0.9
    reference = _reference_sets(_model(), ctx, q, "layerwise")
    method = COPS(sparsity=q, scope="layerwise", controls=(gamma,), score_configs=SYNFLOW)
    masks = keep_masks(method.apply(_model(), ctx))
    for name, mask in masks.items():
        s1, s2 = reference[0][name].reshape(-1), reference[1][name].reshape(-1)
        k = keep_count(s1.numel(), Decimal(1) - Decimal(repr(q)))
        assert int(mask.sum()) == k == math.ceil(0.2 * s1.numel() - 1e-9), name
        assert torch.equal(mask.reshape(-1), combine([s1, s2], k, [gamma]).mask), name


def test_zero_control_gives_the_main_scores_pruner_mask() -> None:
    ctx = make_context(seed=3)
    cops = keep_masks(COPS(sparsity=0.85, controls=(0.0,), score_configs=SYNFLOW).apply(_model(1), ctx))
    snip = keep_masks(SNIP(sparsity=0.85).apply(_model(1), ctx))
    assert cops.keys() == snip.keys()
    for name in cops:
        assert torch.equal(cops[name], snip[name]), name


def test_full_control_gives_the_auxiliary_scores_top_k() -> None:
    ctx = Context(example_input=torch.randn(2, 3, 16, 16), seed=0)  # data-free pair: no batches needed
    cops = keep_masks(COPS(sparsity=0.9, scores=("magnitude", "synflow"), controls=(1.0,), **_syn()).apply(
        _model(2), ctx
    ))  # fmt: skip
    synflow = keep_masks(SynFlow(sparsity=0.9, rounds=5).apply(_model(2), ctx))
    for name in cops:
        assert torch.equal(cops[name], synflow[name]), name


def _syn() -> dict[str, Any]:
    return {"score_configs": SYNFLOW}


def test_three_scores_meet_every_control_with_exactly_k_weights() -> None:
    ctx = make_context(seed=4)
    method = COPS(
        sparsity=0.9, scores=("snip", "synflow", "magnitude"), controls=(0.7, 0.9), score_configs=SYNFLOW
    )
    model = method.apply(_model(3, TinyResNet), ctx)
    masks = keep_masks(model)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == math.ceil(0.1 * total - 1e-9)
    stats = method.stats(model)
    for j in (2, 3):
        assert stats[f"cops_achieved_{j}"] >= stats[f"cops_rhs_{j}"] - 1e-9


def test_jointly_infeasible_controls_raise_a_clear_error() -> None:
    method = COPS(sparsity=0.9, scores=("snip", "synflow", "magnitude"), controls=(1.0, 1.0), **_syn())
    with pytest.raises(InfeasibleControlsError, match="controls are infeasible"):
        method.apply(_model(), make_context())


def test_select_without_sub_scores_is_refused() -> None:
    method = COPS(**_syn())
    with pytest.raises(ValueError, match="needs every sub-score"):
        method.select({"a": torch.ones(3)})


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sparsity": 0.0}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"controls": (1.5,)}, "controls"),
        ({"controls": (-0.1,)}, "controls"),
        ({"controls": (0.5, 0.5)}, "controls"),
        ({"scores": ("snip",)}, "scores"),
        ({"scores": ("snip", "snip")}, "scores"),
        ({"scores": ("snip", "hessian")}, "scores"),
        ({"normalize": "sum"}, "normalize"),
        ({"baseline": "median"}, "baseline"),
        ({"constraint": "maxmin"}, "constraint"),
        ({"score_configs": {"grasp": {}}}, "score_configs"),
        ({"score_configs": {"synflow": {"rounds": 0}}}, "rounds"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        COPS(**overrides)


def test_data_score_without_batches_gives_a_clear_error() -> None:
    ctx = Context(example_input=torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="needs data"):
        COPS(**_syn()).apply(_model(), ctx)


def test_model_without_maskable_layers_is_not_applicable() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(768))
    with pytest.raises(MethodNotApplicableError, match="no maskable layers"):
        COPS(**_syn()).apply(model, make_context())


def test_magnitude_sub_score_is_the_plain_pruner_score() -> None:
    model, ctx = _model(), make_context()
    method = COPS(scores=("magnitude", "random"), controls=(0.3,))
    sets = method.score_sets(model, ctx)
    direct = Magnitude(normalize="none").compute_scores(model, ctx)
    for name in direct:
        assert torch.equal(sets[0][name], direct[name])


@pytest.mark.parametrize(
    "score_configs",
    [{}, {"snip": {"batches": 1}, "grasp": {"batches": 3}}, {"grasp": {"samples_per_class": 2}}],
    ids=["same-count", "different-counts", "class-balanced-grasp"],
)
def test_one_shot_iterator_gives_every_sub_score_the_same_batches(score_configs: dict[str, Any]) -> None:
    """A generator is read once and replayed: the masks equal those of the same batches given as a list."""
    batches = [seeded_batch(seed=10 + i) for i in range(6)]
    masks = []
    for source in (list(batches), (b for b in batches)):
        ctx = Context(example_input=batches[0][0], batches=source, seed=0)
        method = COPS(scores=("snip", "grasp"), controls=(0.95,), batches=2, score_configs=score_configs)
        masks.append(keep_masks(method.apply(_model(), ctx)))
    assert masks[0].keys() == masks[1].keys()
    for name in masks[0]:
        assert torch.equal(masks[0][name], masks[1][name]), name
