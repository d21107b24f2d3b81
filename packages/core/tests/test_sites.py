"""Tests of cnnkit.core.sites: stage rules, site kinds, insertion and removal of inserted modules."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchvision import models

from cnnkit.core.sites import (
    Inserted,
    Site,
    find_sites,
    insert_at,
    iter_named_modules,
    stage_names,
    unwrap_inserted,
)

# ---------------------------------------------------------------------------------------------------------
# Small models defined here


class CifarBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))
        return out


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem + BN + ReLU, no max-pool, layer1..layer3 of BasicBlocks."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), blocks: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        for i, width in enumerate(widths, start=1):
            strides = [1 if i == 1 or b else 2 for b in range(blocks)]
            layers = [CifarBlock(cin if b == 0 else width, width, stride) for b, stride in enumerate(strides)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 4):
            x = getattr(self, f"layer{i}")(x)
        out: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return out


def _conv_unit(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class TinyVGG(nn.Module):
    """VGG-style: a ``features`` Sequential of conv→BN→ReLU units split by max-pools (3 stages)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_unit(3, 4), nn.MaxPool2d(2),
            *_conv_unit(4, 8), *_conv_unit(8, 8), nn.MaxPool2d(2),
            *_conv_unit(8, 8), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class Declared(nn.Module):
    """A model that declares its stages: a single module, a run of modules, a single module."""

    cnnkit_stages = ("stem", ["body.0", "body.1", "body.2", "body.3", "body.4", "body.5"], "head")

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_unit(3, 4))
        self.body = nn.Sequential(*_conv_unit(4, 8), *_conv_unit(8, 8), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.stem(x)))
        return out


class Wrapper(nn.Module):
    """Like DDP: the real model is the child ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(x)
        return out


class Marker(nn.Module):
    """Multiplies by 1 and records its calls (to ``log`` as ``tag``)."""

    def __init__(self, log: list[str] | None = None, tag: str = "marker") -> None:
        super().__init__()
        self.calls = 0
        self.log = log if log is not None else []
        self.tag = tag
        self.one: torch.Tensor
        self.register_buffer("one", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.log.append(self.tag)
        return x * self.one


class TrainOnly(Marker):
    """A marker type that ``unwrap_inserted`` tests remove by type."""


def _names(sites: list[Site]) -> list[str]:
    return [site.name for site in sites]


def _output_hw(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    seen: list[tuple[int, int]] = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


# ---------------------------------------------------------------------------------------------------------
# Fixtures (torchvision models are built once per module and never modified)


@pytest.fixture(scope="module")
def resnet18() -> models.ResNet:
    return models.resnet18(weights=None)


@pytest.fixture(scope="module")
def resnet50() -> models.ResNet:
    return models.resnet50(weights=None)


@pytest.fixture(scope="module")
def vgg16_bn() -> models.VGG:
    """torchvision VGG-16-BN. Built on the meta device and only ``features`` materialized: initializing
    the 120M classifier parameters would dominate this file's run time, and the classifier is never run."""
    with torch.device("meta"):
        model = models.vgg16_bn(weights=None)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            module.reset_parameters()
    return model


@pytest.fixture(scope="module")
def mobilenet_v2() -> models.MobileNetV2:
    return models.mobilenet_v2(weights=None)


@pytest.fixture
def cifar_resnet() -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet().eval()


# ---------------------------------------------------------------------------------------------------------
# torchvision ResNets


def test_resnet18_stages_are_layers(resnet18: models.ResNet) -> None:
    assert stage_names(resnet18) == [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    sites = find_sites(resnet18, kind="stage")
    assert _names(sites) == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.stage for s in sites] == [1, 2, 3, 4]
    assert sites[2].module is resnet18.layer3


def test_resnet18_block_sites_of_stages_3_and_4(resnet18: models.ResNet) -> None:
    sites = find_sites(resnet18, stages=[3, 4], kind="block")
    assert _names(sites) == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert [s.stage for s in sites] == [3, 3, 4, 4]
    assert all(isinstance(s.module, models.resnet.BasicBlock) for s in sites)
    assert {(s.kind, s.position) for s in sites} == {("block", "after")}
    # Given out of order or repeated, sites still come once each, in model order.
    assert find_sites(resnet18, stages=[4, 3, 4], kind="block") == sites


