"""Squeeze-and-Remember (METHODS.md §2): identity at init, placement, overheads, input sizes, contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cnnkit.core.config import ConfigError
from cnnkit.core.context import Context
from cnnkit.core.cost import count_params
from cnnkit.core.method import MethodNotApplicableError, build_param_groups
from cnnkit.core.sites import Inserted
from cnnkit.core.testing import TINY_MODELS, check_method_contract, make_context, seeded_batch
from cnnkit.regularizers.sr import SR, SqueezeRemember

R50_PARAMS = 25_557_032


def _model(name: str = "tiny_resnet", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TINY_MODELS[name]()


def _block(model: nn.Module) -> SqueezeRemember:
    (block,) = [m for m in model.modules() if isinstance(m, SqueezeRemember)]
    return block


def _added(slot: nn.Module) -> SqueezeRemember:
    """The SR block inserted at this slot."""
    assert isinstance(slot, Inserted)
    assert isinstance(slot.added, SqueezeRemember)
    return slot.added


@pytest.mark.parametrize("model_name", sorted(TINY_MODELS))
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_identity_at_init_in_train_and_eval(model_name: str, stage: int) -> None:
    plain, model = _model(model_name), SR(stage=stage).apply(_model(model_name), make_context())
    x = seeded_batch(seed=1)[0]
    with torch.no_grad():
        for train in (True, False):
            plain.train(train)
            model.train(train)
            assert torch.equal(model(x), plain(x))


def test_placement_after_the_stage_with_traced_size() -> None:
    model = SR(stage=2).apply(_model(), make_context())
    assert isinstance(model.layer2, Inserted)
    assert _block(model).size == (16, 8, 8)  # TinyResNet layer2 at 16×16 input
    vgg = SR(stage=3).apply(_model("tiny_vgg"), make_context())
    assert isinstance(vgg.features[11], Inserted)  # after the 3rd max-pool
    assert _block(vgg).size == (32, 2, 2)


def test_resnet50_imagenet_overheads() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()
    ctx = Context(example_input=torch.zeros(1, 3, 224, 224))
    base = count_params(model).total
    assert base == R50_PARAMS
    # METHODS.md §2f: C + HW·U + U·P + P·CHW = 1024 + 196·16 + 16·10 + 10·1024·196 = 2,011,360 parameters
    # on 25,557,032, i.e. 7.870084 %, which the paper prints rounded to two decimals as 7.87 %.
    model = SR(stage=3, memory_blocks=10, hidden=16).apply(model, ctx)
    added = count_params(model).total - base
    assert _added(model.layer3).size == (1024, 14, 14)
    assert added == 2_011_360
    assert round(100 * added / R50_PARAMS, 2) == 7.87
    # site="bottleneck_inner": inside the stage's last bottleneck, after its 3×3 conv + BN (256×14×14)
    model = SR(stage=3, memory_blocks=10, hidden=16, site="bottleneck_inner").apply(model, ctx)
    assert _added(model.layer3.original[5].bn2).size == (256, 14, 14)
    assert count_params(model).total - base - added == 256 + 196 * 16 + 16 * 10 + 10 * 256 * 196


def test_added_parameters_formula_small_settings() -> None:
    # ImageNet R50 (M=3) P=2, U=16 → 405,600 (1.59 %); CIFAR-100 R18 (M=4, P=2, U=8) 512×4×4 → 17,040 (0.15 %)
    def count(c: int, h: int, w: int, p: int, u: int) -> int:
        return sum(t.numel() for t in SqueezeRemember(c, h, w, memory_blocks=p, hidden=u).parameters())

    assert count(1024, 14, 14, 2, 16) == 405_600
    assert round(100 * 405_600 / R50_PARAMS, 2) == 1.59
    assert count(512, 4, 4, 2, 8) == 17_040
    assert round(100 * 17_040 / 11_220_132, 2) == 0.15
    # CIFAR-100 R18 + D (3, 10) [1.47 %]; CIFAR-100 R50 (3, 2) and + DB (4, 4) [0.14 %] with bottleneck_inner
    assert round(100 * count(256, 8, 8, 10, 8) / 11_220_132, 2) == 1.47
    assert round(100 * count(256, 8, 8, 2, 8) / 23_705_252, 2) == 0.14
    assert round(100 * count(512, 4, 4, 4, 8) / 23_705_252, 2) == 0.14


def test_wrong_input_size_raises_naming_both_sizes_and_interpolate_works() -> None:
    x = torch.randn(2, 3, 32, 32)
    model = SR(stage=3).apply(_model(), make_context()).eval()
    with pytest.raises(ValueError, match=r"\(32, 4, 4\).*got \(C, H, W\) = \(32, 8, 8\).*interpolate"):
        model(x)
    model = SR(stage=3, on_size_mismatch="interpolate").apply(_model(), make_context()).eval()
    with torch.no_grad():
        _block(model).memory.normal_()
        out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_softmax_weights_and_shapes() -> None:
    block = SqueezeRemember(8, 4, 4, memory_blocks=5, hidden=3)
    x = torch.randn(6, 8, 4, 4)
    alpha = block.weights(x)
    assert alpha.shape == (6, 5)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(6))
    with torch.no_grad():
        block.memory.normal_()
    assert block(x).shape == x.shape
    assert torch.equal(block.train()(x), block.eval()(x))


def test_gradients_memory_first_then_the_squeeze_network() -> None:
    model = SR(stage=2).apply(_model(), make_context())
    block = _block(model)
    optimizer = torch.optim.SGD(build_param_groups(model, SR(stage=2)), lr=0.1)
    names = ("squeeze", "fc1", "fc2")
    for step in range(2):
        x, y = seeded_batch(seed=step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        assert block.memory.grad is not None and block.memory.grad.abs().sum() > 0
        for name in names:
            grad = block.get_submodule(name).weight.grad
            assert grad is not None
            assert (grad.abs().sum() > 0) == (step > 0), (name, step)  # zero memory → zero grad at step 0
        optimizer.step()
    assert block.memory.abs().sum() > 0


def test_options_relu_bias_paper_literal_init_and_memory_decay() -> None:
    method = SR(
        stage=3, hidden_activation="relu", bias=True, fcn_init="paper_literal", memory_weight_decay=0.0
    )
    model = method.apply(_model(), make_context())
    block = _block(model)
    assert isinstance(block.act, nn.ReLU)
    assert block.squeeze.bias is not None and block.fc1.bias is not None
    bound = (1 / 32) ** 0.5
    for p in (*block.fc1.parameters(), *block.fc2.parameters()):
        assert p.abs().max() <= bound
    groups = build_param_groups(model, method, weight_decay=5e-4)
    assert groups[1] == {"params": [block.memory], "weight_decay": 0.0}
    x = seeded_batch()[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), _model().eval()(x))
    assert SR().param_groups(model) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("stage", 0), ("memory_blocks", 0), ("hidden", 0), ("site", "block"), ("on_size_mismatch", "crop")],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"- {field}:"):
        SR(**{field: value})


def test_not_applicable() -> None:
    with pytest.raises(MethodNotApplicableError, match="stage 4"):
        SR(stage=4).apply(_model(), make_context())  # TinyResNet has stages 1..3
    with pytest.raises(MethodNotApplicableError, match="bottleneck"):
        SR(stage=3, site="bottleneck_inner").apply(_model(), make_context())  # BasicBlocks


def test_stats() -> None:
    method = SR(stage=2, memory_blocks=3, hidden=4)
    stats = method.stats(method.apply(_model(), make_context()))
    assert stats == {"sr_blocks": 1.0, "sr_params": 16 + 64 * 4 + 4 * 3 + 3 * 16 * 64, "sr_memory_norm": 0.0}


@pytest.mark.parametrize("config", [dict(SR.contract_config), {}])
def test_contract(config: dict[str, Any]) -> None:
    check_method_contract(lambda: SR(**config))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((16, 8, 8), r"4-D \(N, C, H, W\) input, got 3-D shape \(16, 8, 8\); add a batch dimension"),
        ((2, 16, 8, 8, 1), r"4-D \(N, C, H, W\) input, got 5-D shape \(2, 16, 8, 8, 1\)$"),
        ((2, 4, 8, 8), r"\(C, H, W\) = \(16, 8, 8\) got an input of shape \(2, 4, 8, 8\); the channel count"),
    ],
)
def test_input_errors_name_the_actual_problem(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):  # an unbatched input used to blame the channel count
        SqueezeRemember(16, 8, 8)(torch.randn(shape))
