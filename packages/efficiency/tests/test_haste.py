"""HASTE (METHODS.md §8i): merging identity, both execution paths against an independent per-tile reference,
hand-counted FLOPs, the cost hook, determinism, training fallback, selection and config errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.core import Context, create_method
from cnnkit.core.config import ConfigError
from cnnkit.core.cost import count_flops
from cnnkit.core.method import MethodNotApplicableError
from cnnkit.core.testing import TinyResNet, TinyVGG, make_context, seeded_batch
from cnnkit.efficiency.haste import (
    HASTE,
    HASTEConv2d,
    haste_layers,
    remove_haste,
    set_hyperplanes,
    set_mode,
)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    # torch.testing.assert_close imports torch.distributed.tensor on first use (many seconds on a busy CPU).
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = float((got - expected).detach().abs().max()) if got.numel() else 0.0
    assert torch.allclose(got, expected, rtol=rtol, atol=atol), f"max abs difference {diff:.3g}"


def _conv(c: int = 8, o: int = 6, k: int = 3, stride: int = 1, padding: int = 1, **kw: object) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(c, o, k, stride=stride, padding=padding, **kw).eval()  # type: ignore[arg-type]


def _haste(conv: nn.Conv2d, **kw: object) -> HASTEConv2d:
    return HASTEConv2d(conv, **kw).eval()  # type: ignore[arg-type]


def _input(n: int, c: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, c, h, w, generator=gen))


def reference(
    x: torch.Tensor, conv: nn.Conv2d, proj: torch.Tensor, patch: int
) -> tuple[torch.Tensor, list[int]]:
    """Independent per-image, per-tile HASTE: explicit centring, codes grouped in a dict, a conv of reduced
    depth with summed filters on each tile's own (possibly smaller) window. Returns output and buckets."""
    (k, _), (s, _), (p, _), (dil, _) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    n, c, h, w = x.shape
    span = dil * (k - 1) + 1
    side = (patch - 1) * s + span
    out_h, out_w = (h + 2 * p - span) // s + 1, (w + 2 * p - span) // s + 1
    xp = F.pad(x, (p, p, p, p))
    rows = proj.reshape(side, side, -1)
    y = torch.zeros(n, conv.out_channels, out_h, out_w)
    buckets: list[int] = []
    for img in range(n):
        for i in range(math.ceil(out_h / patch)):
            for j in range(math.ceil(out_w / patch)):
                ph, pw = min(patch, out_h - i * patch), min(patch, out_w - j * patch)
                dh, dw = (ph - 1) * s + span, (pw - 1) * s + span
                v = xp[img, :, i * patch * s : i * patch * s + dh, j * patch * s : j * patch * s + dw]
                z = v - v.mean(dim=0, keepdim=True)
                dots = torch.einsum("cab,abl->cl", z, rows[:dh, :dw])
                groups: dict[tuple[bool, ...], list[int]] = {}
                for ch in range(c):
                    groups.setdefault(tuple((dots[ch] > 0).tolist()), []).append(ch)
                members = list(groups.values())
                buckets.append(len(members))
                xr = torch.stack([v[m].mean(dim=0) for m in members])
                wr = torch.stack([conv.weight[:, m].sum(dim=1) for m in members], dim=1)
                tile = F.conv2d(xr[None], wr, conv.bias, stride=s, dilation=dil)
                y[img, :, i * patch : i * patch + ph, j * patch : j * patch + pw] = tile[0]
    return y, buckets


