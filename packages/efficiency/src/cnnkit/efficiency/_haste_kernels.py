"""HASTE's tensor kernels: tiling, hashing, bucketing and the two execution paths (see :mod:`.haste`).

Shapes: ``N`` images, ``C`` input and ``O`` output channels, ``T`` tiles (all images' tiles, image-major),
``D = side²`` pixels of one input window, ``L`` hyperplanes, ``K2 = kh·kw``, ``Q = P²`` output pixels of a
tile.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GEMM_BELOW",
    "Bucketing",
    "ImageBags",
    "TileGeometry",
    "bucketing",
    "cache_tensors",
    "compressed_images",
    "compressed_images_native",
    "compressed_tiles",
    "hash_codes",
    "image_bags",
    "image_hash_rows",
    "image_hash_values",
    "image_path_uses_gemm",
    "make_projection",
    "scratch",
    "simulate_images",
    "simulate_tiles",
    "stitch_tiles",
    "tile_geometry",
    "tile_windows",
]


@dataclass(frozen=True)
class TileGeometry:
    """How one conv's output is cut into ``patch``×``patch`` tiles for an input of size ``h``×``w``.

    ``pad`` is the ``F.pad`` argument (left, right, top, bottom; negative entries crop) that makes the
    input exactly cover ``tiles_h``×``tiles_w`` windows of ``side``×``side`` pixels, ``step`` apart.
    """

    out_h: int
    out_w: int
    tiles_h: int
    tiles_w: int
    side_h: int
    side_w: int
    step_h: int
    step_w: int
    pad: tuple[int, int, int, int]
    patch: int

    @property
    def tiles(self) -> int:
        return self.tiles_h * self.tiles_w

    @property
    def window(self) -> int:
        return self.side_h * self.side_w


def tile_geometry(
    h: int,
    w: int,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    patch: int,
) -> TileGeometry:
    spans = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    outs = [(size + 2 * padding[i] - spans[i]) // stride[i] + 1 for i, size in enumerate((h, w))]
    if min(outs) < 1:
        raise ValueError(f"input {h}x{w} is too small for the convolution (output {outs[0]}x{outs[1]})")
    tiles = [math.ceil(o / patch) for o in outs]
    sides = [(patch - 1) * stride[i] + spans[i] for i in range(2)]
    steps = [patch * stride[i] for i in range(2)]
    needed = [(tiles[i] - 1) * steps[i] + sides[i] for i in range(2)]
    extra = [needed[i] - (size + 2 * padding[i]) for i, size in enumerate((h, w))]
    pad = (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0])
    return TileGeometry(
        outs[0], outs[1], tiles[0], tiles[1], sides[0], sides[1], steps[0], steps[1], pad, patch
    )


def tile_windows(x: Tensor, geom: TileGeometry) -> Tensor:
    """``(N, C, H, W)`` → ``(N·T, C, D)``: each tile's input window (halo included), image-major."""
    n, c = x.shape[:2]
    padded = F.pad(x, geom.pad)
    win = padded.unfold(2, geom.side_h, geom.step_h).unfold(3, geom.side_w, geom.step_w)
    # (N, C, Th, Tw, sh, sw) -> (N, Th, Tw, C, sh, sw)
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n * geom.tiles, c, geom.window)


