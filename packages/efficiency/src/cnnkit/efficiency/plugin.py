"""cnnkit-efficiency's plugin: the table of contents of this distribution.

It imports only ``cnnkit.core`` and adds specs (the methods ``haste`` and ``mod``, and the ResNet-MoD bench
models); implementations are named by target strings and imported on first use.
"""

from __future__ import annotations

from typing import Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.specs import MethodSpec, ModelSpec

METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="haste",
        kind="efficiency",
        target="cnnkit.efficiency.haste:HASTE",
        summary="HASTE: data-free LSH merging of redundant input channels of convs at inference time.",
        paper="Meiner, Mehnert, Condurache. Data-Free Dynamic Compression of CNNs for Tractable Efficiency. "
        "VISAPP 2025. arXiv:2309.17211",
        tags=("inference", "data-free", "hashing", "dynamic"),
    ),
    MethodSpec(
        name="mod",
        kind="efficiency",
        target="cnnkit.efficiency.mod:MoD",
        summary="CNN Mixture-of-Depths: every second ResNet block computes only its top-k channels.",
        paper="Cakaj, Mehnert, Yang. CNN Mixture-of-Depths. ACCV 2024. arXiv:2409.17016",
        tags=("conditional-compute", "static-graph", "resnet"),
    ),
)


_MOD_PAPER = "Cakaj, Mehnert, Yang. CNN Mixture-of-Depths. ACCV 2024. arXiv:2409.17016"
_MOD_MODELS = "cnnkit.efficiency.models"

# (name, summary, input shape, classes, tags); parameter counts at the default number of classes.
_MOD_MODEL_TABLE: tuple[tuple[str, str, tuple[int, int, int], int, tuple[str, ...]], ...] = (
    (
        "resnet18_mod",
        "ImageNet ResNet-18-MoD (BasicBlock [2,2,2,2]), 5,463,902 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet26_mod",
        "ImageNet ResNet-26-MoD (BasicBlock [2,2,3,4]), 11,399,166 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet34_mod",
        "ImageNet ResNet-34-MoD (BasicBlock [3,4,6,3]), 12,934,414 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet42_mod",
        "ImageNet ResNet-42-MoD (BasicBlock [3,3,6,6]), 17,720,830 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet50_mod",
        "ImageNet ResNet-50-MoD (Bottleneck [3,4,6,3]), 18,105,949 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet75_mod",
        "ImageNet ResNet-75-MoD (Bottleneck [3,4,14,3]), 23,100,253 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet86_mod",
        "ImageNet ResNet-86-MoD (Bottleneck [3,4,18,3]), 25,597,405 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet101_mod",
        "ImageNet ResNet-101-MoD (Bottleneck [3,4,23,3]), 29,211,741 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "resnet152_mod",
        "ImageNet ResNet-152-MoD (Bottleneck [3,8,36,3]), 37,460,437 params",
        (3, 224, 224),
        1000,
        ("imagenet",),
    ),
    (
        "cifar_resnet18_mod",
        "CIFAR ResNet-18-MoD (3x3 stem, no max-pool), 4,948,352 params",
        (3, 32, 32),
        10,
        ("cifar",),
    ),
    (
        "cifar_resnet34_mod",
        "CIFAR ResNet-34-MoD (3x3 stem, no max-pool), 12,418,864 params",
        (3, 32, 32),
        10,
        ("cifar",),
    ),
    (
        "cifar_resnet50_mod",
        "CIFAR ResNet-50-MoD (Bottleneck, 3x3 stem), 16,069,759 params",
        (3, 32, 32),
        10,
        ("cifar",),
    ),
)

MODEL_SPECS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        name=name,
        target=f"{_MOD_MODELS}:{name}",
        summary=summary,
        paper=_MOD_PAPER,
        input_shape=shape,
        num_classes=classes,
        tags=(*tags, "resnet", "mod"),
    )
    for name, summary, shape, classes, tags in _MOD_MODEL_TABLE
)


@hookimpl
def cnnkit_register_methods(registry: Any) -> None:
    for spec in METHOD_SPECS:
        registry.add(spec)


@hookimpl
def cnnkit_register_models(registry: Any) -> None:
    for spec in MODEL_SPECS:
        registry.add(spec)