@pytest.mark.parametrize(
    ("shape", "conv_kw", "patch"),
    [
        ((2, 8, 8, 8), {}, 4),
        ((2, 8, 9, 7), {"stride": 2}, 3),  # partial tiles, stride 2
        ((1, 8, 11, 10), {"k": 5, "padding": 2, "bias": False}, 2),
        ((1, 8, 10, 10), {"dilation": 2, "padding": 2}, 4),
        # one tile per image (patch >= output map): the per-image path, a oneDNN conv (>= 64 outputs) ...
        ((2, 8, 8, 8), {}, 8),
        ((2, 8, 12, 9), {}, 16),
        # ... and im2col + GEMM (small maps), with stride 2 (the last input row is never read), K=5, dilation
        ((2, 8, 9, 7), {"stride": 2}, 8),
        ((1, 8, 8, 7), {"k": 5, "padding": 2, "bias": False}, 16),
        ((2, 8, 6, 6), {"dilation": 2, "padding": 2}, 64),
    ],
)
@pytest.mark.parametrize("mode", ["simulate", "compressed"])
def test_matches_independent_per_tile_reference(
    shape: tuple[int, int, int, int], conv_kw: dict[str, object], patch: int, mode: str
) -> None:
    conv = _conv(c=shape[1], **conv_kw)  # type: ignore[arg-type]
    layer = _haste(conv, hyperplanes=3, patch=patch, mode=mode)
    x = _input(*shape)
    with torch.no_grad():
        expected, buckets = reference(x, conv, layer.projection, patch)
        got = layer(x)
    assert min(buckets) < shape[1], "the test needs merges to mean anything"
    _assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert layer.tally.bucket_fraction == pytest.approx(sum(buckets) / shape[1])


def test_many_hyperplanes_give_the_plain_conv() -> None:
    conv = _conv(c=16, o=8)
    x = _input(3, 16, 10, 10)
    for mode in ("simulate", "compressed"):
        layer = _haste(conv, hyperplanes=64, mode=mode)
        with torch.no_grad():
            _assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
        assert layer.tally.bucket_fraction == layer.tally.tiles  # one bucket per channel everywhere


def test_simulate_and_compressed_agree() -> None:
    conv = _conv(c=32, o=16)
    x = _input(4, 32, 12, 12)
    sim = _haste(conv, hyperplanes=5)
    fast = _haste(conv, hyperplanes=5, mode="compressed", chunk_mb=0.01)  # many chunks
    with torch.no_grad():
        _assert_close(fast(x), sim(x), rtol=1e-4, atol=1e-4)
    assert sim.tally.needed == fast.tally.needed < sim.tally.dense


@pytest.mark.parametrize(("c", "size", "patch"), [(32, 12, 12), (24, 6, 32), (16, 9, 9)])
def test_per_image_path_simulate_and_compressed_agree(c: int, size: int, patch: int) -> None:
    conv = _conv(c=c, o=12)
    x = _input(5, c, size, size)
    sim = _haste(conv, hyperplanes=4, patch=patch)
    fast = _haste(conv, hyperplanes=4, patch=patch, mode="compressed")
    with torch.no_grad():
        expected, got = sim(x), fast(x)
        alone = torch.cat([fast(x[i : i + 1]) for i in range(5)])
    _assert_close(got, expected, rtol=1e-4, atol=1e-4)
    _assert_close(alone, got, rtol=1e-5, atol=1e-5)  # per-image hashing: batch composition is irrelevant
    assert sim.tally.tiles == 5  # one tile per image
    assert sim.tally.needed == fast.tally.needed / 2 < sim.tally.dense  # fast saw the batch twice


def test_per_image_path_without_onednn_matches_simulate(monkeypatch: pytest.MonkeyPatch) -> None:
    # the branch GPUs (and CPU builds without oneDNN) take: F.conv2d on NCHW filters from the scratch buffer
    from cnnkit.efficiency import _haste_kernels

    monkeypatch.setattr(_haste_kernels, "_mkldnn", lambda: False)
    conv = _conv(c=24, o=12)
    x = _input(3, 24, 10, 10)  # 100 output pixels: the conv branch, not the GEMM one
    with torch.no_grad():
        expected = _haste(conv, hyperplanes=4, patch=10)(x)
        got = _haste(conv, hyperplanes=4, patch=10, mode="compressed")(x)
    _assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_per_image_path_reports_the_conv_it_runs() -> None:
    # The FLOP counter sees the per-image reduced conv; the hook adds the rest, so the total is "needed".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    x = _input(2, 3, 6, 6)
    first = count_flops(model, x).by_module["0"]
    model[2] = _haste(model[2], hyperplanes=3, patch=8, mode="compressed")
    counted = count_flops(model, x)
    layer = model[2]
    assert isinstance(layer, HASTEConv2d)
    assert counted.effective_macs == pytest.approx(first + layer.tally.needed / 2, rel=1e-9)


