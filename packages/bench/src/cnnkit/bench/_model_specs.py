"""The model zoo's specs, read by the bench's plugin at discovery time.

This module imports only :class:`cnnkit.core.specs.ModelSpec` (no torch): each spec names its factory by a
``target`` string, imported on first use. Parameter counts are at the default number of classes.
"""

from __future__ import annotations

from cnnkit.core.specs import ModelSpec

__all__ = ["MODEL_SPECS"]

_PKG = "cnnkit.bench.models"
_LECUN = "LeCun et al. 1998"
_HE = "He et al. 2016, arXiv 1512.03385"
_VGG = "Simonyan & Zisserman 2015, arXiv 1409.1556"
_SANDLER = "Sandler et al. 2018, arXiv 1801.04381"
_MNIST = (1, 28, 28)
_CIFAR = (3, 32, 32)
_IMAGENET = (3, 224, 224)


def _spec(
    name: str,
    module: str,
    summary: str,
    paper: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    tags: tuple[str, ...],
) -> ModelSpec:
    return ModelSpec(
        name=name,
        target=f"{_PKG}.{module}:{name}",
        summary=summary,
        paper=paper,
        input_shape=input_shape,
        num_classes=num_classes,
        tags=tags,
    )


MODEL_SPECS: tuple[ModelSpec, ...] = (
    _spec(
        "lenet300_100",
        "lenet",
        "LeNet-300-100 MLP (784-300-100-10, ReLU), 266,610 params",
        _LECUN,
        _MNIST,
        10,
        ("mnist", "mlp"),
    ),
    _spec(
        "lenet5_caffe",
        "lenet",
        "LeNet-5-Caffe (conv 20, conv 50, FC 500), 431,080 params",
        _LECUN,
        _MNIST,
        10,
        ("mnist", "cnn"),
    ),
    _spec(
        "resnet20",
        "cifar_resnet",
        "CIFAR ResNet-20 (16/32/64, 1x1 projections), 272,474 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "resnet32",
        "cifar_resnet",
        "CIFAR ResNet-32 (16/32/64, 1x1 projections), 466,906 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "resnet56",
        "cifar_resnet",
        "CIFAR ResNet-56 (16/32/64, 1x1 projections), 855,770 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "resnet18",
        "cifar_resnet",
        "CIFAR ResNet-18 (3x3 stem, no max-pool), 11,173,962 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "resnet34",
        "cifar_resnet",
        "CIFAR ResNet-34 (3x3 stem, no max-pool), 21,282,122 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "resnet50",
        "cifar_resnet",
        "CIFAR ResNet-50 (Bottleneck, 3x3 stem), 23,520,842 params",
        _HE,
        _CIFAR,
        10,
        ("cifar", "resnet"),
    ),
    _spec(
        "vgg16_bn",
        "cifar_vgg",
        "CIFAR VGG16-BN (config D, 512-512 classifier), 15,253,578 params",
        _VGG,
        _CIFAR,
        10,
        ("cifar", "vgg"),
    ),
    _spec(
        "vgg19_bn",
        "cifar_vgg",
        "CIFAR VGG19-BN (config E, 512-512 classifier), 20,565,834 params",
        _VGG,
        _CIFAR,
        10,
        ("cifar", "vgg"),
    ),
    _spec(
        "imagenet_resnet18",
        "imagenet",
        "torchvision ResNet-18, no pretrained weights, 11,689,512 params",
        _HE,
        _IMAGENET,
        1000,
        ("imagenet", "torchvision", "resnet"),
    ),
    _spec(
        "imagenet_resnet34",
        "imagenet",
        "torchvision ResNet-34, no pretrained weights, 21,797,672 params",
        _HE,
        _IMAGENET,
        1000,
        ("imagenet", "torchvision", "resnet"),
    ),
    _spec(
        "imagenet_resnet50",
        "imagenet",
        "torchvision ResNet-50 (v1.5), no pretrained weights, 25,557,032 params",
        _HE,
        _IMAGENET,
        1000,
        ("imagenet", "torchvision", "resnet"),
    ),
    _spec(
        "imagenet_resnet101",
        "imagenet",
        "torchvision ResNet-101 (v1.5), no pretrained weights, 44,549,160 params",
        _HE,
        _IMAGENET,
        1000,
        ("imagenet", "torchvision", "resnet"),
    ),
    _spec(
        "mobilenet_v2",
        "imagenet",
        "torchvision MobileNetV2, no pretrained weights, 3,504,872 params",
        _SANDLER,
        _IMAGENET,
        1000,
        ("imagenet", "torchvision", "mobilenet"),
    ),
)
