"""CNN Mixture-of-Depths: the block against a literal reference, gradients, conversion, errors, stats."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
import torch
import torchvision
from torch import Tensor, nn

from cnnkit.core import ConfigError, MethodNotApplicableError
from cnnkit.core.cost import count_flops
from cnnkit.core.testing import TinyResNet, TinyVGG, check_method_contract, make_context
from cnnkit.efficiency.mod import MoD, MoDBlock, ReducedBlock, convert_resnet, k_for, mod_blocks


def reference(block: MoDBlock, x: Tensor) -> Tensor:
    """METHODS.md §7b written out with plain ops (scores, topk, a Python loop gather, explicit fusion)."""
    assert block.selector is not None
    sel = block.selector
    s = torch.sigmoid(sel.fc2(torch.relu(sel.fc1(x.mean((2, 3))))))
    v, idx = s.topk(block.k, dim=1)
    if block.selected_order == "index":
        idx, order = idx.sort(dim=1)
        v = torch.stack([v[b, order[b]] for b in range(x.shape[0])])
    xs = torch.stack([x[b, idx[b]] for b in range(x.shape[0])])
    y = block.block(xs) * v[:, :, None, None]
    out = x.clone()
    for b in range(x.shape[0]):
        for j in range(block.k):
            target = {"first": j, "last": block.channels - block.k + j, "original": int(idx[b, j])}
            out[b, target[block.fuse_to]] = out[b, target[block.fuse_to]] + y[b, j]
    return out


def randomize_bn(module: nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("bottleneck", {}),
        ("basic", {}),
        ("bottleneck", {"fuse_to": "last"}),
        ("bottleneck", {"fuse_to": "original"}),
        ("basic", {"selected_order": "index"}),
    ],
)
@pytest.mark.parametrize("grad", [True, False])
def test_block_matches_literal_reference(kind: str, options: dict[str, Any], grad: bool) -> None:
    torch.manual_seed(0)
    block = MoDBlock(64, kind, c=8, **options).eval()  # type: ignore[arg-type]
    randomize_bn(block)
    x = torch.randn(3, 64, 5, 6)
    with torch.set_grad_enabled(grad):
        ref = reference(block, x)
        x_in = x.clone().requires_grad_(grad)
        out = block(x_in)
    assert out.shape == x.shape and block.k == 8
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    if grad:  # with autograd the input is never modified; without, the fusion writes into it
        torch.testing.assert_close(x_in.detach(), x, rtol=0, atol=0)
    else:
        assert out.data_ptr() == x_in.data_ptr()


@pytest.mark.parametrize("fuse_to", ["first", "original"])
def test_copy_fusion_gives_the_same_output_and_keeps_the_input(fuse_to: str) -> None:
    torch.manual_seed(0)
    fast = MoDBlock(64, "bottleneck", c=16, fuse_to=fuse_to).eval()  # type: ignore[arg-type]
    safe = copy.deepcopy(fast)
    safe.inplace_fusion = False
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        x_safe, x_fast = x.clone(), x.clone()
        expected = safe(x_safe)
        out = fast(x_fast)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(x_safe, x, rtol=0, atol=0)  # the copy fusion leaves its input alone
    assert out.data_ptr() == x_fast.data_ptr()  # the in-place one has no copy: the input holds the output
    x_train = x.clone().requires_grad_(True)
    fast.train()(x_train).sum().backward()  # with autograd the fusion never writes into its input
    torch.testing.assert_close(x_train.detach(), x, rtol=0, atol=0)


def test_untouched_channels_equal_the_input_exactly() -> None:
    torch.manual_seed(0)
    block = MoDBlock(256, "bottleneck")  # k = 4 at c = 64
    x = torch.randn(2, 256, 7, 7)
    for mode in (block.train(), block.eval()):
        out = mode(x.clone())
        assert torch.equal(out[:, 4:], x[:, 4:])
        assert not torch.equal(out[:, :4], x[:, :4])


def test_forced_selection_gives_x_plus_f_of_first_k_channels() -> None:
    torch.manual_seed(0)
    c, k = 32, 4
    block = MoDBlock(c, "basic", c=8, selector_bias=True, selected_order="index").eval()
    randomize_bn(block)
    assert block.selector is not None
    with torch.no_grad():
        block.selector.fc2.weight.zero_()
        block.selector.fc2.bias.copy_(torch.tensor([100.0] * k + [-100.0] * (c - k)))
    x = torch.randn(2, c, 6, 6)
    with torch.no_grad():
        v, idx = block.select(x)
        out = block(x.clone())
        expected = torch.cat([x[:, :k] + block.block(x[:, :k]), x[:, k:]], dim=1)
    assert torch.equal(idx, torch.arange(k).expand(2, k)) and torch.equal(v, torch.ones(2, k))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_reduced_blocks_have_the_paper_shapes() -> None:
    bottleneck = ReducedBlock("bottleneck", 32)
    convs = [m for m in bottleneck.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [
        (32, 8, (1, 1)),
        (8, 8, (3, 3)),
        (8, 32, (1, 1)),
    ]
    basic = ReducedBlock("basic", 8)
    convs = [m for m in basic.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(8, 8, (3, 3))] * 2
    assert all(m.bias is None for m in convs)
    # no ReLU after the last BN: negative outputs survive
    x = torch.randn(4, 8, 5, 5)
    assert (basic.train()(x) < 0).any()


def test_gradients_reach_the_selector_and_match_finite_differences() -> None:
    torch.manual_seed(1)  # the selector's 2 hidden ReLUs are not all dead on this batch (seed 0: they are)
    block = MoDBlock(32, "bottleneck", c=8).double()  # k = 4, inner width 1, selector 32 -> 2 -> 32
    x = torch.randn(2, 32, 2, 2, dtype=torch.double, requires_grad=True)
    block(x).square().sum().backward()
    assert block.selector is not None
    for p in block.selector.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    fc2 = block.selector.fc2.weight

    def f(weight: Tensor, inp: Tensor) -> Tensor:
        with torch.nn.utils.stateless._reparametrize_module(block, {"selector.fc2.weight": weight}):
            out: Tensor = block(inp)
        return out

    assert torch.autograd.gradcheck(
        f, (fc2.detach().clone().requires_grad_(True), x), eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_random_selection_has_no_selector_and_picks_k_distinct_channels() -> None:
    torch.manual_seed(0)
    block = MoDBlock(64, "basic", c=16, selection="random")
    assert block.selector is None
    x = torch.randn(5, 64, 3, 3)
    v, idx = block.select(x)
    assert torch.equal(v, torch.ones(5, 4))
    assert all(len(set(row.tolist())) == 4 for row in idx)
    torch.manual_seed(1)
    first = block.select(x)[1]
    torch.manual_seed(1)
    assert torch.equal(block.select(x)[1], first)


def test_static_graph_without_graph_breaks() -> None:
    torch.manual_seed(0)
    block = MoDBlock(32, "basic", c=8).eval()
    x = torch.randn(2, 32, 6, 6)
    compiled = torch.compile(block, fullgraph=True, backend="eager", dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x))
    block.train()
    out = compiled(x.requires_grad_(True))
    out.sum().backward()
    assert x.grad is not None


# --------------------------------------------------------------------------------------------- conversion


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_converts_every_second_block_of_a_torchvision_resnet50() -> None:
    from cnnkit.efficiency.models import resnet50_mod

    with torch.device("meta"):
        model = torchvision.models.resnet50()
        names = convert_resnet(model, **MoD().block_options())
        built = resnet50_mod()
    assert names == [
        "layer1.1",
        "layer2.1",
        "layer2.3",
        "layer3.1",
        "layer3.3",
        "layer3.5",
        "layer4.1",
    ]
    assert [b.k for _, b in mod_blocks(model)] == [4, 8, 8, 16, 16, 16, 32]
    assert n_params(model) == n_params(built) == 18_105_949


def test_method_on_bench_cifar_resnets() -> None:
    from cnnkit.bench.models.cifar_resnet import resnet18, resnet20

    torch.manual_seed(0)
    ctx = make_context()
    model = MoD().apply(resnet18(), ctx)
    assert [(n, b.kind, b.k) for n, b in mod_blocks(model)] == [
        ("layer1.1", "basic", 1),
        ("layer2.1", "basic", 2),
        ("layer3.1", "basic", 4),
        ("layer4.1", "basic", 8),
    ]
    assert n_params(model) == 4_948_352  # METHODS.md §7i, the paper's 4.95 M
    with pytest.raises(MethodNotApplicableError, match=r"c=64 is too large for a block with 16 channels"):
        MoD().apply(resnet20(), ctx)
    small = MoD(c=16).apply(resnet20(), ctx)
    assert [b.k for _, b in mod_blocks(small)] == [1, 2, 4]


def test_method_refuses_non_resnets_with_a_reason() -> None:
    ctx = make_context()
    with pytest.raises(MethodNotApplicableError, match="not a ResNet BasicBlock/Bottleneck"):
        MoD(c=4).apply(TinyVGG(), ctx)
    with pytest.raises(MethodNotApplicableError, match="MoD converted 0 block"):
        MoD(c=4, placement="every").apply(TinyVGG(), ctx)
    with pytest.raises(MethodNotApplicableError, match="ResNet"):
        MoD().apply(torchvision.models.mobilenet_v2(), ctx)
    tiny = TinyResNet()
    with pytest.raises(MethodNotApplicableError, match="c=64 is too large for a block with 8 channels"):
        MoD(placement="every").apply(tiny, ctx)
    assert not mod_blocks(tiny)  # nothing was changed before the error


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"c": 0}, "c", "1 <= c"),
        ({"fuse_to": "middle"}, "fuse_to", "'first', 'last', 'original'"),
        ({"selected_order": "random"}, "selected_order", "'score', 'index'"),
        ({"placement": "all"}, "placement", "'alternate', 'every'"),
        ({"bogus": 1}, "bogus", "allowed fields"),
        ({"stages": (0,)}, "stages", "0 is not a stage"),
        ({"stages": ()}, "stages", "at least 1 item"),
    ],
)
def test_bad_config_names_the_field_and_the_allowed_values(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        MoD(**overrides)
    assert f"{field}:" in str(info.value) and allowed in str(info.value)


def test_stages_option_and_channels_last_models() -> None:
    from cnnkit.bench.models.cifar_resnet import resnet18

    ctx = make_context()
    model = MoD(stages=(3, -1)).apply(resnet18(), ctx)
    assert [n for n, _ in mod_blocks(model)] == ["layer3.1", "layer4.1"]
    with pytest.raises(MethodNotApplicableError, match=r"stage 5; this model has stages 1\.\.4"):
        MoD(stages=(5,)).apply(resnet18(), ctx)
    nhwc = MoD().apply(resnet18().to(memory_format=torch.channels_last), ctx)
    weights = [cast(nn.Conv2d, block.block.conv1).weight for _, block in mod_blocks(nhwc)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not any(w.is_contiguous() for w in weights[1:])  # k = 1 (layer1.1): both layouts coincide


def test_block_rejects_c_larger_than_the_channels() -> None:
    assert k_for(256, 64) == 4
    with pytest.raises(ValueError, match=r"c=64 is too large for a block with 32 channels.*c <= 32"):
        MoDBlock(32, "basic")
    with pytest.raises(ValueError, match="min_k=2"):
        MoDBlock(64, "basic", c=64, min_k=2)


def test_stats_report_k_per_block_and_macs_against_dense() -> None:
    from cnnkit.bench.models.cifar_resnet import resnet18

    torch.manual_seed(0)
    dense = resnet18()
    x = make_context().example_input[:1]
    dense_macs = count_flops(dense, x).macs
    method = MoD()
    model = method.apply(copy.deepcopy(dense), make_context())
    stats = method.stats(model)
    assert stats["mod_blocks"] == 4
    assert stats["mod_k.layer3.1"] == 4
    assert stats["dense_macs"] == dense_macs
    assert stats["mod_macs"] == count_flops(model, x).macs < dense_macs
    assert stats["mod_macs_ratio"] == pytest.approx(stats["mod_macs"] / dense_macs)


def test_contract_on_tiny_resnet_with_the_paper_placement() -> None:
    class TwoBlockTinyResNet(TinyResNet):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            block = type(self.layer3[0])  # TinyResNet's BasicBlock(cin, cout, stride)
            self.layer2.append(block(16, 16, 1))
            self.layer3.append(block(32, 32, 1))

    probe = MoD(c=8).apply(TwoBlockTinyResNet(), make_context())
    assert [n for n, _ in mod_blocks(probe)] == ["layer2.1", "layer3.1"]
    check_method_contract(lambda: MoD(c=8), {"two_block_tiny_resnet": TwoBlockTinyResNet})