def test_identical_channels_always_merge() -> None:
    conv = _conv(c=12, o=5)
    x = _input(2, 12, 8, 8)
    x[:, 1::2] = x[:, 0::2]
    for mode in ("simulate", "compressed"):
        layer = _haste(conv, hyperplanes=48, mode=mode)
        with torch.no_grad():
            _assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
        assert layer.tally.bucket_fraction == pytest.approx(layer.tally.tiles / 2)  # b = C/2 in every tile


def test_flops_match_a_hand_count() -> None:
    # C=4, O=2, K=3, P=2 on a 4x4 input (padding 1): 2x2 tiles, each 2x2 outputs, window 4x4 (D=16).
    conv = _conv(c=4, o=2)
    layer = _haste(conv, hyperplanes=3, patch=2)
    x = _input(1, 4, 4, 4, seed=3)
    with torch.no_grad():
        _, buckets = reference(x, conv, layer.projection, 2)
        layer(x)
    c, o, k2, q, d = 4, 2, 9, 4, 16
    nnz = int((layer.projection != 0).sum())  # every tile's window is the full 4x4
    dense = 4 * 2 * o * c * k2 * q
    needed = sum(2 * o * b * k2 * q + 2 * c * d + c * nnz + c * d + o * k2 * (c - b) for b in buckets)
    assert layer.tally.dense == dense == 2304
    assert layer.tally.needed == needed
    assert layer.tally.overhead == needed - sum(2 * o * b * k2 * q for b in buckets)


@pytest.mark.parametrize("mode", ["simulate", "compressed"])
def test_cost_hook_reports_the_needed_macs(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    x = _input(1, 3, 12, 12)
    dense = count_flops(model, x)
    model[2] = _haste(model[2], hyperplanes=4, mode=mode)
    counted = count_flops(model, x)
    layer = model[2]
    assert isinstance(layer, HASTEConv2d)
    first = dense.by_module["0"]
    assert counted.effective_macs == pytest.approx(first + layer.tally.needed / 2, rel=1e-9)
    assert counted.effective_macs < dense.macs


def test_same_seed_same_projection_and_output_batch_independent() -> None:
    conv = _conv(c=16, o=8)
    x = _input(4, 16, 8, 8)
    a, b = _haste(conv, hyperplanes=10, seed=5), _haste(conv, hyperplanes=10, seed=5)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, _haste(conv, hyperplanes=10, seed=6).projection)
    assert set(a.projection.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with torch.no_grad():
        together = a(x)
        _assert_close(b(x), together, rtol=0, atol=0)
        alone = torch.cat([b(x[i : i + 1]) for i in range(4)])
    _assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_projection_sparsity_and_no_empty_columns() -> None:
    layer = _haste(_conv(), hyperplanes=64, patch=8, sparsity=0.9)
    proj = layer.projection
    assert not (proj == 0).all(dim=0).any()
    assert (proj == 0).double().mean().item() == pytest.approx(0.9, abs=0.02)
    assert (proj == 1).sum().item() == pytest.approx((proj == -1).sum().item(), rel=0.1)


def test_training_mode_is_the_plain_conv() -> None:
    conv = _conv(c=8, o=4)
    layer = HASTEConv2d(conv, hyperplanes=2).train()
    x = _input(2, 8, 8, 8).requires_grad_(True)
    _assert_close(layer(x), conv(x), rtol=0, atol=0)
    layer(x).sum().backward()
    assert conv.weight.grad is not None and layer.weight is conv.weight
    assert layer.tally.images == 0


@pytest.mark.parametrize("mode", ["simulate", "compressed"])
@pytest.mark.parametrize("patch", [10, 4])
def test_unbatched_and_empty_inputs_behave_as_nn_conv2d(mode: str, patch: int) -> None:
    conv = _conv(c=8, o=4)
    layer = _haste(conv, hyperplanes=3, patch=patch, mode=mode)
    x = _input(2, 8, 9, 9)
    with torch.no_grad():
        _assert_close(layer(x[1]), layer(x)[1], rtol=1e-6, atol=1e-6)  # (C, H, W): one image, same output
        empty = layer(x[:0])
    assert empty.shape == conv(x[:0]).shape == (0, 4, 9, 9)
    assert layer.tally.images == 3  # the unbatched image counts; the empty batch adds nothing
    with pytest.raises(RuntimeError, match="Expected 3D"):
        layer(x[None])  # nn.Conv2d's own message for a 5-D input


def test_apply_replaces_stage_convs_and_export_keeps_them() -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    dense_out = model(seeded_batch()[0])
    keys = set(model.state_dict())
    method = create_method("haste", hyperplanes=64)
    model = method.apply(model, make_context())
    names = [n for n, _ in haste_layers(model)]
    assert names == ["layer2.0.conv1", "layer2.0.conv2", "layer3.0.conv1", "layer3.0.conv2"]
    assert set(model.state_dict()) == keys
    assert method.export(model) is model
    with torch.no_grad():
        _assert_close(model.eval()(seeded_batch()[0]), dense_out, rtol=1e-4, atol=1e-5)
    plain = remove_haste(copy.deepcopy(model))
    assert not haste_layers(plain) and all(
        type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d)
    )