def make_projection(window: int, hyperplanes: int, sparsity: float, seed: int, resample_zero: bool) -> Tensor:
    """A ``(D, L)`` very sparse ternary projection: ``P(0) = s``, ``P(±1) = (1−s)/2``, from ``seed``.

    With ``resample_zero`` an all-zero column (a hyperplane that sees nothing) is drawn again.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(cols: int) -> Tensor:
        keep = torch.rand(window, cols, generator=gen, dtype=torch.float64) >= sparsity
        sign = torch.randint(0, 2, (window, cols), generator=gen) * 2 - 1
        return keep.to(torch.float32) * sign.to(torch.float32)

    proj = draw(hyperplanes)
    for _ in range(1000):
        empty = (proj == 0).all(dim=0)
        if not resample_zero or not bool(empty.any()):
            break
        proj[:, empty] = draw(int(empty.sum()))
    return proj


def hash_codes(win: Tensor, proj: Tensor, *, centre: bool, strict: bool) -> Tensor:
    """``(T, C, D)`` windows → ``(T, C)`` int64 codes ``Σ_l 2^l·1[⟨z_c, r_l⟩ > 0]`` (``≥`` if not strict).

    ``z_c = v_c − mean_c' v_c'`` (centring across channels) when ``centre``; by linearity
    ``⟨z_c, r⟩ = ⟨v_c, r⟩ − mean_c' ⟨v_c', r⟩``, which avoids materialising ``z``.
    """
    t, c, d = win.shape
    h = (win.reshape(t * c, d) @ proj).view(t, c, -1)
    # z > 0 with z = h - mean is h > mean exactly (IEEE: x - y > 0 iff x > y), one op fewer
    mean: Tensor | float = h.mean(dim=1, keepdim=True) if centre else 0.0  # = <mean_c' v_c', r>
    bits = h > mean if strict else h >= mean
    planes = proj.shape[1]
    if planes <= 24 and h.dtype == torch.float32:  # codes < 2^24: one exact float GEMV
        return (bits.to(h.dtype) @ _powers(planes, h.device)).to(torch.int64)
    powers = torch.ones(planes, dtype=torch.int64, device=win.device).cumsum(0).sub_(1)
    return (bits.to(torch.int64) << powers).sum(dim=-1)


_POWERS: dict[tuple[int, torch.device], Tensor] = {}


def _powers(planes: int, device: torch.device) -> Tensor:
    """``(2^0, ..., 2^(L-1))`` in float32 (exact for ``L ≤ 24``), cached per device."""
    key = (planes, device)
    if key not in _POWERS:
        with cache_tensors():
            _POWERS[key] = torch.pow(2.0, torch.arange(planes, dtype=torch.float32)).to(device)
    return _POWERS[key]


@dataclass(frozen=True)
class Bucketing:
    """Buckets of one batch of tiles.

    Attributes:
        bucket: ``(T, C)`` bucket index of each channel, ``0 .. buckets[t]-1`` in order of code.
        buckets: ``(T,)`` number of buckets per tile.
        order: ``(T, C)`` channels sorted by bucket (the channels of bucket 0 first).
    """

    bucket: Tensor
    buckets: Tensor
    order: Tensor


def bucketing(codes: Tensor) -> Bucketing:
    """Group the channels of each tile by equal code."""
    sorted_codes, order = codes.sort(dim=1, stable=True)
    rank = torch.zeros_like(codes)
    rank[:, 1:] = (sorted_codes[:, 1:] != sorted_codes[:, :-1]).cumsum(dim=1)
    bucket = torch.empty_like(rank).scatter_(1, order, rank)
    return Bucketing(bucket=bucket, buckets=rank[:, -1] + 1, order=order)


def _bucket_means(win: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Means of the rows of ``win`` (``(T, C, D)``) grouped by flat row index ``rows`` → ``(n_rows, D)``."""
    flat = rows.reshape(-1)
    sums = win.new_zeros(n_rows, win.shape[-1]).index_add_(0, flat, win.reshape(-1, win.shape[-1]))
    counts = win.new_zeros(n_rows).index_add_(0, flat, win.new_ones(flat.numel()))
    return sums / counts.clamp_min(1.0).unsqueeze(1)


