"""LeNet-300-100 and LeNet-5-Caffe (LeCun et al. 1998, "Gradient-based learning applied to document
recognition"), in the forms used by the pruning literature (SNIP, GraSP, Lottery Ticket; METHODS.md §1.6).

* LeNet-300-100: a 784-300-100-10 MLP with ReLU on the flattened image (266,610 parameters at 10 classes).
  It has no spatial stages, so it declares ``cnnkit_stages = ()``: stage-based methods (SWD, SBN, SR, ...)
  do not apply to it; :func:`cnnkit.core.sites.stage_names` raises ``ValueError`` for it.
* LeNet-5-Caffe (Caffe's ``lenet_train_test.prototxt``): conv 20@5×5 → max-pool 2 → conv 50@5×5 → max-pool 2
  → FC 800→500 → ReLU → FC 500→classes, no activation after the convolutions (431,080 parameters). Two
  stages, each a convolution plus its pool.

Both take ``input_size`` (default 28) so the flattened feature size follows the input resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnkit.bench.models._common import Stages

__all__ = ["LeNet5Caffe", "LeNet300100", "lenet5_caffe", "lenet300_100"]


class LeNet300100(nn.Module):
    """784-300-100-classes MLP with ReLU (for ``in_channels=1``, ``input_size=28``).

    Args:
        num_classes: outputs of the last layer.
        in_features: length of the flattened input.
        hidden: widths of the two hidden layers.
    """

    def __init__(self, *, num_classes: int, in_features: int, hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.cnnkit_stages: Stages = ()

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        out: Tensor = self.fc3(x)
        return out


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5 variant: conv1 → pool1 → conv2 → pool2 → fc1 → ReLU → fc2.

    Args:
        num_classes: outputs of the last layer.
        in_channels: channels of the input image.
        input_size: height (= width) of the input image.
    """

    def __init__(self, *, num_classes: int, in_channels: int, input_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small for LeNet-5 (needs at least 16)")
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)
        self.cnnkit_stages: Stages = (("conv1", "pool1"), ("conv2", "pool2"))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        out: Tensor = self.fc2(x)
        return out


def lenet300_100(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-300-100 on a flattened ``in_channels × input_size × input_size`` image (266,610 params)."""
    return LeNet300100(num_classes=num_classes, in_features=in_channels * input_size * input_size)


def lenet5_caffe(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-5-Caffe (431,080 params at 1×28×28 and 10 classes)."""
    return LeNet5Caffe(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