def test_stats_report_mean_cost_over_the_data_seen() -> None:
    torch.manual_seed(0)
    method = create_method("haste", hyperplanes=4)
    model = method.apply(TinyVGG(), make_context()).eval()
    stats = method.stats(model)  # nothing seen yet: runs the example inputs of apply (8 images)
    assert stats["images_seen"] == 8
    for layer in (m for _, m in haste_layers(model)):
        layer.reset_tally()
    with torch.no_grad():
        model(seeded_batch(batch_size=5, seed=3)[0])
    stats = method.stats(model)
    assert stats["images_seen"] == 5 and stats["layers"] == 2
    assert 0.0 < stats["flops_reduction"] < stats["haste_flops_reduction"] < 1.0
    assert stats["needed_flops"] == pytest.approx(2 * stats["needed_macs"])
    assert stats["flops_reduction"] == pytest.approx(1 - stats["needed_flops"] / stats["dense_flops"])
    without = stats["flops_reduction"] + stats["overhead_flops"] / stats["dense_flops"]
    assert stats["flops_reduction_without_overhead"] == pytest.approx(without)
    assert stats["flops_reduction"] < stats["flops_reduction_without_overhead"] < 1.0
    assert stats["needed_flops_p5"] <= stats["needed_flops_p50"] <= stats["needed_flops_p95"]
    dense = count_flops(remove_haste(copy.deepcopy(model)), seeded_batch(1)[0])
    assert stats["dense_macs"] == dense.macs
    single = count_flops(model, seeded_batch(batch_size=1, seed=3)[0])  # the hook, one image
    assert single.effective_macs < dense.macs


