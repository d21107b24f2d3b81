"""Every regularizer also applies to the papers' dense-prediction backbones (random weights, small inputs).

The SR and SWD papers evaluate on Cityscapes (DeepLabv3-R50) and Pascal VOC (Faster R-CNN R50-FPN); here each
method is applied to those torchvision models, then one forward and backward pass must run and produce
gradients for the backbone and for the method's own parameters.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnnkit.core import Context, create_method
from cnnkit.core.testing import registered_method_names

METHODS = registered_method_names(distribution="cnnkit-regularizers")
# Per-method settings for these models (defaults otherwise).
BACKBONE_CONFIG: dict[str, dict[str, Any]] = {}


def _segmentation() -> tuple[nn.Module, torch.Tensor, Any]:
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    x = torch.randn(2, 3, 64, 64)

    def loss(model: nn.Module) -> torch.Tensor:
        out = model(x)["out"]
        assert out.shape == (2, 5, 64, 64)
        return nn.functional.cross_entropy(out, torch.randint(0, 5, (2, 64, 64)))

    return model, x, loss


def _detection() -> tuple[nn.Module, torch.Tensor, Any]:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=96,
        max_size=96,
    )
    x = torch.rand(2, 3, 96, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])} for _ in range(2)
    ]

    def loss(model: nn.Module) -> torch.Tensor:
        losses = model(list(x), targets)
        return sum(losses.values())  # type: ignore[return-value]

    return model, x, loss


@pytest.mark.parametrize(
    "build", [_segmentation, _detection], ids=["deeplabv3_resnet50", "fasterrcnn_resnet50_fpn"]
)
@pytest.mark.parametrize("name", METHODS)
def test_method_applies_to_dense_prediction_backbones(name: str, build: Any) -> None:
    model, x, loss_fn = build()
    model.eval()
    method = create_method(name, **BACKBONE_CONFIG.get(name, {}))
    model = method.apply(model, Context(example_input=x, seed=0))
    before = {n for n, _ in model.named_parameters()}
    model.train()
    loss = loss_fn(model)
    loss = loss + method.extra_loss(model, Context(example_input=x))
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    backbone = [g for n, g in grads.items() if "layer4" in n and g is not None]
    assert backbone and any(g.abs().sum() > 0 for g in backbone), (
        "no gradient reached the backbone's last stage"
    )
    assert before == {n for n, _ in model.named_parameters()}