def simulate_tiles(
    win: Tensor,
    buckets: Bucketing,
    weight: Tensor,
    geom: TileGeometry,
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Reference path: every channel replaced by its bucket mean, then the dense conv per tile.

    Returns ``(T, O, P, P)`` (no bias).
    """
    t, c, _ = win.shape
    rows = buckets.bucket + torch.arange(t, device=win.device).unsqueeze(1) * c
    means = _bucket_means(win, rows, t * c)
    xbar = means[rows.reshape(-1)].reshape(t, c, geom.side_h, geom.side_w)
    return F.conv2d(xbar, weight, None, stride, 0, dilation)


def compressed_tiles(
    win: Tensor,
    buckets: Bucketing,
    weight_ck: Tensor,
    geom: TileGeometry,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    chunk_floats: int,
) -> tuple[Tensor, int]:
    """Fast path: per tile, bucket means and summed filter slices, then one batched GEMM per chunk.

    ``weight_ck`` is the weight laid out ``(C, K2·O)`` (``W.permute(1, 2, 3, 0)``). Tiles are sorted by
    their bucket count and cut into chunks whose merged filters hold at most ``chunk_floats`` numbers;
    a chunk pads every tile to its largest bucket count ``B`` (empty buckets are zero). Per chunk of ``m``
    tiles, with the channels of each tile listed bucket by bucket (``buckets.order``):

    * input merge: ``embedding_bag(mode="mean")`` over the windows → bucket means ``(m·B, D)``;
    * filter merge: ``embedding_bag(mode="sum")`` over the rows of ``weight_ck`` → ``(m, B·K2, O)``;
    * reduced conv: the bucket means' patches ``(m, Q, B·K2)`` (a strided copy) bmm the merged filters.

    Returns the tiles' outputs ``(T, Q, O)`` (no bias) and the MACs of the batched GEMMs (what a FLOP
    counter sees of them).
    """
    t, c, d = win.shape
    k2 = kernel[0] * kernel[1]
    o = weight_ck.shape[1] // k2
    q = geom.patch * geom.patch
    spans = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    counts, tile_order = buckets.buckets.sort(stable=True)
    counts_list = counts.tolist()
    flat_win = win.reshape(t * c, d)
    out = win.new_empty(t, q, o)
    gemm_macs = 0
    start = 0
    while start < t:
        stop = start + 1
        while stop < t and (stop - start + 1) * counts_list[stop] * k2 * o <= chunk_floats:
            stop += 1
        width = int(counts_list[stop - 1])
        idx = tile_order[start:stop]
        m = stop - start
        offsets = torch.arange(m, device=win.device).unsqueeze(1)
        channels = buckets.order[idx]  # (m, C): each tile's channels, bucket by bucket
        sizes = torch.zeros(m * width, dtype=torch.int64, device=win.device)
        sizes.index_add_(
            0, (buckets.bucket[idx] + offsets * width).reshape(-1), torch.ones_like(channels).view(-1)
        )
        starts = sizes.cumsum(0) - sizes
        means = F.embedding_bag((channels + idx.unsqueeze(1) * c).reshape(-1), flat_win, starts, mode="mean")
        merged = F.embedding_bag(channels.reshape(-1), weight_ck, starts, mode="sum")
        patches = means.reshape(m, width, geom.side_h, geom.side_w).unfold(2, spans[0], stride[0])
        patches = patches.unfold(3, spans[1], stride[1])[..., :: dilation[0], :: dilation[1]]
        cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(m, q, width * k2)
        out[idx] = torch.bmm(cols, merged.reshape(m, width * k2, o))
        gemm_macs += m * q * width * k2 * o
        start = stop
    return out, gemm_macs


def image_hash_rows(proj: Tensor, geom: TileGeometry, h: int, w: int) -> Tensor:
    """One tile per image, ``h``×``w`` input: the rows of ``R`` (``(D, L)``) that meet real pixels, as a
    contiguous ``(D', L)`` (constant per layer and input size: callers cache it).

    The tile path's window is the zero-padded image (cropped where the conv never reads the last rows or
    columns); zero pixels add nothing to ``⟨z_c, r⟩`` (centring keeps them zero), so only these rows are
    needed: exactly the tile path's dot products, up to float summation order.
    """
    top, left = geom.pad[2], geom.pad[0]
    rows_h, rows_w = _real_extent(geom, h, w)
    with cache_tensors():
        rows = proj.reshape(geom.side_h, geom.side_w, -1)[top : top + rows_h, left : left + rows_w]
        return rows.reshape(rows_h * rows_w, -1).contiguous()


def _real_extent(geom: TileGeometry, h: int, w: int) -> tuple[int, int]:
    """Rows and columns of an ``h``×``w`` input that the single window reads (the conv may skip the last)."""
    return min(h, geom.side_h - geom.pad[2]), min(w, geom.side_w - geom.pad[0])


def image_hash_values(x: Tensor, geom: TileGeometry) -> Tensor:
    """One tile per image: ``(N, C, H, W)`` → the hashed values ``(N, C, D')``, the pixels that meet the
    rows of :func:`image_hash_rows`."""
    n, c, h, w = x.shape
    rows_h, rows_w = _real_extent(geom, h, w)
    values = x if (rows_h, rows_w) == (h, w) else x[:, :, :rows_h, :rows_w]
    return values.reshape(n, c, rows_h * rows_w)


def _image_bags(buckets: Bucketing, channels: int) -> tuple[Tensor, Tensor, list[int]]:
    """Bags of all images' buckets, image by image: member rows (of ``(N·C, ·)``), bag starts, counts."""
    n = buckets.order.shape[0]
    counts = buckets.buckets
    first = counts.cumsum(0) - counts
    bag = (buckets.bucket + first.unsqueeze(1)).reshape(-1)
    sizes = torch.bincount(bag, minlength=int(counts.sum()))
    starts = sizes.cumsum(0) - sizes
    members = buckets.order + torch.arange(n, device=counts.device).unsqueeze(1) * channels
    return members.reshape(-1), starts, counts.tolist()


def simulate_images(
    x: Tensor,
    buckets: Bucketing,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """One tile per image, reference path: channels replaced by their bucket means, then the dense conv."""
    n, c, h, w = x.shape
    members, starts, _ = _image_bags(buckets, c)
    means = F.embedding_bag(members, x.reshape(n * c, h * w), starts, mode="mean")
    first = buckets.buckets.cumsum(0) - buckets.buckets
    xbar = means[(buckets.bucket + first.unsqueeze(1)).reshape(-1)].reshape(n, c, h, w)
    return F.conv2d(xbar, weight, None, stride, padding, dilation)


GEMM_BELOW = 64  # per-image fast path: output maps with fewer pixels use im2col + GEMM, larger ones oneDNN


def image_path_uses_gemm(out_h: int, out_w: int) -> bool:
    """Whether :func:`compressed_images` runs the reduced conv as im2col + one GEMM (small output maps,
    where oneDNN's batch-1 conv is slow and the filters' transposed copy costs more than the GEMM) rather
    than as a oneDNN conv. [choice, measured by benchmarks/haste_layer.py]"""
    return out_h * out_w < GEMM_BELOW


_SCRATCH = threading.local()


def scratch(numel: int, like: Tensor, slot: int = 0) -> Tensor:
    """A flat buffer of ``numel`` elements with ``like``'s dtype and device, reused across calls (one per
    thread, device, dtype and ``slot``, grown on demand). Its content is garbage; the caller must be done
    with it before the next call for the same slot (true of HASTE's layers, which run one after another)."""
    key = (like.device, like.dtype, slot)
    buffers: dict[tuple[torch.device, torch.dtype, int], Tensor] = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        with cache_tensors():
            buf = buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def cache_tensors() -> torch.inference_mode:
    """The context to create tensors that outlive one call in: outside inference mode, since a tensor made
    under ``torch.inference_mode()`` cannot be written in place, or saved for backward, after it."""
    return torch.inference_mode(False)


def _mkldnn() -> bool:
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


def _reduced_conv(
    means: Tensor,
    merged: Tensor,
    gemm: bool,
    out_channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """One image's conv of reduced depth: ``means`` ``(1, b, H, W)``, ``merged`` ``(b, ·)`` summed filter
    rows (``(b, K2·O)`` if ``gemm`` else ``(b, O·K2)``) → ``(1, O, H_out, W_out)``."""
    b = means.shape[1]
    if gemm:
        cols = F.unfold(means, kernel, dilation, padding, stride)[0]  # (b·K2, Q) in (b, K2) order
        out_hw = [
            (means.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
            for i in range(2)
        ]
        # (Q, b·K2) @ (b·K2, O): MKL is faster with the small dimension as rows; the caller's cat transposes
        return torch.mm(cols.t(), merged.view(-1, out_channels)).t().view(1, out_channels, *out_hw)
    # The transposed copies go into reused buffers: a fresh multi-MB tensor per call costs page faults
    # (2-4x the conv itself on 8x8 maps, benchmarks/haste_layer.py). Not when autograd records the conv:
    # it keeps its operands for the backward, so they must not be overwritten.
    recorded = torch.is_grad_enabled() and (means.requires_grad or merged.requires_grad)

    def buffer(numel: int, slot: int) -> Tensor:
        return merged.new_empty(numel) if recorded else scratch(numel, merged, slot)

    if means.device.type == "cpu" and _mkldnn():  # F.conv2d picks a slow backend for some batch-1 shapes
        # channels-last operands (plain 2-D transposes here): oneDNN then skips its own activation
        # reorders, 10-30 % faster at batch 1 [measured]; the output is channels-last
        h, w = int(means.shape[2]), int(means.shape[3])
        pixels = buffer(h * w * b, 1).view(h * w, b).copy_(means.view(b, h * w).t())
        image = pixels.view(1, h, w, b).permute(0, 3, 1, 2)
        rows = buffer(merged.numel(), 0).view(-1, b).copy_(merged.t())  # (O·K2, b)
        filters = rows.view(out_channels, kernel[0], kernel[1], b).permute(0, 3, 1, 2)
        out: Tensor = torch.ops.aten.mkldnn_convolution(image, filters, None, padding, stride, dilation, 1)
        return out
    filters = buffer(merged.numel(), 0).view(out_channels, b, kernel[0], kernel[1])
    filters.copy_(merged.view(b, out_channels, kernel[0], kernel[1]).transpose(0, 1))
    return F.conv2d(means, filters, None, stride, padding, dilation)


@dataclass(frozen=True)
class ImageBags:
    """Buckets of a batch with one tile per image, as ``embedding_bag`` bags.

    Attributes:
        order: ``(N, C)`` each image's channels, bucket by bucket (buckets in order of code).
        members: ``(N·C,)`` ``order`` as rows of the ``(N·C, ·)`` input (``order[n] + n·C``).
        starts: ``(Σ b_n,)`` where each bucket starts in ``members``, image by image.
        counts: ``(N,)`` buckets per image ``b_n``.
    """

    order: Tensor
    members: Tensor
    starts: Tensor
    counts: Tensor


def image_bags(codes: Tensor) -> ImageBags:
    """Group the channels of each image (``codes`` ``(N, C)``) by equal code: the same partition as
    :func:`bucketing` (same stable order inside a bucket), with fewer operations."""
    n, c = codes.shape
    sorted_codes, order = codes.sort(dim=1, stable=True)
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
    members = (order + torch.arange(n, device=codes.device).unsqueeze(1) * c).reshape(-1)
    return ImageBags(order, members, new.reshape(-1).nonzero().reshape(-1), new.sum(dim=1))


def compressed_images(
    x: Tensor,
    bags: ImageBags,
    weight_rows: Tensor,
    gemm: bool,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, int]:
    """One tile per image, fast path: a real convolution of reduced depth per image.

    ``weight_rows`` holds one row per input channel: ``W.permute(1, 2, 3, 0)`` as ``(C, K2·O)`` when
    ``gemm`` (:func:`image_path_uses_gemm`), else ``W.transpose(0, 1)`` as ``(C, O·K2)``. All images' bucket
    means come from one ``embedding_bag(mode="mean")``; per image ``n`` with ``b_n`` buckets the summed
    filter slices come from ``embedding_bag(mode="sum")`` over the rows of ``weight_rows`` and the reduced
    conv runs on ``(1, b_n, H, W)`` with the layer's own padding (the bucket means of zero padding are
    zero): im2col + one GEMM (``(O, b_n·K2) @ (b_n·K2, H_out·W_out)``, the filters read transposed in place)
    or a oneDNN conv. Returns ``(N, O, H_out, W_out)`` (no bias) and the conv MACs (what a FLOP counter
    sees).
    """
    n, c, h, w = x.shape
    k2 = kernel[0] * kernel[1]
    o = weight_rows.shape[1] // k2
    means = F.embedding_bag(bags.members, x.reshape(n * c, h * w), bags.starts, mode="mean")
    starts = bags.starts % c if n > 1 else bags.starts  # relative to each image's own channel list
    counts = bags.counts.tolist()
    outs: list[Tensor] = []
    first = 0
    for i, b in enumerate(counts):
        merged = F.embedding_bag(bags.order[i], weight_rows, starts[first : first + b], mode="sum")
        image = means[first : first + b].view(1, b, h, w)
        outs.append(_reduced_conv(image, merged, gemm, o, kernel, stride, padding, dilation))
        first += b
    y = torch.cat(outs) if n > 1 else outs[0]
    return y, int(sum(counts)) * o * k2 * int(y.shape[2] * y.shape[3])


def compressed_images_native(
    x: Tensor,
    codes: Tensor,
    weight_rows: Tensor,
    gemm: bool,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    merge_image: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], int],
) -> tuple[Tensor, Tensor, int]:
    """:func:`compressed_images` with the bucketing and both merges of each image in one call of the native
    kernel (:mod:`._haste_native`; the same buckets, bucket order and summation order, so the same output
    bit for bit). ``x`` is a contiguous float32 CPU batch, ``codes`` ``(N, C)`` its hash codes. Returns the
    output, the buckets per image ``(N,)`` and the conv MACs."""
    n, c, h, w = x.shape
    k2 = kernel[0] * kernel[1]
    r = weight_rows.shape[1]
    o = r // k2
    means_buf = scratch(c * h * w, x, 2)  # slots 0 and 1 belong to _reduced_conv
    merged_buf = scratch(c * r, x, 3)
    outs: list[Tensor] = []
    counts: list[int] = []
    for i in range(n):
        b = merge_image(codes[i], x[i].view(c, h * w), weight_rows, means_buf, merged_buf)
        image = means_buf[: b * h * w].view(1, b, h, w)
        y = _reduced_conv(image, merged_buf[: b * r].view(b, r), gemm, o, kernel, stride, padding, dilation)
        outs.append(y)  # a fresh tensor: the next image may overwrite the buffers
        counts.append(b)
    y = torch.cat(outs) if n > 1 else outs[0]
    return y, torch.tensor(counts), sum(counts) * o * k2 * int(y.shape[2] * y.shape[3])


def stitch_tiles(tiles: Tensor, n: int, geom: TileGeometry, layout: str) -> Tensor:
    """Tile outputs → ``(N, O, H_out, W_out)``; ``layout`` is ``"TOPP"`` (``(T, O, P, P)``) or ``"TQO"``."""
    p = geom.patch
    if layout == "TOPP":
        o = tiles.shape[1]
        full = tiles.reshape(n, geom.tiles_h, geom.tiles_w, o, p, p).permute(0, 3, 1, 4, 2, 5)
    else:
        o = tiles.shape[2]
        full = tiles.reshape(n, geom.tiles_h, geom.tiles_w, p, p, o).permute(0, 5, 1, 3, 2, 4)
    full = full.reshape(n, o, geom.tiles_h * p, geom.tiles_w * p)
    return full[:, :, : geom.out_h, : geom.out_w]