def test_resnet18_bn_sites_leave_out_downsample(resnet18: models.ResNet) -> None:
    sites = find_sites(resnet18, stages=[3], kind="bn")
    assert _names(sites) == ["layer3.0.bn1", "layer3.0.bn2", "layer3.1.bn1", "layer3.1.bn2"]
    assert all(isinstance(s.module, nn.BatchNorm2d) for s in sites)
    with_shortcut = find_sites(resnet18, stages=[3], kind="bn", include_shortcuts=True)
    assert len(with_shortcut) == 5
    assert "layer3.0.downsample.1" in _names(with_shortcut)


def test_resnet18_conv_sites_leave_out_downsample(resnet18: models.ResNet) -> None:
    sites = find_sites(resnet18, stages=[2], kind="conv", position="before")
    assert _names(sites) == ["layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]
    assert all(s.position == "before" and isinstance(s.module, nn.Conv2d) for s in sites)
    assert len(find_sites(resnet18, stages=[2], kind="conv", include_shortcuts=True)) == 5


def test_negative_stage_is_counted_from_the_end(resnet18: models.ResNet) -> None:
    for kind in ("bn", "block", "stage"):
        assert find_sites(resnet18, stages=[-1], kind=kind) == find_sites(resnet18, stages=[4], kind=kind)
    assert find_sites(resnet18, stages=[-4], kind="stage")[0].name == "layer1"
    assert find_sites(resnet18, stages=[-1], kind="stage")[0].stage == 4


def test_resnet50_stage4(resnet50: models.ResNet) -> None:
    assert len(stage_names(resnet50)) == 4
    bns = find_sites(resnet50, stages=[4], kind="bn")
    assert len(bns) == 9
    assert not any("downsample" in s.name for s in bns)
    blocks = find_sites(resnet50, stages=[4], kind="block")
    assert _names(blocks) == ["layer4.0", "layer4.1", "layer4.2"]
    assert all(isinstance(s.module, models.resnet.Bottleneck) for s in blocks)


def test_stages_found_inside_a_wrapper() -> None:
    model = Wrapper(CifarResNet())
    assert stage_names(model) == [["module.layer1"], ["module.layer2"], ["module.layer3"]]
    assert find_sites(model, stages=[2], kind="stage")[0].module is model.module.layer2


# ---------------------------------------------------------------------------------------------------------
# VGG


def test_vgg16_bn_has_five_stages_split_at_pools(vgg16_bn: models.VGG) -> None:
    stages = stage_names(vgg16_bn)
    assert len(stages) == 5
    features = vgg16_bn.features
    for stage in stages:
        last = stage[-1]
        assert last.startswith("features.")
        assert isinstance(features[int(last.split(".")[1])], nn.MaxPool2d)
    assert sum(len(s) for s in stages) == len(features)


def test_vgg16_bn_conv_sites_per_stage(vgg16_bn: models.VGG) -> None:
    sites = find_sites(vgg16_bn, kind="conv")
    assert [sum(s.stage == k for s in sites) for k in range(1, 6)] == [2, 2, 3, 3, 3]
    assert len(find_sites(vgg16_bn, stages=[4], kind="bn")) == 3


def test_vgg16_bn_stage4_after_anchors_at_the_fourth_pool(vgg16_bn: models.VGG) -> None:
    (site,) = find_sites(vgg16_bn, stages=[4], kind="stage", position="after")
    pools = [m for m in vgg16_bn.features if isinstance(m, nn.MaxPool2d)]
    assert site.module is pools[3]
    assert site.name == "features.33"
    assert _output_hw(vgg16_bn.features, site.module, torch.randn(1, 3, 64, 64)) == (4, 4)


def test_vgg16_bn_stage_before_anchors_at_the_first_conv(vgg16_bn: models.VGG) -> None:
    (site,) = find_sites(vgg16_bn, stages=[2], kind="stage", position="before")
    assert site.name == "features.7"
    assert isinstance(site.module, nn.Conv2d)
    assert site.module.in_channels == 64


def test_vgg16_bn_block_sites_are_the_relus_ending_conv_units(vgg16_bn: models.VGG) -> None:
    after = find_sites(vgg16_bn, kind="block", position="after")
    assert [sum(s.stage == k for s in after) for k in range(1, 6)] == [2, 2, 3, 3, 3]
    assert all(isinstance(s.module, nn.ReLU) for s in after)
    assert _names(after)[:2] == ["features.2", "features.5"]
    before = find_sites(vgg16_bn, kind="block", position="before")
    assert all(isinstance(s.module, nn.Conv2d) for s in before)
    assert _names(before) == _names(find_sites(vgg16_bn, kind="conv"))


# ---------------------------------------------------------------------------------------------------------
# Resolution fallback (MobileNetV2)


def test_mobilenet_v2_needs_example_input(mobilenet_v2: models.MobileNetV2) -> None:
    with pytest.raises(ValueError, match="example_input"):
        stage_names(mobilenet_v2)
    with pytest.raises(ValueError, match="example_input"):
        find_sites(mobilenet_v2, kind="block")


def test_mobilenet_v2_stages_by_resolution(mobilenet_v2: models.MobileNetV2) -> None:
    x = torch.randn(1, 3, 224, 224)
    stages = stage_names(mobilenet_v2, x)
    assert len(stages) == 5
    assert [n for stage in stages for n in stage] == [f"features.{i}" for i in range(19)]
    sites = find_sites(mobilenet_v2, kind="stage", example_input=x)
    seen: dict[str, int] = {}

    def recorder(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            seen.setdefault(name, out.shape[-1])

        return hook

    handles = [s.module.register_forward_hook(recorder(s.name)) for s in sites]
    try:
        with torch.no_grad():
            mobilenet_v2.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    assert [seen[s.name] for s in sites] == [112, 56, 28, 14, 7]
    blocks = find_sites(mobilenet_v2, stages=[2], kind="block", example_input=x)
    assert _names(blocks) == ["features.2", "features.3"]


def test_resolution_tracing_leaves_mode_and_statistics_alone() -> None:
    torch.manual_seed(0)
    model = models.mobilenet_v2(weights=None, width_mult=0.25).train()
    model.features[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage_names(model, torch.randn(2, 3, 64, 64))
    assert model.training and model.features[2].training
    assert not model.features[3].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resolution_fallback_puts_flat_children_in_the_stage_before() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 2),
    )  # fmt: skip
    assert stage_names(model, torch.randn(1, 3, 8, 8)) == [["0", "1"], ["2", "3", "4"]]


# ---------------------------------------------------------------------------------------------------------
# CIFAR ResNet and declared stages


def test_cifar_resnet(cifar_resnet: CifarResNet) -> None:
    assert stage_names(cifar_resnet) == [["layer1"], ["layer2"], ["layer3"]]
    stage_sites = find_sites(cifar_resnet, kind="stage")
    x = torch.randn(1, 3, 32, 32)
    assert [_output_hw(cifar_resnet, s.module, x) for s in stage_sites] == [(32, 32), (16, 16), (8, 8)]
    assert _names(find_sites(cifar_resnet, stages=[-1], kind="block")) == ["layer3.0", "layer3.1"]
    bns = find_sites(cifar_resnet, stages=[2], kind="bn")
    assert _names(bns) == ["layer2.0.bn1", "layer2.0.bn2", "layer2.1.bn1", "layer2.1.bn2"]
    assert len(find_sites(cifar_resnet, stages=[2], kind="conv", include_shortcuts=True)) == 5
    with pytest.raises(ValueError, match=re.escape("stages=[4] out of range: this model has stages 1..3")):
        find_sites(cifar_resnet, stages=[4])


def test_declared_stages() -> None:
    model = Declared()
    body = [f"body.{i}" for i in range(6)]
    assert stage_names(model) == [["stem"], body, ["head"]]
    stages = find_sites(model, kind="stage", position="after")
    assert _names(stages) == ["stem", "body.5", "head"]
    assert _names(find_sites(model, stages=[2], kind="stage", position="before")) == ["body.0"]
    assert _names(find_sites(model, stages=[1, 2], kind="block")) == ["stem.2", "body.2", "body.5"]
    assert _names(find_sites(model, stages=[2], kind="block", position="before")) == ["body.0", "body.3"]
    assert _names(find_sites(model, kind="bn")) == ["stem.1", "body.1", "body.4"]


def test_declared_stages_take_precedence_and_are_relative_to_the_declaring_module() -> None:
    model = CifarResNet()
    model.cnnkit_stages = [["conv1", "bn1", "relu"], "layer1"]  # type: ignore[assignment]
    assert stage_names(model) == [["conv1", "bn1", "relu"], ["layer1"]]
    wrapped = Wrapper(Declared())
    assert stage_names(wrapped)[0] == ["module.stem"]


@pytest.mark.parametrize("declared", ["stem", ["stem", 3], ["nope"], [["stem", "body.9"]]])
def test_bad_declared_stages(declared: object) -> None:
    model = Declared()
    model.cnnkit_stages = declared  # type: ignore[assignment]
    with pytest.raises(ValueError, match="cnnkit_stages"):
        stage_names(model)


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("stages", [[5], [0], [-5], [1, 7]])
def test_out_of_range_stages(resnet18: models.ResNet, stages: list[int]) -> None:
    message = f"stages={stages} out of range: this model has stages 1..4"
    with pytest.raises(ValueError, match=re.escape(message)):
        find_sites(resnet18, stages=stages)


def test_bad_kind_and_position(resnet18: models.ResNet) -> None:
    with pytest.raises(ValueError, match="kind='relu'.*'conv', 'bn', 'block', 'stage'"):
        find_sites(resnet18, kind="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="position='inside'.*'before', 'after'"):
        find_sites(resnet18, position="inside")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="position='inside'"):
        Inserted(nn.Identity(), nn.Identity(), "inside")


def test_no_stages_without_example_input() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="example_input"):
        find_sites(model, kind="conv")
    assert len(find_sites(model, kind="conv", example_input=torch.randn(1, 3, 8, 8))) == 1
    with pytest.raises(ValueError, match="no nn.Sequential"):
        stage_names(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# insert_at / unwrap_inserted


@pytest.mark.parametrize("position", ["before", "after"])
def test_insert_at_bn_sites(cifar_resnet: CifarResNet, position: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = cifar_resnet(x)
    keys_before = set(cifar_resnet.state_dict())
    sites = find_sites(cifar_resnet, stages=[2, 3], kind="bn", position=position)  # type: ignore[arg-type]
    markers = [Marker() for _ in sites]
    for site, marker in zip(sites, markers, strict=True):
        assert insert_at(cifar_resnet, site, marker) is cifar_resnet
    with torch.no_grad():
        got = cifar_resnet(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [m.calls for m in markers] == [1] * len(sites)

    wrapped = {s.name for s in sites}
    keys_after = set(cifar_resnet.state_dict())
    untouched = {k for k in keys_before if k.rsplit(".", 1)[0] not in wrapped}
    assert untouched <= keys_after
    for name in wrapped:
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert f"{name}.{suffix}" not in keys_after
            assert f"{name}.original.{suffix}" in keys_after
        assert f"{name}.added.one" in keys_after
    assert len(keys_after) == len(keys_before) + len(sites)

    slot = cifar_resnet.get_submodule(sites[0].name)
    assert isinstance(slot, Inserted)
    assert slot.original is sites[0].module and slot.added is markers[0]
    assert slot.position == position
    assert f"position={position!r}" in repr(slot)

    again = find_sites(cifar_resnet, stages=[2, 3], kind="bn", position=position)  # type: ignore[arg-type]
    assert again == sites  # same names, same (original) modules
    assert len(find_sites(cifar_resnet, kind="bn")) == 12
    assert not any(isinstance(m, Marker) for _, m in iter_named_modules(cifar_resnet))


def test_insert_at_runs_before_or_after() -> None:
    log: list[str] = []
    conv = nn.Conv2d(1, 1, 1)
    conv.register_forward_hook(lambda m, a, out: log.append("conv"))
    model = nn.Sequential(conv)
    site = Site(name="0", module=conv, stage=1, kind="conv", position="after")
    insert_at(model, site, Marker(log, "first-after"))
    insert_at(model, site, Marker(log, "second-after"))
    insert_at(model, Site("0", conv, 1, "conv", "before"), Marker(log, "first-before"))
    insert_at(model, Site("0", conv, 1, "conv", "before"), Marker(log, "second-before"))
    model(torch.randn(1, 1, 2, 2))
    assert log == ["second-before", "first-before", "conv", "first-after", "second-after"]
    assert isinstance(model[0], Inserted)
    assert find_sites(model, kind="conv", example_input=torch.randn(1, 1, 2, 2))[0].module is conv


def test_insert_at_a_sequential_index_and_a_stage(cifar_resnet: CifarResNet) -> None:
    vgg = TinyVGG().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = vgg(x)
    (site,) = find_sites(vgg, stages=[2], kind="stage")
    marker = Marker()
    insert_at(vgg, site, marker)
    assert isinstance(vgg.features[int(site.name.split(".")[1])], Inserted)
    assert len(vgg.features) == 15
    torch.testing.assert_close(vgg(x), expected, rtol=0, atol=0)
    assert marker.calls == 1
    assert len(stage_names(vgg)) == 3  # the wrapped pool still splits stages
    assert find_sites(vgg, stages=[2], kind="stage") == [site]

    (stage3,) = find_sites(cifar_resnet, stages=[3], kind="stage")
    insert_at(cifar_resnet, stage3, Marker())
    assert isinstance(cifar_resnet.layer3, Inserted)
    assert stage_names(cifar_resnet) == [["layer1"], ["layer2"], ["layer3"]]
    assert _names(find_sites(cifar_resnet, stages=[3], kind="block")) == ["layer3.0", "layer3.1"]


def test_insert_at_rejects_stale_and_root_sites(cifar_resnet: CifarResNet) -> None:
    (site,) = find_sites(cifar_resnet, stages=[1], kind="stage")
    cifar_resnet.layer1 = nn.Sequential()
    with pytest.raises(ValueError, match="stale site"):
        insert_at(cifar_resnet, site, Marker())
    with pytest.raises(ValueError, match="itself"):
        insert_at(cifar_resnet, Site("", cifar_resnet, 1, "stage", "after"), Marker())
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        insert_at(cifar_resnet, Site("layer9", cifar_resnet, 1, "stage", "after"), Marker())


def test_unwrap_inserted(cifar_resnet: CifarResNet) -> None:
    x = torch.randn(1, 3, 16, 16)
    keys = list(cifar_resnet.state_dict())
    with torch.no_grad():
        expected = cifar_resnet(x)
    train_only = [TrainOnly() for _ in range(3)]
    kept = Marker()
    bns = find_sites(cifar_resnet, stages=[3], kind="bn")
    for site, marker in zip(bns, train_only, strict=False):
        insert_at(cifar_resnet, site, marker)
    insert_at(cifar_resnet, bns[0], kept)  # nested around a TrainOnly wrapper
    assert unwrap_inserted(cifar_resnet, lambda m: isinstance(m, TrainOnly)) is cifar_resnet
    assert not any(isinstance(m, TrainOnly) for m in cifar_resnet.modules())
    slot = cifar_resnet.get_submodule(bns[0].name)
    assert isinstance(slot, Inserted) and slot.added is kept and slot.original is bns[0].module
    assert sum(isinstance(m, Inserted) for m in cifar_resnet.modules()) == 1

    unwrap_inserted(cifar_resnet)
    assert list(cifar_resnet.state_dict()) == keys
    assert not any(isinstance(m, Inserted) for m in cifar_resnet.modules())
    with torch.no_grad():
        torch.testing.assert_close(cifar_resnet(x), expected, rtol=0, atol=0)
    root = Inserted(nn.Identity(), Marker())
    assert isinstance(unwrap_inserted(root), nn.Identity)


def test_site_repr_names_the_module_type(resnet18: models.ResNet) -> None:
    (site,) = find_sites(resnet18, stages=[1], kind="stage")
    assert repr(site) == "Site(name='layer1', module=Sequential, stage=1, kind='stage', position='after')"


def test_iter_named_modules_mirrors_named_modules_through_wrappers(cifar_resnet: CifarResNet) -> None:
    shared = nn.ReLU()
    # A module in two places is reported once, like named_modules does.
    cifar_resnet.get_submodule("layer1.0").relu = shared
    cifar_resnet.get_submodule("layer1.1").relu = shared
    expected = [(name, id(m)) for name, m in cifar_resnet.named_modules()]
    assert [(name, id(m)) for name, m in iter_named_modules(cifar_resnet)] == expected
    for site in find_sites(cifar_resnet, kind="bn") + find_sites(cifar_resnet, stages=[2], kind="stage"):
        insert_at(cifar_resnet, site, Marker())
    assert [(name, id(m)) for name, m in iter_named_modules(cifar_resnet)] == expected


def test_a_model_declaring_no_stages_has_no_sites_and_says_so() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    mlp.cnnkit_stages = ()  # type: ignore[assignment]
    assert stage_names(mlp) == []
    assert find_sites(mlp) == []
    with pytest.raises(ValueError, match="declares no stages"):
        find_sites(mlp, stages=[1])


def test_detection_backbones_and_frozen_bns_are_found() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.ops import FrozenBatchNorm2d

    detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    sites = find_sites(detector, stages=[4], kind="bn")
    assert len(sites) == 9
    assert sites[0].name == "backbone.body.layer4.0.bn1"
    frozen = models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)  # as in pretrained detectors
    frozen_sites = find_sites(frozen, stages=[4], kind="bn")
    assert len(frozen_sites) == 9
    assert all(isinstance(s.module, FrozenBatchNorm2d) for s in frozen_sites)
