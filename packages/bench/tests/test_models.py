"""The model zoo: exact parameter counts and MACs (METHODS.md §1.6), shapes, declared stages and the specs."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
import torchvision
from torch import nn

from cnnkit.bench._model_specs import MODEL_SPECS
from cnnkit.core.cost import count_flops
from cnnkit.core.sites import stage_names

SPECS = {spec.name: spec for spec in MODEL_SPECS}


def factory(name: str) -> Callable[..., nn.Module]:
    return SPECS[name].load()  # type: ignore[no-any-return]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def declared(model: nn.Module) -> tuple[str | tuple[str, ...], ...]:
    return cast(tuple[str | tuple[str, ...], ...], model.__dict__["cnnkit_stages"])


def stage_list(model: nn.Module) -> list[list[str]]:
    return [[s] if isinstance(s, str) else list(s) for s in declared(model)]


# --------------------------------------------------------------------------------------------- parameters

PARAM_COUNTS = [
    ("lenet300_100", {}, 266_610),
    ("lenet5_caffe", {}, 431_080),
    ("resnet20", {}, 272_474),
    ("resnet20", {"shortcut": "projection"}, 272_474),
    ("resnet20", {"shortcut": "zero_pad"}, 269_722),
    ("resnet32", {}, 466_906),
    ("resnet56", {}, 855_770),
    ("resnet18", {"num_classes": 10}, 11_173_962),
    ("resnet18", {"num_classes": 100}, 11_220_132),
    ("resnet34", {"num_classes": 10}, 21_282_122),
    ("resnet34", {"num_classes": 100}, 21_328_292),
    ("resnet50", {"num_classes": 10}, 23_520_842),
    ("resnet50", {"num_classes": 100}, 23_705_252),
    ("vgg16_bn", {"num_classes": 10}, 15_253_578),
    ("vgg16_bn", {"num_classes": 100}, 15_299_748),
    ("vgg19_bn", {"num_classes": 10}, 20_565_834),
    ("vgg19_bn", {"num_classes": 100}, 20_612_004),
    ("imagenet_resnet18", {}, 11_689_512),
    ("imagenet_resnet34", {}, 21_797_672),
    ("imagenet_resnet50", {}, 25_557_032),
    ("imagenet_resnet101", {}, 44_549_160),
    ("mobilenet_v2", {}, 3_504_872),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), PARAM_COUNTS)
def test_parameter_count_is_exact(name: str, kwargs: dict[str, Any], expected: int) -> None:
    with torch.device("meta"):  # no memory, no init cost: only shapes matter here
        model = factory(name)(**kwargs)
    assert n_params(model) == expected


def test_lenet_weight_counts_without_biases() -> None:
    for name, weights in (("lenet300_100", 266_200), ("lenet5_caffe", 430_500)):
        model = factory(name)()
        assert sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight")) == weights


def test_zero_pad_shortcut_has_no_parameters_and_pads_channels() -> None:
    model = factory("resnet20")(shortcut="zero_pad")
    shortcut = model.get_submodule("layer2.0.downsample")
    assert n_params(shortcut) == 0
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_unknown_shortcut_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="shortcut"):
        factory("resnet20")(shortcut="conv")


@pytest.mark.parametrize(
    ("ours", "theirs"), [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)]
)
def test_cifar_resnet_has_torchvision_parameter_names(ours: str, theirs: Callable[..., nn.Module]) -> None:
    with torch.device("meta"):
        a, b = factory(ours)(), theirs(weights=None)
    assert list(a.state_dict()) == list(b.state_dict())
    # Same shapes everywhere except the 3×3 stem (7×7 in torchvision) and the classifier.
    b_shapes = {k: v.shape for k, v in b.state_dict().items()}
    differing = {k for k, v in a.state_dict().items() if v.shape != b_shapes[k]}
    assert differing == {"conv1.weight", "fc.weight", "fc.bias"}


# --------------------------------------------------------------------------------------------- MACs


@pytest.mark.parametrize(
    ("name", "mmacs"),
    [("resnet18", 555), ("resnet34", 1159), ("resnet50", 1298), ("vgg16_bn", 314), ("vgg19_bn", 399)],
)
def test_macs_match_the_methods_table(name: str, mmacs: int) -> None:
    macs = count_flops(factory(name)(), torch.zeros(1, 3, 32, 32)).macs
    assert macs == pytest.approx(mmacs * 1e6, rel=0.01)


# --------------------------------------------------------------------------------------------- forward


def _input(name: str, batch: int = 2) -> torch.Tensor:
    shape = SPECS[name].input_shape
    assert shape is not None
    if "imagenet" in SPECS[name].tags:
        shape = (shape[0], 64, 64)  # keeps the test fast; the models are resolution-agnostic
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_shape_with_custom_num_classes(name: str) -> None:
    model = factory(name)(num_classes=7).eval()
    with torch.no_grad():
        out = model(_input(name))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name",
    ["resnet20", "resnet18", "vgg16_bn", "lenet5_caffe", "lenet300_100", "imagenet_resnet18", "mobilenet_v2"],
)
def test_other_in_channels(name: str) -> None:
    in_channels = 1 if SPECS[name].input_shape[0] == 3 else 3  # type: ignore[index]
    model = factory(name)(num_classes=5, in_channels=in_channels).eval()
    x = _input(name)
    x = x[:, :1] if in_channels == 1 else x.expand(-1, 3, -1, -1)
    with torch.no_grad():
        assert model(x).shape == (2, 5)


@pytest.mark.parametrize(("name", "stem"), [("imagenet_resnet50", "conv1"), ("mobilenet_v2", "features.0.0")])
def test_imagenet_stem_replacement_keeps_hyper_parameters(name: str, stem: str) -> None:
    reference = factory(name)().get_submodule(stem)
    conv = factory(name)(in_channels=4).get_submodule(stem)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 4
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(conv, attr) == getattr(reference, attr)
    assert (conv.bias is None) == (reference.bias is None)


def test_lenet5_follows_input_size() -> None:
    model = factory("lenet5_caffe")(input_size=32)
    assert cast(nn.Linear, model.get_submodule("fc1")).in_features == 50 * 5 * 5
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# --------------------------------------------------------------------------------------------- stages

STAGE_COUNTS = {
    "lenet300_100": 0,
    "lenet5_caffe": 2,
    "resnet20": 3,
    "resnet32": 3,
    "resnet56": 3,
    "resnet18": 4,
    "resnet34": 4,
    "resnet50": 4,
    "vgg16_bn": 5,
    "vgg19_bn": 5,
    "imagenet_resnet18": 4,
    "imagenet_resnet34": 4,
    "imagenet_resnet50": 4,
    "imagenet_resnet101": 4,
    "mobilenet_v2": 5,
}


def test_every_model_has_a_stage_count() -> None:
    assert set(STAGE_COUNTS) == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_declared_stages_resolve_to_submodules(name: str) -> None:
    with torch.device("meta"):
        model = factory(name)()
    stages = declared(model)  # a plain instance attribute, not a submodule
    assert isinstance(stages, tuple) and "cnnkit_stages" not in dict(model.named_children())
    assert len(stages) == STAGE_COUNTS[name]
    names = [n for stage in stage_list(model) for n in stage]
    assert len(names) == len(set(names))
    for qualified in names:
        model.get_submodule(qualified)  # raises AttributeError if the name is wrong
    if stages:
        assert stage_names(model) == stage_list(model)  # core's site selection reads the declaration


def _stage_sizes(model: nn.Module, x: torch.Tensor) -> list[int]:
    sizes: list[int] = []
    lasts = [model.get_submodule(stage[-1]) for stage in stage_list(model)]
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1])) for m in lasts]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return sizes


@pytest.mark.parametrize(
    ("name", "side", "expected"),
    [
        ("resnet18", 32, [32, 16, 8, 4]),
        ("resnet50", 32, [32, 16, 8, 4]),
        ("resnet20", 32, [32, 16, 8]),
        ("vgg16_bn", 32, [16, 8, 4, 2, 1]),
        ("vgg19_bn", 32, [16, 8, 4, 2, 1]),
        ("lenet5_caffe", 28, [12, 4]),
        ("imagenet_resnet18", 64, [16, 8, 4, 2]),
        ("mobilenet_v2", 224, [112, 56, 28, 14, 7]),
    ],
)
def test_stage_output_sizes(name: str, side: int, expected: list[int]) -> None:
    model = factory(name)()
    x = torch.randn(1, SPECS[name].input_shape[0], side, side)  # type: ignore[index]
    assert _stage_sizes(model, x) == expected


def test_vgg_stages_end_at_max_pools() -> None:
    model = factory("vgg16_bn")()
    for stage in stage_list(model):
        modules = [model.get_submodule(n) for n in stage]
        assert isinstance(modules[-1], nn.MaxPool2d)
        assert not any(isinstance(m, nn.MaxPool2d) for m in modules[:-1])
    covered = [n for stage in stage_list(model) for n in stage]
    assert covered == [f"features.{i}" for i in range(len(cast(nn.Sequential, model.features)))]


# --------------------------------------------------------------------------------------------- specs


def test_spec_names_are_unique_and_name_their_factory() -> None:
    names = [spec.name for spec in MODEL_SPECS]
    assert len(names) == len(set(names)) == 15
    for spec in MODEL_SPECS:
        assert spec.target.startswith("cnnkit.bench.models.")
        assert spec.target.rsplit(":", 1)[1] == spec.name
        assert spec.paper and spec.summary and spec.tags


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda s: s.name)
def test_spec_loads_a_keyword_only_factory_matching_its_defaults(spec: Any) -> None:
    fn = spec.load()
    assert callable(fn)
    params = inspect.signature(fn).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["num_classes"].default == spec.num_classes
    assert params["in_channels"].default == spec.input_shape[0]
    assert f"{n_params_default(spec.name):,}" in spec.summary


def n_params_default(name: str) -> int:
    with torch.device("meta"):
        return n_params(factory(name)())


@pytest.mark.parametrize("module", ["cnnkit.bench._model_specs", "cnnkit.bench.models"])
def test_import_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
