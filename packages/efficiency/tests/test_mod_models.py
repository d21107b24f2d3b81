"""The ResNet-MoD models: exact parameter counts (METHODS.md §7i), MACs, specs, a static exported graph."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from torch import nn

from cnnkit.core import ConfigError
from cnnkit.core.cost import count_flops
from cnnkit.core.sites import stage_names
from cnnkit.efficiency import models
from cnnkit.efficiency.mod import MoDBlock, mod_blocks
from cnnkit.efficiency.plugin import MODEL_SPECS


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (model, kwargs, exact count, the paper's figure in M or None)
PARAM_COUNTS: list[tuple[str, dict[str, Any], int, float | None]] = [
    ("resnet50_mod", {}, 18_105_949, 18.11),
    ("resnet75_mod", {}, 23_100_253, 23.10),
    ("resnet86_mod", {}, 25_597_405, 25.60),
    ("resnet101_mod", {}, 29_211_741, 29.21),
    ("resnet152_mod", {}, 37_460_437, 37.46),
    ("resnet18_mod", {}, 5_463_902, 5.46),
    ("resnet26_mod", {}, 11_399_166, 11.40),
    ("resnet34_mod", {}, 12_934_414, 12.93),
    ("resnet42_mod", {}, 17_720_830, 17.72),
    ("cifar_resnet18_mod", {"num_classes": 10}, 4_948_352, 4.95),
    ("cifar_resnet18_mod", {"num_classes": 100}, 4_994_522, 4.99),
    ("cifar_resnet34_mod", {"num_classes": 10}, 12_418_864, 12.42),
    ("cifar_resnet34_mod", {"num_classes": 100}, 12_465_034, 12.47),
    ("cifar_resnet50_mod", {"num_classes": 10}, 16_069_759, 16.07),
]


@pytest.mark.parametrize(("name", "kwargs", "expected", "paper"), PARAM_COUNTS)
def test_parameter_count_is_exact_and_rounds_to_the_paper(
    name: str, kwargs: dict[str, Any], expected: int, paper: float | None
) -> None:
    with torch.device("meta"):
        model = getattr(models, name)(**kwargs)
    assert n_params(model) == expected
    if paper is not None:
        assert round(expected / 1e6, 2) == paper


def test_random_selection_drops_exactly_the_selectors() -> None:
    with torch.device("meta"):
        learned = models.resnet50_mod()
        random = models.resnet50_mod(selection="random")
    selectors = sum(n_params(b.selector) for _, b in mod_blocks(learned) if b.selector is not None)
    assert selectors == 991_232  # METHODS.md §7i
    assert n_params(learned) - n_params(random) == selectors
    assert round(n_params(random) / 1e6, 2) == 17.11  # the paper's "MoD50 random selection"


def test_placement_alternates_from_the_standard_first_block() -> None:
    with torch.device("meta"):
        model = models.resnet75_mod()
    for stage, depth in zip(("layer1", "layer2", "layer3", "layer4"), (3, 4, 14, 3), strict=True):
        seq = cast(nn.Sequential, model.get_submodule(stage))
        assert len(seq) == depth
        assert [isinstance(b, MoDBlock) for b in seq] == [i % 2 == 1 for i in range(depth)]
    assert [b.k for _, b in mod_blocks(model)][:3] == [4, 8, 8]


def test_conv_fc_macs_match_the_paper_minus_bn_relu_add() -> None:
    """conv+FC GMACs (R50-MoD 2.56 vs the paper's 2.60, which also counts BN/ReLU/add, METHODS.md §7i)."""
    x = torch.zeros(1, 3, 224, 224)
    macs = count_flops(models.resnet50_mod(), x).macs
    assert round(macs / 1e9, 2) == 2.56
    cifar = count_flops(models.cifar_resnet18_mod(), torch.zeros(1, 3, 32, 32)).macs
    assert 250e6 < cifar < 255e6  # paper 255 MMAC with BN/ReLU/add


def test_specs_are_registered_and_load() -> None:
    from cnnkit.core.plugins import get_registries

    registered = get_registries().models
    names = {spec.name for spec in MODEL_SPECS}
    assert names == {f"resnet{d}_mod" for d in (18, 26, 34, 42, 50, 75, 86, 101, 152)} | {
        f"cifar_resnet{d}_mod" for d in (18, 34, 50)
    }
    for spec in MODEL_SPECS:
        assert registered.get(spec.name) == spec
        assert spec.load() is getattr(models, spec.name)
    for name, kwargs, count, _ in PARAM_COUNTS:
        if kwargs.get("num_classes", 10) == 10:  # the summaries quote the count at the default classes
            assert f"{count:,} params" in registered.get(name).summary


def test_cifar_model_forward_stages_and_options() -> None:
    torch.manual_seed(0)
    model = models.cifar_resnet18_mod(num_classes=7, in_channels=1, fuse_to="last", c=32)
    assert stage_names(model) == [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    assert [b.k for _, b in mod_blocks(model)] == [2, 4, 8, 16]
    assert all(b.fuse_to == "last" for _, b in mod_blocks(model))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match="fuse_to"):
        models.cifar_resnet18_mod(fuse_to="middle")


def test_export_is_static_with_a_dynamic_batch() -> None:
    torch.manual_seed(0)
    model = models.cifar_resnet18_mod().eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    # the only symbol of the whole graph is the batch size: no data-dependent (unbacked) sizes
    symbols: set[str] = set()
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            symbols |= {
                str(s)
                for d in val.shape
                if isinstance(d, torch.SymInt)
                for s in d.node.expr.free_symbols  # type: ignore[attr-defined]
            }
    assert len(symbols) == 1 and not next(iter(symbols)).startswith("u"), symbols  # u*: unbacked sizes
    y = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(y), model(y))