def test_set_hyperplanes_and_mode_at_inference() -> None:
    torch.manual_seed(0)
    model = create_method("haste", hyperplanes=2).apply(TinyResNet(), make_context()).eval()
    x = seeded_batch()[0]
    with torch.no_grad():
        coarse = model(x)
        set_hyperplanes(model, 64)
        fine = model(x)
        set_mode(model, "compressed")
        _assert_close(model(x), fine, rtol=1e-4, atol=1e-4)
        dense = remove_haste(copy.deepcopy(model))(x)
    _assert_close(fine, dense, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(coarse, dense, atol=1e-3)


def test_lenet_5x5_needs_kernel_sizes() -> None:
    from cnnkit.bench.models.lenet import lenet5_caffe

    model = lenet5_caffe()
    ctx = Context(example_input=torch.randn(2, 1, 28, 28))
    with pytest.raises(MethodNotApplicableError, match="kernel_sizes"):
        create_method("haste").apply(copy.deepcopy(model), ctx)
    replaced = create_method("haste", kernel_sizes=[5]).apply(model, ctx)
    assert [n for n, _ in haste_layers(replaced)] == ["conv2"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hyperplanes": 0}, "hyperplanes"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"patch": 0}, "patch"),
        ({"mode": "fast"}, "mode"),
        ({"kernel_sizes": [1, 3]}, "skip_pointwise"),
        ({"min_out_pixels": -1}, "min_out_pixels"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        create_method("haste", **overrides)


def test_min_out_pixels_leaves_small_maps_dense() -> None:
    torch.manual_seed(0)
    ctx = make_context()
    everything = create_method("haste", start_layer=1).apply(TinyResNet(), ctx)
    sizes: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out, n=n: sizes.__setitem__(n, out.shape[-2] * out.shape[-1]))
        for n, m in haste_layers(everything)
    ]
    with torch.no_grad():
        everything.eval()(ctx.example_input[:1])
    for hook in hooks:
        hook.remove()
    threshold = sorted(set(sizes.values()))[-1]  # only the largest maps stay HASTE
    method = create_method("haste", start_layer=1, min_out_pixels=threshold)
    model = method.apply(TinyResNet(), ctx)
    kept = [n for n, _ in haste_layers(model)]
    assert kept == [n for n, p in sizes.items() if p >= threshold] and 0 < len(kept) < len(sizes)
    assert method.stats(model)["layers_skipped_small"] == len(sizes) - len(kept)
    with pytest.raises(MethodNotApplicableError, match="min_out_pixels"):
        create_method("haste", min_out_pixels=10**6).apply(TinyResNet(), ctx)


def test_start_layer_the_model_does_not_have() -> None:
    with pytest.raises(MethodNotApplicableError, match=r"start_layer.*stages 1\.\.3"):
        create_method("haste", start_layer=4).apply(TinyResNet(), make_context())
    with pytest.raises(MethodNotApplicableError, match="'start_layer'='layer9.conv'"):
        create_method("haste", start_layer="layer9.conv").apply(TinyResNet(), make_context())
    model = create_method("haste", start_layer="layer3.0.conv2").apply(TinyResNet(), make_context())
    assert [n for n, _ in haste_layers(model)] == ["layer3.0.conv2"]


def test_grouped_conv_is_refused() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        HASTEConv2d(nn.Conv2d(4, 4, 3, groups=2))
    assert isinstance(HASTE(), HASTE)


class _Identity(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w


def test_parametrized_conv_is_a_clear_error() -> None:
    from torch.nn.utils import parametrize

    model = TinyResNet()
    parametrize.register_parametrization(model.layer3[0].conv1, "weight", _Identity())
    with pytest.raises(MethodNotApplicableError, match=r"layer3\.0\.conv1.*parametrized"):
        create_method("haste").apply(model, make_context())


def test_tally_queue_is_bounded_and_loses_no_forward() -> None:
    from cnnkit.efficiency.haste import _PENDING_MAX

    layer = HASTEConv2d(_conv(c=8, o=4), hyperplanes=3, patch=2).eval()
    x = _input(2, 8, 4, 4)
    forwards = _PENDING_MAX + 7
    with torch.no_grad():
        for _ in range(forwards):
            layer(x)
    assert len(layer._pending) <= _PENDING_MAX  # folded on the way, not kept forever
    assert layer.tally.images == 2 * forwards and not layer._pending
    single = HASTEConv2d(_conv(c=8, o=4), hyperplanes=3, patch=2).eval()
    with torch.no_grad():
        single(x)
    assert layer.tally.needed == pytest.approx(forwards * single.tally.needed, rel=1e-12)


def test_export_resets_the_tally_and_test_stats_count_what_follows() -> None:
    torch.manual_seed(0)
    method = create_method("haste", hyperplanes=4)
    model = method.apply(TinyVGG(), make_context()).eval()
    with torch.no_grad():
        model(seeded_batch(batch_size=7, seed=1)[0])
    assert method.stats(model)["images_seen"] == 7
    deployed = method.export(copy.deepcopy(model))
    assert method.test_stats(deployed) == {}  # nothing seen since export
    with torch.no_grad():
        deployed(seeded_batch(batch_size=3, seed=2)[0])
    after = method.test_stats(deployed)
    assert after["images_seen"] == 3 and 0.0 < after["flops_reduction"] < 1.0
    assert method.stats(model)["images_seen"] == 7  # the original keeps its own tally


def test_bench_records_haste_cost_over_the_test_set() -> None:
    from cnnkit.bench.runconfig import RunConfig
    from cnnkit.bench.trainer import build_datasets, run

    cfg = RunConfig(
        model="lenet5_caffe",
        dataset="synthetic",
        dataset_args={"shape": [1, 28, 28], "size": 96},
        methods=[{"name": "haste", "config": {"kernel_sizes": [5], "hyperplanes": 6}}],
        epochs=1,
        batch_size=32,
        progress=False,
        measure_latency=False,
    )
    metrics = run(cfg)
    assert metrics["method.images_seen"] == len(build_datasets(cfg)["test"])  # type: ignore[arg-type]
    assert 0.0 < metrics["method.flops_reduction"] < 1.0


@pytest.mark.parametrize("patch", [10, 4])  # per image, per tile
def test_inference_mode_then_autograd_both_work(patch: int) -> None:
    # caches and scratch buffers made under inference_mode must stay writable and savable afterwards
    conv = _conv(c=16, o=8)
    sim = _haste(conv, hyperplanes=4, patch=patch)
    fast = _haste(conv, hyperplanes=4, patch=patch, mode="compressed")
    with torch.inference_mode():
        first = fast(_input(2, 16, 10, 10))
    with torch.no_grad():
        _assert_close(fast(_input(2, 16, 10, 10)), first, rtol=1e-6, atol=1e-6)
    grads = []
    for layer in (sim, fast):
        x = _input(2, 16, 10, 10).requires_grad_(True)
        layer(x).square().sum().backward()  # eval mode: HASTE itself is differentiated
        grads.append(x.grad)
    assert grads[0] is not None and grads[1] is not None and grads[0].abs().sum() > 0
    _assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("patch", [10, 4])  # per image, per tile
def test_compressed_path_sees_in_place_weight_edits(dtype: torch.dtype, patch: int) -> None:
    # the cached filter rows must follow the parameter, also when the layer computes on a float32 copy of it
    conv = _conv(c=16, o=8).to(dtype)
    layer = _haste(conv, hyperplanes=4, patch=patch, mode="compressed")
    x = _input(2, 16, 10, 10).to(dtype)
    with torch.no_grad():
        before = layer(x)
        conv.weight.mul_(2.0)
        after = layer(x)
        layer.mode = "simulate"
        expected = layer(x)
    _assert_close(after.float(), expected.float(), rtol=1e-2, atol=1e-2)
    assert float((after.float() - before.float()).abs().max()) > 0.1


@pytest.mark.parametrize("patch", [10, 4])
def test_model_built_under_inference_mode_runs_compressed(patch: int) -> None:
    # inference tensors have no version counter: the rows are rebuilt per call (with one warning), never stale
    with torch.inference_mode():
        conv = _conv(c=16, o=8)
        layer = _haste(conv, hyperplanes=4, patch=patch, mode="compressed")
        x = _input(2, 16, 10, 10)
        with pytest.warns(UserWarning, match="inference tensor"):
            first = layer(x)
        conv.weight.mul_(2.0)  # allowed in place under inference mode, invisible to a version counter
        edited = layer(x)
        layer.mode = "simulate"
        expected = layer(x)
    _assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    bias = conv.bias.view(1, -1, 1, 1)
    _assert_close(2.0 * (first - bias), edited - bias, rtol=1e-5, atol=1e-5)  # the edit was seen


def test_stage_hyperplanes_set_l_per_stage_and_name_bad_stages() -> None:
    torch.manual_seed(0)
    ctx = make_context()
    method = create_method("haste", start_layer=1, hyperplanes=9, stage_hyperplanes={"2": 5, 3: 7})
    model = method.apply(TinyResNet(), ctx).eval()
    got = {name: (layer.stage, layer.hyperplanes) for name, layer in haste_layers(model)}
    expected_l = {1: 9, 2: 5, 3: 7}
    assert {s for s, _ in got.values()} == {1, 2, 3}
    assert all(planes == expected_l[stage] for stage, planes in got.values()), got
    for name, (stage, _) in got.items():
        assert name.startswith(f"layer{stage}.")
    # the per-stage L is the same layer as one built with that L (same seed, same projection)
    plain = create_method("haste", start_layer=1, hyperplanes=5).apply(TinyResNet(), ctx)
    by_name = dict(haste_layers(plain))
    for name, layer in haste_layers(model):
        if layer.stage == 2:
            assert torch.equal(layer.projection, by_name[name].projection)
    # at inference: a mapping changes only those stages
    set_hyperplanes(model, {3: 11})
    assert {layer.stage: layer.hyperplanes for _, layer in haste_layers(model)} == {1: 9, 2: 5, 3: 11}
    with pytest.raises(ValueError, match=r"stage\(s\) \[4\].*\[1, 2, 3\]"):
        set_hyperplanes(model, {4: 3})
    with pytest.raises(MethodNotApplicableError, match=r"stage_hyperplanes.*\[1\].*allowed stages: \[2, 3\]"):
        create_method("haste", stage_hyperplanes={1: 4}).apply(TinyResNet(), ctx)
    with pytest.raises(ConfigError, match="stage_hyperplanes"):
        create_method("haste", stage_hyperplanes={2: 0})


def test_layer_hyperplanes_set_l_per_conv_and_name_bad_convs() -> None:
    torch.manual_seed(0)
    ctx = make_context()
    names = [
        name for name, _ in create_method("haste", start_layer=1).select(TinyResNet(), ctx.example_input)
    ]
    first, second = names[0], next(n for n in names if n.startswith("layer2."))
    method = create_method(
        "haste",
        start_layer=1,
        hyperplanes=9,
        stage_hyperplanes={2: 5},
        layer_hyperplanes={first: 3, second: 7},
    )
    model = method.apply(TinyResNet(), ctx).eval()
    got = {name: layer.hyperplanes for name, layer in haste_layers(model)}
    # a conv's own L beats its stage's, which beats the global one
    expected = {
        n: 3 if n == first else 7 if n == second else 5 if n.startswith("layer2.") else 9 for n in names
    }
    assert got == expected
    # the same layer as one built with that L everywhere (same seed, same projection)
    plain = dict(haste_layers(create_method("haste", start_layer=1, hyperplanes=7).apply(TinyResNet(), ctx)))
    assert torch.equal(dict(haste_layers(model))[second].projection, plain[second].projection)
    # at inference: a {name: L} mapping changes only those convs
    set_hyperplanes(model, {first: 11})
    assert {name: layer.hyperplanes for name, layer in haste_layers(model)} == {**expected, first: 11}
    with pytest.raises(ValueError, match=r"\['nope'\] are not HASTE convs; HASTE convs: \["):
        set_hyperplanes(model, {"nope": 4})
    with pytest.raises(ValueError, match="all stage numbers or all conv names"):
        set_hyperplanes(model, {first: 4, 2: 5})
    with pytest.raises(MethodNotApplicableError, match=r"layer_hyperplanes.*\['fc'\].*allowed names: \["):
        create_method("haste", layer_hyperplanes={"fc": 4}).apply(TinyResNet(), ctx)
    with pytest.raises(ConfigError, match="layer_hyperplanes"):
        create_method("haste", layer_hyperplanes={first: 0})
