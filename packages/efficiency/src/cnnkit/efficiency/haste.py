"""HASTE: data-free dynamic compression of pretrained convs by hashing redundant channels (METHODS.md §8).

Papers: Meiner, Mehnert, Condurache, "Instant Complexity Reduction in CNNs using Locality-Sensitive Hashing"
(arXiv 2309.17211 v1) / "Data-Free Dynamic Compression of CNNs for Tractable Efficiency" (v2, VISAPP 2025);
journal version "HASTE: A Framework for Training-Free, Dynamic, and Steerable Compression of Pre-Trained
CNNs" (SN Computer Science 2026, arXiv 2606.30516). Only abstracts and secondary reports could be read; the
computation below is METHODS.md's reconstruction, exact with respect to the merging identity.

Each selected ``nn.Conv2d`` becomes a :class:`HASTEConv2d` (same parameters, shared, never modified; same
``state_dict`` keys). In eval mode, per image ``n`` and output tile ``t`` of ``P``×``P`` pixels (input window
of side ``P_in = (P−1)σ + d(K−1) + 1`` with the kernel's halo, so the output equals a per-tile computation):

1. ``v_c`` = the window of channel ``c`` (``D = P_in²`` values); ``z_c = v_c − mean_c' v_c'`` (centring across
   channels, for hashing only).
2. ``code_c = Σ_l 2^l·1[⟨z_c, r_l⟩ > 0]`` with ``R ∈ {−1, 0, +1}^{D×L}``, ``P(0) = s``, ``P(±1) = (1−s)/2``
   (very sparse random projections, Li, Hastie & Church 2006), drawn once per layer from the seed.
3. Channels with equal codes form a bucket ``B``: ``X̄_B = mean_{c∈B} X_c`` (uncentred values),
   ``W̃_B = Σ_{c∈B} W_c``; ``Y_t = Σ_B W̃_B ∗ X̄_B + bias`` (padding 0 inside the window).

Since ``Σ_B W̃_B ∗ X̄_B = Σ_c W_c ∗ X̄_{B(c)}``, replacing every channel by its bucket mean and running the dense
conv gives the same output: ``mode="simulate"`` (the reference and test oracle). ``mode="compressed"`` does
the reduced work for real: bucket means, summed filter slices (a sparse 0/1 matrix times the weight) and one
batched GEMM per chunk of tiles over the reduced depth (:func:`._haste_kernels.compressed_tiles`). The two
agree to float rounding.

**Per-image path.** When one tile covers the whole output map (``patch`` ≥ the output side, e.g. ``patch=32``
on CIFAR, whose ResNet maps are 32/16/8/4), hashing is per image (one window = the zero-padded image; only
the projection rows that meet real pixels are used, since padding adds nothing to ``⟨z_c, r⟩``: the same
codes as the tile formulation) and ``compressed`` runs, per image, one real convolution of reduced depth
``b_n`` on the bucket means with the layer's own padding (:func:`._haste_kernels.compressed_images`): a
oneDNN conv on channels-last operands for maps of ≥ 64 output pixels, else im2col + one MKL GEMM [choice,
measured]; the merged filters are written into reused buffers (fresh multi-MB tensors per image cost page
faults). Both modes share the hashing and bucketing code, so they agree to float rounding.

**Native kernel** (``kernel``, default ``"auto"``). On the CPU the per-image path groups each image's channels
by code and sums their input rows and filter slices in one call of a small C kernel
(:mod:`._haste_native`: plain C99 compiled on first use with the system C compiler, cached, checked against
PyTorch before use) instead of a dozen PyTorch ops per layer. It sums in the same order as those ops, so the
output is the same (bit for bit with torch 2.14). ``"torch"`` keeps the PyTorch ops; ``"native"`` raises
:class:`._haste_native.NativeKernelUnavailable` where the kernel cannot be built (``"auto"`` falls back);
with an autograd graph to record the layer takes the PyTorch ops. The hashing stays in PyTorch, shared with
``simulate``. One layer inside a stack of six distinct convs (weights out of cache, as inside a network;
one thread of a 2-vCPU AMD EPYC, batch 1, benchmarks/haste_layer.py) [measured]: 512@4x4 at b/C = 0.1
runs 2.15x the dense conv (PyTorch ops: 1.40x), at 0.2 1.83x (1.35x); 256@8x8 at b/C = 0.1 2.11x (1.62x),
at 0.2 1.74x (1.49x). At batch 32 the kernels tie (the per-image merged filters, not the bookkeeping,
dominate there). In a whole model the gain is smaller and within this shared VM's noise: on a ResNet-34
trained for 5 epochs on that CPU (83.3 %, bfloat16; the 91 % GPU model was not at hand), the speed setting
below (L per conv for a predicted 14.5 %, from ``layer4.0.conv2``; 14.5 % cut at −1.6 pp on 1,000 test
images of this weaker model) ran 33.9 ms with the kernel and 34.7 ms with the PyTorch ops against
35.5 / 36.2 ms dense, one run each (1.05x and 1.05x; tuned against tuned 1.20x and 1.03x), one thread, batch
1; a second run with the kernel: 30.1 against 33.7 ms (1.12x; tuned against tuned 1.13x), so the spread
between runs is as large as the kernel's gain. The five replaced convs are a small share of the dense
model's 34 ms: 6.3 ms timed layer by layer with hot weights, more in the model where their weights are cold
(the ceiling, reduced convs at dense efficiency with hashing and merging free, is 1.40x); with hot weights
each HASTE layer takes 0.4-0.9 ms against 1.2-1.3 ms dense (hashing 40 µs, the merge 0.2 ms, the reduced
GEMM 0.06-0.25 ms; cold weights double the merge). Starting per image in stage 3 instead (L per conv
for more of the FLOPs) costs accuracy fast on that model: 20.2 % cut at −1.9 pp, 25.7 % at −6.8 (1,000 test
images; sensitivities on 500 validation images): per-image codes of 8x8 maps merge unlike channels.

Trade-off [measured, benchmarks/haste_cifar.py on all 10,000 test images, models trained by the bench on an
H100 GPU (40 epochs, one-cycle to lr 0.1, batch 128, bfloat16): ResNet-34 91.15 %, ResNet-18 90.80 % top-1]:
small tiles from stage 1 on cut the most at a given drop, because one code must describe a small window.
ResNet-34, patch 2 from stage 1: L = 16 cuts 34.0 % of the model's FLOPs at −0.57 pp, L = 14 38.4 % at
−1.72, L = 13 40.6 % at −2.42, L = 12 43.1 % at −4.04; patch 3 from stage 1, L = 14: 33.2 % at −1.38; patch 4
from stage 2 (the defaults), L = 12: 26.4 % at −1.53; per image, L = 12: 17.1 % at −1.11. ResNet-18, patch 2
from stage 1: L = 14 36.2 % at −1.72, L = 16 31.5 % at −0.47; patch 3 from stage 1, L = 14: 30.4 % at −1.04.
The paper reports 46.7 % at −1.25 pp on ResNet-34; its FLOPs accounting is unknown. Counted without
hashing and merging (``flops_reduction_without_overhead``; the same ResNet-34 with its weights rounded to
float16, on a CPU), patch 2 from stage 1 cuts 45.2 % at −1.71 pp (L = 14) and 40.3 % at −0.56 (L = 16), and
patch 3, L = 14 cuts 37.6 % at −1.56: at patch 2 the overhead is about 7 points of the model's FLOPs, mostly
the per-tile filter merge. Longer training helped, though not always: the same
ResNet-34 after 22 epochs (90.3 %) gave patch 2, L = 14: 34.1 % at −2.05 pp; CPU-trained ResNet-18s (3 to 15
epochs, 79.9 to 88.4 %) stayed below 29 % within 1.5 pp, with no gain from 6 to 15 epochs. The projection
draw matters about as much as one step of L: on that ResNet-34 (patch 2 from stage 1, 1000 test images,
``seed`` 0 to 4), L = 14 dropped 1.2 to 2.5 pp at 38.0 to 39.0 %, L = 15 0.1 to 4.3 pp at 36.0 to 38.3 %. The
worst draw merged far more in stage 1 (52 % against 37 % of the first conv's FLOPs, against seed 1) and lost
4.3 pp where the L = 14 draws lost 1.2 to 2.5 at a similar cut. Compare a few seeds on validation data before
fixing one.
L per stage (``stage_hyperplanes``) [measured, same ResNet-34, patch 2 from stage 1, CPU; tuned on the first
5,000 of the shuffled test images, reported on the other 5,000, ``haste_cifar.py --split``]: from L = 16
everywhere (2,000 validation images), L = 10 in stage 4 added 2.9 points of model FLOPs cut for +0.25 pp,
L = 12 in stage 1 added 2.0 points for +1.3 pp. On the test half, L = (16, 14, 14, 10) for stages 1-4 cut
39.3 % at −1.74 pp and (16, 14, 13, 10) 39.8 % at −2.16, against one L = 14: 38.4 % at −1.84. A gain of about
one point at the same drop, the size of the projection draw's spread; later stages tolerate more merging.
L per conv (``layer_hyperplanes`` from :mod:`cnnkit.efficiency.haste_tuning`) [measured, same ResNet-34,
patch 2 from stage 1, CPU; ``haste_cifar.py --allocate``]: the sensitivities of the 32 convs at L = 8 to 16
on 1,000 validation images (17 minutes on 2 threads) differ widely: alone at L = 8, a conv costs 0.0001 to
0.037 nats of KL for 0.5 to 2.5 % of the model's FLOPs. The target was chosen on the validation half: a
predicted 39.7 % gave 40.25 % at −1.04 pp on its 5,000 images (predicted 41.4 %: 41.9 % at −2.35 on 2,000).
On the test half (5,000 images) that allocation cuts **40.3 % at −1.48 pp**, against one L = 14: 38.4 % at
−1.84 and L per stage (16, 14, 14, 10): 39.3 % at −1.74. It merges most in the last blocks of stages 2-4
(L = 8 to 12) and little in stage 1 and early stage 3 (L = 14 to 16). The margin is one image in 5,000;
a predicted 40.4 % cut 41.2 % at −1.84. Per-layer KLs add up only roughly (merging in one layer changes
what the later ones see), so check an allocation on held-out data.

In wall-clock on a CPU (that ResNet-34, one thread of a 2-core AMD EPYC, batch 1 / 32 vs the dense model):
per image, L = 12: 0.93x / 0.49x; patch 4, L = 12: 0.55x / 0.27x; patch 3 from stage 1, L = 14: 0.24x /
0.12x. The per-tile formulation (many small batched GEMMs, per-tile merged filters, stitching) costs more than
it saves; the per-image path beats the dense conv only where the merging is strong (one layer at b/C = 0.42,
batch 1: 1.55x on 8x8 maps, 1.25x on 4x4, about 0.95x on 32x32 and 16x16, benchmarks/haste_layer.py),
because hashing, bucketing, the merges and the layout copies cost about 0.1-0.2 ms per layer, as much as the
reduced conv saves on CIFAR-sized maps.
Per-image merged filters cannot be shared across a batch (they are used ``H_out·W_out`` times, the dense
filters ``N·H_out·W_out`` times), so with large batches the dense conv stays faster on small maps.
The ceiling (benchmarks/haste_cifar.py: each replaced conv cut to its layer's mean bucket count, i.e. the
reduced convs' work at one dense conv's efficiency with hashing and merging free; same machine, 500 test
images, batch 1 / 32 vs the dense model) is 1.50x / 1.15x per image (L = 12), 1.69x / 1.28x at patch 4
(L = 12), 1.91x / 1.42x at patch 3 and 1.94x / 1.50x at patch 2 (L = 14, from stage 1), where HASTE ran
0.94x / 0.52x, 0.57x / 0.28x, 0.26x / 0.12x and 0.23x / 0.11x. The gap is the price of dynamic merging:
the filter merge alone reads all of a layer's weights once per tile (per image in the per-image path),
memory traffic that the ceiling leaves out and the dense conv spreads over all pixels; so the ceiling is an
optimistic bound, which a real implementation, a fused kernel included, stays below.
The **merge bound** adds that traffic: the ceiling plus one read of each replaced conv's full weight per
tile of each image (benchmarks/haste_cifar.py; same machine, 1,000 images of the test half, batch 1 / 32;
"tuned" is the dense model with each conv on the faster of PyTorch's backend and oneDNN). At patch 2 from
stage 1, L = 14 (38.6 % of the FLOPs cut), it is 1.00x / 0.68x the dense model and 0.88x / 0.68x the tuned
one: no implementation of that setting beats the dense model on this CPU, so the FLOPs goal and a CPU
speed-up cannot come from one setting here. The setting with a real speed-up is per image in the last
stage (``patch=32``), whose HASTE layers run 3 to 4x faster than the best dense conv once merging is strong
(4x4 maps, one thread, b/C ≤ 0.1: 0.23 to 0.33 ms against 0.95 ms). Its stride-2 first conv
(``layer4.0.conv1``, 8x8 input) is better left dense (``start_layer="layer4.0.conv2"``): at L = 10 HASTE
ran it at 0.83x. With L per conv (:mod:`.haste_tuning`, candidates L = 4 to 16, sensitivities on 1,000
validation images; the target chosen on the validation half: a predicted 14.5 % cut 14.6 % at −0.15 pp on
2,000 images, 15 % lost 1.6 pp) the picks are L = (7, 6, 5, 4, 4), and on all 5,000 images of the test half
it cuts **14.6 % of the FLOPs at −0.28 pp**. At batch 1 it runs **1.15 to 1.20x the dense model and 1.20 to
1.25x tuned against tuned** (the HASTE model with the convs it leaves dense on the tuned dense model's
backends), at the 1.2x line rather than clear of it: five runs on this shared VM, one thread, 128 test images
cycled (on two threads, wall clock: 1.16x and 1.28x). At batch 32: 1.01x / 0.99x; merge bound at batch 1:
1.5 to 1.6x (1.27 to 1.35x tuned). One L = 8 there: 12.9 % at −0.30 pp, 1.13 to 1.18x (1.14 to 1.26x).
[Earlier figures timed an untuned HASTE model against the tuned dense one, so the backend gain of the
stage-3 convs HASTE left dense counted against it: stage 4 at L = 8 was reported at 0.98x "tuned"; tuned
against tuned it ran 1.22x in one run.] Per image from stage 3 gains nothing on the tuned model: on 8x8 maps a
HASTE layer ran 0.53 to 0.92x the oneDNN conv even at b/C = 0.47 (L per conv for 18 %: 18.3 % at −0.8 pp on
2,000 validation images, 1.07x the dense model, 0.94x tuned against tuned; one L = 13 with stage 4 at 8:
17.3 % at −2.0 pp, 1.03x), because oneDNN needs the merged filters transposed (0.2 ms for a 256-channel layer,
half as long as its reduced conv) and MKL's GEMM, which needs no transpose, runs at half oneDNN's speed on
this AMD CPU. There the gap to the bound is the per-layer cost of hashing, sorting, layout copies and
odd-depth GEMMs, which only a fused kernel could close; the filter merge itself already runs at memory speed
(one thread, weights out of cache: summing a 512-channel 3x3 conv's 9.4 MB of filter rows into 256 buckets
takes 296 µs, a plain copy of them 275 µs).
Larger tiles in stages 3 and 4 (patch 4, which makes the filter merge four times cheaper per
output pixel) lost more than the overhead they saved: from L = (16, 14, 13, 10) at patch 2 (39.8 % at
−1.50 pp, 2,000 validation images), patch 4 in stage 4 gave 39.3 % at −1.75, in stage 3 (L = 11) 37.1 % at
−3.55. So did the projection seed: seeds 1 to 7 of that setting cut 40.4 to 41.3 % at −1.85 to −3.50 pp.
Nor would reusing a merged filter slice where the same bucket recurs in another tile of the image: at
patch 2 from stage 1, L = 14 (200 validation images), the filter merge is 5.6 % of the model's FLOPs and
exact repeats make up 2.5 % of it (0.14 points of the model's FLOPs).

In training mode a :class:`HASTEConv2d` is a plain conv: HASTE is inference-only.

Cost (METHODS.md §8f, per tile with ``C`` in, ``O`` out channels, ``b`` buckets, ``q`` output pixels, ``D``
window pixels, counted in FLOPs with one multiply-add = 2 FLOPs and one addition / scaling = 1 FLOP):
dense ``2·O·C·K²·q``; needed ``2·O·b·K²·q`` (reduced conv) + ``2·C·D`` (centring) + ``C·nnz(R_D)``
(hashing: one add/sub per non-zero of the window's rows of ``R``) + ``C·D`` (input merge: ``(C−b)·D`` adds and
``b·D`` scalings) + ``O·K²·(C−b)`` (filter merge). Edge tiles count their real output pixels and window.
The layers report ``needed − what the FLOP counter sees of their own ops`` through
:func:`cnnkit.core.cost.report_macs`, so ``count_flops(model).effective_macs`` is HASTE's needed cost in
either mode. They also tally, over all eval forwards ("the data seen"), per image dense and needed FLOPs;
:meth:`HASTE.stats` reports means and p5/p50/p95 over images, for the replaced convs and the whole model
(the dense MACs of the other convs and linear layers counted once at ``apply`` on one example input);
``flops_reduction`` counts the overhead, ``flops_reduction_without_overhead`` is the reduced convs' saving
alone (for comparison with counts that leave hashing and merging out; the paper's is unknown). If no data
was seen yet, ``stats`` runs the example inputs of ``apply`` first.

Choices (METHODS.md §8h; all options of :class:`HASTE.Config`):

* ``hyperplanes`` L = 14 [choice] (an inference-time knob: :func:`set_hyperplanes` changes it in place,
  no retraining); ``stage_hyperplanes`` = None: ``{stage: L}`` overrides L for the convs of those stages
  (1-based, METHODS.md §1.1's stages; each layer records its ``stage``; :func:`set_hyperplanes` takes the
  same mapping at inference) [choice: the paper steers one L; per stage, a stage whose merging costs
  little accuracy can merge more, tuned on validation data]; ``layer_hyperplanes`` = None: ``{conv name:
  L}`` overrides both for those convs (:func:`set_hyperplanes` takes names too) [choice: per conv, e.g.
  from :func:`cnnkit.efficiency.haste_tuning.allocate_hyperplanes`, which spends a FLOPs target where the
  measured KL per saved FLOP is lowest]; ``sparsity`` s = 2/3 [paper: secondary, CIFAR] (1/2 for
  ImageNet); ``patch`` P = 4;
  ``seed`` of the projections (layer ``i`` of the replaced convs, in model order, uses ``seed·1000003 + i``;
  R is a non-persistent buffer rebuilt from it); ``resample_zero_columns`` = True; ``centre`` = True;
  ``hash_test`` = ``"strict"`` (``>``; ``"nonstrict"``: ``≥``).
* ``start_layer`` = 2: a stage number (the first conv of that stage and every later stage, METHODS.md
  §1.1's stages from :func:`cnnkit.core.sites.stage_names`), or the qualified name of a conv (it and every
  later conv in model order). ``kernel_sizes`` = (3,): the square kernel sizes replaced (``None``: any K×K
  with K ≥ 2, and 1×1 unless ``skip_pointwise``); LeNet-5-Caffe's 5×5 convs need ``kernel_sizes=[5]``.
  Depthwise/grouped convs, non-zero padding modes and string paddings are never replaced; residual
  projections (``downsample`` / ``shortcut``) only with ``include_shortcuts``. ``skip_pointwise`` = True.
* ``min_out_pixels`` = 0: a latency knob, not in the paper. A conv whose output map on ``apply``'s example
  input has fewer pixels is left dense (``stats``: ``layers_skipped_small``). Rule [measured,
  benchmarks/haste_layer.py, one CPU thread]: per-image merged filters are used ``H_out·W_out`` times
  each, the dense conv's filters ``N·H_out·W_out`` times, so at large batches HASTE only pays on large
  maps (CIFAR ResNet-18 shapes at batch 32, one layer at b/C = 0.42: 32x32 and 16x16 maps 0.87x and
  0.99x, 8x8 and 4x4 maps 0.71x and 0.45x; ``min_out_pixels=256`` keeps stages 1-2), at the cost of a
  smaller FLOPs cut.
* ``mode`` = ``"simulate"``; ``chunk_mb`` bounds the merged filters held at once by the tile fast path;
  ``kernel`` = ``"auto"``: the per-image fast path's native kernel where it builds (see above) [choice].
* ``patch`` ≥ the largest output map (e.g. 32 on CIFAR) selects per-image hashing (see above); a layer
  whose map is larger than ``patch`` still uses tiles.
* Export keeps the HASTE convs: HASTE *is* the inference model (the bench measures accuracy, FLOPs and
  latency on ``export``); :func:`remove_haste` gives the plain-conv model back.
* Hashing and merging run in float32 with autocast disabled (bfloat16 would flip hash bits); the output
  is cast back to the input's dtype.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cnnkit.core.config import MethodConfig
from cnnkit.core.context import Context
from cnnkit.core.cost import report_macs, reporting_macs
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.sites import iter_named_modules, stage_names
from cnnkit.efficiency._haste_kernels import (
    TileGeometry,
    bucketing,
    cache_tensors,
    compressed_images,
    compressed_images_native,
    compressed_tiles,
    hash_codes,
    image_bags,
    image_hash_rows,
    image_hash_values,
    image_path_uses_gemm,
    make_projection,
    simulate_images,
    simulate_tiles,
    stitch_tiles,
    tile_geometry,
    tile_windows,
)
from cnnkit.efficiency._haste_native import (
    MergeImage,
    NativeKernelUnavailable,
    native_kernel,
    native_unavailable_reason,
)

__all__ = [
    "HASTE",
    "HASTEConfig",
    "HASTEConv2d",
    "haste_layers",
    "remove_haste",
    "set_hyperplanes",
    "set_mode",
]

Mode = Literal["simulate", "compressed"]
Kernel = Literal["auto", "native", "torch"]
KERNELS = ("auto", "native", "torch")
_SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})
_WINDOW_FLOATS = 1 << 24  # windows of at most this many numbers per pass (images are processed in chunks)
_MAX_PER_IMAGE = 1_000_000  # per-image cost records kept per layer (for percentiles); means use all data
_PENDING_MAX = 256  # forwards whose bucket counts wait to be summed into a layer's tally


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1]))


class HASTEConfig(MethodConfig):
    """Configuration of :class:`HASTE` (defaults: METHODS.md §8h)."""

    hyperplanes: int = Field(14, ge=1, le=64, description="L: random hyperplanes per hash (bits per code)")
    stage_hyperplanes: dict[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1, le=64)]] | None = Field(
        None, description="L per stage number (1-based), overriding hyperplanes for the convs of those stages"
    )
    layer_hyperplanes: (
        dict[Annotated[str, Field(min_length=1)], Annotated[int, Field(ge=1, le=64)]] | None
    ) = Field(
        None,
        description="L per replaced conv (qualified name), overriding hyperplanes and stage_hyperplanes",
    )
    sparsity: float = Field(2 / 3, ge=0.0, lt=1.0, description="s = P(0) of the ternary projection entries")
    patch: int = Field(
        4,
        ge=1,
        le=256,
        description="P: output tile side; input window P_in = (P-1)σ + K; P >= the output map: per image",
    )
    start_layer: Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1)] = Field(
        2, description="stage number (1-based) or qualified conv name from which convs are replaced"
    )
    kernel_sizes: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        (3,), min_length=1, description="square kernel sizes K of the convs replaced; None: any K >= 2"
    )
    skip_pointwise: bool = Field(True, description="never replace 1x1 convs")
    include_shortcuts: bool = Field(False, description="also replace convs of residual projections")
    min_out_pixels: int = Field(
        0,
        ge=0,
        description="replace only convs whose output map (on the example input) has >= this many pixels",
    )
    centre: bool = Field(True, description="centre the windows across channels before hashing")
    hash_test: Literal["strict", "nonstrict"] = Field("strict", description="bit = <z, r> > 0 (or >= 0)")
    resample_zero_columns: bool = Field(True, description="redraw all-zero projection columns")
    seed: int = Field(0, ge=0, lt=2**31, description="seed of the random projections")
    mode: Mode = Field("simulate", description="'simulate' (reference) or 'compressed' (fast path)")
    chunk_mb: float = Field(4.0, gt=0.0, le=4096.0, description="fast path: merged filters held at once")
    kernel: Kernel = Field(
        "auto",
        description="per-image fast path: 'native' (C kernel built on first use), 'torch' (PyTorch ops), "
        "'auto' (native where it builds)",
    )

    @model_validator(mode="after")
    def _pointwise_consistent(self) -> HASTEConfig:
        if self.skip_pointwise and self.kernel_sizes is not None and 1 in self.kernel_sizes:
            raise ValueError("kernel_sizes contains 1 but skip_pointwise=True; set skip_pointwise=False")
        return self


@dataclass
class _Tally:
    """Per-image cost of one layer over the eval forwards seen (FLOPs)."""

    images: int = 0
    dense: float = 0.0
    needed: float = 0.0
    overhead: float = 0.0
    tiles: int = 0
    bucket_fraction: float = 0.0
    per_image_needed: list[Tensor] = field(default_factory=list)
    kept: int = 0


@dataclass(frozen=True)
class _TileCosts:
    """Per-tile cost terms of one input size (float64 vectors of length T)."""

    dense: Tensor  # 2·O·C·K²·q
    conv_per_bucket: Tensor  # 2·O·K²·q: reduced conv FLOPs per bucket
    overhead_fixed: Tensor  # centring + hashing + input merge + O·K²·C (filter merge before -O·K²·b)
    filter_per_bucket: float  # O·K²
    net_per_bucket: Tensor  # conv_per_bucket - filter_per_bucket: needed FLOPs per bucket of each tile
    dense_total: float  # dense FLOPs of one image
    fixed_total: float  # overhead_fixed summed over the tiles of one image


class HASTEConv2d(nn.Conv2d):
    """A drop-in ``nn.Conv2d`` that merges hash-equal input channels per image and tile in eval mode.

    Built from an existing conv, whose ``weight`` and ``bias`` parameters it shares.

    Args:
        conv: the conv to replace (groups = 1, zero padding given as numbers).
        hyperplanes: L, bits per hash code.
        sparsity: s, the probability of a zero projection entry.
        patch: P, the output tile side.
        seed: seed of this layer's projection.
        centre, strict, resample_zero_columns: see :class:`HASTEConfig`.
        mode: ``"simulate"`` or ``"compressed"``.
        chunk_mb: fast path memory bound for the merged filters.
        kernel: the per-image fast path's bucketing and merges: ``"native"`` (:mod:`._haste_native`, a C
            kernel built on first use; an error if it cannot be built), ``"torch"`` (PyTorch ops) or
            ``"auto"`` (native where it builds, else PyTorch).
    """

    projection: Tensor

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        hyperplanes: int = 14,
        sparsity: float = 2 / 3,
        patch: int = 4,
        seed: int = 0,
        centre: bool = True,
        strict: bool = True,
        resample_zero_columns: bool = True,
        mode: Mode = "simulate",
        chunk_mb: float = 4.0,
        kernel: Kernel = "auto",
    ) -> None:
        reason = unsupported_reason(conv)
        if reason:
            raise ValueError(f"HASTEConv2d cannot replace this conv: {reason}")
        if kernel not in KERNELS:
            raise ValueError(f"HASTEConv2d: kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        if kernel == "native" and native_kernel() is None:
            raise NativeKernelUnavailable(_native_missing())
        self.k_hw, self.s_hw = _pair(conv.kernel_size), _pair(conv.stride)
        self.p_hw, self.d_hw = _pair(conv.padding), _pair(conv.dilation)
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            self.k_hw,
            stride=self.s_hw,
            padding=self.p_hw,
            dilation=self.d_hw,
            groups=1,
            bias=conv.bias is not None,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.training = conv.training
        self.sparsity = float(sparsity)
        self.patch = int(patch)
        self.seed = int(seed)
        self.centre = bool(centre)
        self.strict = bool(strict)
        self.resample_zero_columns = bool(resample_zero_columns)
        self.mode: Mode = mode
        self.chunk_mb = float(chunk_mb)
        self.kernel: Kernel = kernel
        self.stage: int | None = None  # the model stage (1-based) the conv sits in; set by HASTE.apply
        self._tally = _Tally()
        self._pending: list[tuple[Tensor, int, int]] = []
        self._costs: dict[tuple[int, int], _TileCosts] = {}
        self._rows_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self._warned_inference_weight = False
        self._geoms: dict[tuple[int, int], TileGeometry] = {}
        self._hash_rows: dict[tuple[int, int], Tensor] = {}  # per input size, see image_hash_rows
        self.register_buffer("projection", torch.empty(0), persistent=False)
        self.set_hyperplanes(hyperplanes)

    # -- configuration ----------------------------------------------------------------------------------
    @property
    def hyperplanes(self) -> int:
        return int(self.projection.shape[1])

    def _window_sides(self) -> tuple[int, int]:
        k, s, d = self.k_hw, self.s_hw, self.d_hw
        return (
            (self.patch - 1) * s[0] + d[0] * (k[0] - 1) + 1,
            (self.patch - 1) * s[1] + d[1] * (k[1] - 1) + 1,
        )

    def set_hyperplanes(self, hyperplanes: int) -> None:
        """Redraw the projection with ``hyperplanes`` columns (from the seed); resets the cost tally."""
        if not isinstance(hyperplanes, int) or not 1 <= hyperplanes <= 64:
            raise ValueError(f"hyperplanes must be an integer in 1..64, got {hyperplanes!r}")
        side_h, side_w = self._window_sides()
        with cache_tensors():
            proj = make_projection(
                side_h * side_w, hyperplanes, self.sparsity, self.seed, self.resample_zero_columns
            )
            self.projection = proj.to(self.weight.device)
        self._costs = {}
        self._hash_rows = {}
        self.reset_tally()

    @property
    def tally(self) -> _Tally:
        """The cost records of the eval forwards seen so far (the forward only queues its bucket counts;
        they are summed here, on first use)."""
        self._fold_pending()
        return self._tally

    def reset_tally(self) -> None:
        """Forget the cost records of the data seen so far."""
        self._tally = _Tally()
        self._pending = []

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[0] == 0:  # nn.Conv2d's shape errors; an empty batch has nothing to hash
            return super().forward(x)
        return self._haste_forward(x)

    def _geometry(self, h: int, w: int) -> TileGeometry:
        return tile_geometry(
            h,
            w,
            kernel=self.k_hw,
            stride=self.s_hw,
            padding=self.p_hw,
            dilation=self.d_hw,
            patch=self.patch,
        )

    def _haste_forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h, w = int(x.shape[-2]), int(x.shape[-1])
        geom = self._geoms.get((h, w))
        if geom is None:
            geom = self._geoms[(h, w)] = self._geometry(h, w)
        autocast = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            xf = x.float().contiguous()
            weight = self.weight.float()
            proj = self.projection.to(device=xf.device, dtype=torch.float32)
            per_chunk = max(1, _WINDOW_FLOATS // max(1, geom.tiles * self.in_channels * geom.window))
            outs: list[Tensor] = []
            buckets: list[Tensor] = []
            seen_macs = 0
            image = geom.tiles == 1
            gemm = not image or image_path_uses_gemm(geom.out_h, geom.out_w)
            weight_ck = self._weight_rows(weight, gemm) if self.mode == "compressed" else None
            for part in torch.split(xf, per_chunk) if xf.shape[0] > per_chunk else (xf,):
                if image:
                    y, b, macs = self._image_forward(part, geom, weight, weight_ck, proj)
                else:
                    y, b, macs = self._tiles_forward(part, geom, weight, weight_ck, proj)
                outs.append(y)
                buckets.append(b)
                seen_macs += macs
            y = torch.cat(outs) if len(outs) > 1 else outs[0]
            y = y.contiguous()
            if self.bias is not None:
                y = y + self.bias.float().view(1, -1, 1, 1)
        counts = torch.cat(buckets) if len(buckets) > 1 else buckets[0]
        self._record(counts.view(x.shape[0], geom.tiles), h, w, seen_macs)
        return y.to(dtype)

    def _weight_rows(self, weight: Tensor, gemm: bool) -> Tensor:
        """The fast path's weight rows (``weight`` is ``self.weight`` as float32), one per input channel:
        ``(C, K2·O)`` for a GEMM (tiles, small images), ``(C, O·K2)`` for a oneDNN conv.

        Cached while ``self.weight`` is unchanged: the key is the parameter's own storage and version
        counter, not ``weight``'s (for a half-precision parameter that is a fresh copy per call, whose
        address may repeat with other values). An inference tensor has no version counter, so its rows are
        rebuilt on every call rather than risk stale ones."""
        source = self.weight
        if source.is_inference():
            self._warn_uncached_rows()
            return _rows_of(weight, gemm, self.in_channels)
        key = (gemm, source.data_ptr(), source._version, source.dtype, source.device)
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[1]
        with cache_tensors():
            rows = _rows_of(weight, gemm, self.in_channels)
        self._rows_cache = (key, rows)
        return rows

    def _warn_uncached_rows(self) -> None:
        if not self._warned_inference_weight:
            self._warned_inference_weight = True
            warnings.warn(INFERENCE_WEIGHT_WARNING, stacklevel=4)

    def _image_forward(
        self, part: Tensor, geom: TileGeometry, weight: Tensor, weight_ck: Tensor | None, proj: Tensor
    ) -> tuple[Tensor, Tensor, int]:
        """One tile covers the whole output (``patch`` ≥ the output map): per-image hashing, and in
        ``compressed`` mode one real conv of reduced depth per image (:func:`compressed_images`)."""
        size = (int(part.shape[2]), int(part.shape[3]))
        rows = self._hash_rows.get(size)
        if rows is None or rows.device != proj.device:
            rows = self._hash_rows[size] = image_hash_rows(proj, geom, *size)
        values = image_hash_values(part, geom)
        codes = hash_codes(values, rows, centre=self.centre, strict=self.strict)
        n, c, d = values.shape
        seen = n * c * d * rows.shape[1]  # the hashing GEMM (the centring is a mean, not counted)
        if weight_ck is None:
            groups = bucketing(codes)
            y = simulate_images(part, groups, weight, self.s_hw, self.p_hw, self.d_hw)
            seen += int(y.numel()) * c * self.k_hw[0] * self.k_hw[1]
            return y, groups.buckets, seen
        gemm = image_path_uses_gemm(geom.out_h, geom.out_w)
        merge = self._native_merge(part)
        if merge is not None:
            y, counts, conv_macs = compressed_images_native(
                part, codes, weight_ck, gemm, self.k_hw, self.s_hw, self.p_hw, self.d_hw, merge
            )
            return y, counts, seen + conv_macs
        bags = image_bags(codes)
        y, conv_macs = compressed_images(
            part, bags, weight_ck, gemm, self.k_hw, self.s_hw, self.p_hw, self.d_hw
        )
        return y, bags.counts, seen + conv_macs

    def _native_merge(self, part: Tensor) -> MergeImage | None:
        """The native kernel, where this layer may use it on ``part``: CPU input, and no autograd graph to
        record (the kernel has no backward; the PyTorch path has)."""
        if self.kernel == "torch" or part.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and part.requires_grad:
            return None
        merge = native_kernel()
        if merge is None and self.kernel == "native":
            raise NativeKernelUnavailable(_native_missing())
        return merge

    def _tiles_forward(
        self, part: Tensor, geom: TileGeometry, weight: Tensor, weight_ck: Tensor | None, proj: Tensor
    ) -> tuple[Tensor, Tensor, int]:
        """One chunk of images → (output, buckets per tile, MACs a FLOP counter sees of these ops)."""
        n = part.shape[0]
        win = tile_windows(part, geom)
        codes = hash_codes(win, proj, centre=self.centre, strict=self.strict)
        groups = bucketing(codes)
        t, c, d = win.shape
        seen = t * c * d * proj.shape[1]  # the hashing GEMM (the centring is a mean, not counted)
        if weight_ck is None:
            tiles = simulate_tiles(win, groups, weight, geom, self.s_hw, self.d_hw)
            y = stitch_tiles(tiles, n, geom, "TOPP")
            k2 = self.k_hw[0] * self.k_hw[1]
            seen += t * self.out_channels * c * k2 * geom.patch * geom.patch
        else:
            chunk_floats = max(1, int(self.chunk_mb * 2**20 / 4))
            out, gemm_macs = compressed_tiles(
                win,
                groups,
                weight_ck,
                geom,
                self.k_hw,
                self.s_hw,
                self.d_hw,
                chunk_floats,
            )
            y = stitch_tiles(out, n, geom, "TQO")
            seen += gemm_macs
        return y, groups.buckets, seen

    # -- cost accounting --------------------------------------------------------------------------------
    def tile_costs(self, h: int, w: int) -> _TileCosts:
        """The per-tile cost terms for an ``h``×``w`` input (cached)."""
        cached = self._costs.get((h, w))
        if cached is not None:
            return cached
        geom = self._geometry(h, w)
        c, o = self.in_channels, self.out_channels
        k2 = self.k_hw[0] * self.k_hw[1]
        spans = [self.d_hw[i] * (self.k_hw[i] - 1) + 1 for i in range(2)]
        nonzero = (self.projection.detach().cpu() != 0).reshape(geom.side_h, geom.side_w, -1)
        dense, per_bucket, fixed = [], [], []
        for i in range(geom.tiles_h):
            ph = min(geom.patch, geom.out_h - i * geom.patch)
            dh = (ph - 1) * self.s_hw[0] + spans[0]
            for j in range(geom.tiles_w):
                pw = min(geom.patch, geom.out_w - j * geom.patch)
                dw = (pw - 1) * self.s_hw[1] + spans[1]
                q, d = ph * pw, dh * dw
                nnz = int(nonzero[:dh, :dw].sum())
                dense.append(2.0 * o * c * k2 * q)
                per_bucket.append(2.0 * o * k2 * q)
                fixed.append((2.0 * c * d if self.centre else 0.0) + c * nnz + c * d + o * k2 * c)
        costs = _TileCosts(
            dense=torch.tensor(dense, dtype=torch.float64),
            conv_per_bucket=torch.tensor(per_bucket, dtype=torch.float64),
            overhead_fixed=torch.tensor(fixed, dtype=torch.float64),
            filter_per_bucket=float(o * k2),
            net_per_bucket=torch.tensor(per_bucket, dtype=torch.float64) - float(o * k2),
            dense_total=float(sum(dense)),
            fixed_total=float(sum(fixed)),
        )
        self._costs[(h, w)] = costs
        return costs

    def image_costs(self, buckets: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per image ``(dense, needed, overhead)`` FLOPs for buckets ``(N, T)`` of an ``h``×``w`` input."""
        costs = self.tile_costs(h, w)
        b = buckets.detach().cpu().to(torch.float64)
        conv = (b * costs.conv_per_bucket).sum(dim=1)
        overhead = costs.overhead_fixed.sum() - costs.filter_per_bucket * b.sum(dim=1)
        dense = costs.dense.sum().expand(b.shape[0])
        return dense, conv + overhead, overhead

    def _record(self, buckets: Tensor, h: int, w: int, seen_macs: int) -> None:
        """Queue one forward's bucket counts for the tally; report the needed MACs to a running
        :func:`~cnnkit.core.cost.count_flops` (only then are they summed now)."""
        if reporting_macs():
            needed = float(self._needed_per_image(buckets.detach(), h, w).sum())
            report_macs(needed / 2.0 - seen_macs, note="haste")
        self._pending.append((buckets.detach(), h, w))
        if len(self._pending) >= _PENDING_MAX:
            self._fold_pending()  # bounds the queue's memory

    def _needed_per_image(self, buckets: Tensor, h: int, w: int) -> Tensor:
        """Needed FLOPs per image (float64) for bucket counts ``(N, T)``: the same sums as
        :meth:`image_costs` with fewer tensor ops; the terms are integer-valued, so the result is exact."""
        costs = self.tile_costs(h, w)
        return buckets.cpu().to(torch.float64) @ costs.net_per_bucket + costs.fixed_total

    def _fold_pending(self) -> None:
        pending, self._pending = self._pending, []
        for buckets, h, w in pending:
            self._fold(buckets, h, w)

    def _fold(self, buckets: Tensor, h: int, w: int) -> None:
        costs = self.tile_costs(h, w)
        needed = self._needed_per_image(buckets, h, w)
        needed_sum, b_sum = needed.sum().item(), float(buckets.sum())
        tally = self._tally
        n = int(buckets.shape[0])
        tally.images += n
        tally.dense += costs.dense_total * n
        tally.needed += needed_sum
        tally.overhead += costs.fixed_total * n - costs.filter_per_bucket * b_sum
        tally.tiles += int(buckets.numel())
        tally.bucket_fraction += b_sum / self.in_channels
        if tally.kept + n <= _MAX_PER_IMAGE:
            tally.per_image_needed.append(needed)
            tally.kept += n

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.k_hw}, stride={self.s_hw}, "
            f"padding={self.p_hw}, dilation={self.d_hw}, bias={self.bias is not None}, "
            f"hyperplanes={self.hyperplanes}, sparsity={self.sparsity:.4g}, "
            f"patch={self.patch}, mode={self.mode!r}, kernel={self.kernel!r}"
            + (f", stage={self.stage}" if self.stage else "")
        )


INFERENCE_WEIGHT_WARNING = (
    "HASTEConv2d: the weight is an inference tensor (the model was created or loaded under "
    "torch.inference_mode()); it has no version counter, so the compressed path cannot cache its filter rows "
    "and rebuilds them on every call, which is slower. Create or load the model outside "
    "torch.inference_mode(); running it under inference mode is fine."
)


def _rows_of(weight: Tensor, gemm: bool, in_channels: int) -> Tensor:
    """``weight`` ``(O, C, kh, kw)`` as one contiguous row per input channel: ``(C, K2·O)`` if ``gemm``
    else ``(C, O·K2)``."""
    order = (1, 2, 3, 0) if gemm else (1, 0, 2, 3)
    return weight.detach().permute(*order).reshape(in_channels, -1).contiguous()


def _native_missing() -> str:
    return (
        f"HASTE kernel='native': the native kernel is unavailable ({native_unavailable_reason()}); "
        f"allowed kernels: {', '.join(KERNELS)} ('auto' falls back to PyTorch ops)"
    )


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a :class:`HASTEConv2d`, or ``None``."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if parametrize.is_parametrized(conv):
        return "its weight is parametrized (masks, reparametrizations): export that method first"
    if conv.groups != 1:
        return f"groups={conv.groups} (grouped / depthwise convs are not merged)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only zero padding)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (only numeric padding)"
    return None


def haste_layers(model: nn.Module) -> list[tuple[str, HASTEConv2d]]:
    """The :class:`HASTEConv2d` modules of ``model``, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, HASTEConv2d)]


def set_hyperplanes(model: nn.Module, hyperplanes: int | Mapping[int, int] | Mapping[str, int]) -> nn.Module:
    """Change L of the HASTE convs in place (inference-time knob; projections redrawn from their seeds).

    ``hyperplanes``: one L for every HASTE conv, ``{stage: L}`` for the convs of those stages (1-based
    stage numbers, as recorded by :meth:`HASTE.apply`), or ``{conv name: L}`` for those HASTE convs
    (qualified names, e.g. from :func:`cnnkit.efficiency.haste_tuning.allocate_hyperplanes`); the other
    convs keep their L.

    Raises:
        ValueError: a stage with no HASTE conv or a name that is not one (the message lists the allowed
            ones), or a mapping that mixes stage numbers and names.
    """
    layers = haste_layers(model)
    if isinstance(hyperplanes, Mapping):
        if any(isinstance(key, str) for key in hyperplanes):
            _set_layer_hyperplanes(layers, hyperplanes)
        else:
            _set_stage_hyperplanes(layers, cast(Mapping[int, int], hyperplanes))
        return model
    for _, layer in layers:
        layer.set_hyperplanes(hyperplanes)
    return model


def _set_stage_hyperplanes(layers: list[tuple[str, HASTEConv2d]], per_stage: Mapping[int, int]) -> None:
    unknown, present = _missing_stages((layer.stage for _, layer in layers), per_stage)
    if unknown:
        raise ValueError(
            f"hyperplanes: stage(s) {unknown} have no HASTE conv; stages with HASTE convs: {present}"
        )
    for _, layer in layers:
        if layer.stage is not None and layer.stage in per_stage:
            layer.set_hyperplanes(per_stage[layer.stage])


def _set_layer_hyperplanes(layers: list[tuple[str, HASTEConv2d]], per_layer: Mapping[Any, int]) -> None:
    if not all(isinstance(key, str) for key in per_layer):
        raise ValueError(
            f"hyperplanes: a mapping's keys must be all stage numbers or all conv names: {list(per_layer)}"
        )
    by_name = dict(layers)
    unknown = sorted(set(per_layer) - set(by_name))
    if unknown:
        raise ValueError(f"hyperplanes: {unknown} are not HASTE convs; HASTE convs: {list(by_name)}")
    for name, planes in per_layer.items():
        by_name[name].set_hyperplanes(planes)


def _missing_stages(found: Iterable[int | None], per_stage: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The stages of ``per_stage`` not among ``found`` (the stages that hold a HASTE conv), and ``found``'s
    stages, both sorted."""
    present = sorted({stage for stage in found if stage is not None})
    return sorted(set(per_stage) - set(present)), present


def set_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Switch every HASTE conv to ``"simulate"`` or ``"compressed"`` (same outputs up to rounding)."""
    if mode not in ("simulate", "compressed"):
        raise ValueError(f"mode must be 'simulate' or 'compressed', got {mode!r}")
    for _, layer in haste_layers(model):
        layer.mode = mode
    return model


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for attr, child in parent._modules.items():
            if child is old:
                setattr(parent, attr, new)
                return
    raise ValueError("module to replace not found in the model")


def remove_haste(model: nn.Module) -> nn.Module:
    """Put plain ``nn.Conv2d`` modules (sharing the parameters) back in place of the HASTE convs."""
    for _, layer in haste_layers(model):
        conv = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.k_hw,
            stride=layer.s_hw,
            padding=layer.p_hw,
            dilation=layer.d_hw,
            bias=layer.bias is not None,
            device="meta",
        )
        conv.weight = layer.weight
        conv.bias = layer.bias
        conv.train(layer.training)
        _replace(model, layer, conv)
    return model


def _dense_macs(model: nn.Module, example: Tensor) -> tuple[int, dict[int, int], dict[int, int]]:
    """Dense MACs of the convs and linear layers in one eval forward (what ``count_flops`` counts for a
    CNN), in total and per module ``id``, and each conv's output pixels per map; forward hooks, no FLOP
    counter (it imports ``torch._dynamo``)."""
    macs: dict[int, int] = {}
    pixels: dict[int, int] = {}

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(module, nn.Conv2d):
            pixels[id(module)] = int(out.shape[-2]) * int(out.shape[-1])
            kh, kw = _pair(module.kernel_size)
            per_out = module.in_channels // module.groups * kh * kw
        elif isinstance(module, nn.Linear):
            per_out = module.in_features
        else:
            return
        macs[id(module)] = macs.get(id(module), 0) + int(out.numel()) * int(per_out)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    modes = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(example.to(param.device) if param is not None else example)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    return sum(macs.values()), macs, pixels


def _stage_value(per_stage: Mapping[int, int], stage: int | None, default: int) -> int:
    return per_stage.get(stage, default) if stage is not None else default


def _stage_number(name: str, stages: list[list[str]]) -> int | None:
    """The 1-based stage whose modules contain the module ``name``, or ``None``."""
    for number, prefixes in enumerate(stages, start=1):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return number
    return None


def _percentile(values: Tensor, q: float) -> float:
    return float(torch.quantile(values, q)) if values.numel() else math.nan


class HASTE(Method):
    """HASTE: hashing-based, data-free merging of redundant input channels at inference time.

    ``apply`` replaces the selected convs by :class:`HASTEConv2d` (see the module docstring for the
    selection, the computation and the choices). Training is untouched (plain convs in train mode).
    ``export`` keeps the HASTE convs; ``stats`` reports the cost over the data seen in eval mode.
    """

    name = "haste"
    kind = "efficiency"
    Config = HASTEConfig
    config: HASTEConfig

    contract_config: ClassVar[dict[str, Any]] = {}
    # the bench demo's LeNet-5-Caffe has 5x5 convs only: HASTE replaces conv2 there
    demo_config: ClassVar[dict[str, Any]] = {"kernel_sizes": [5]}

    def __init__(self, *, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._model_macs: float | None = None
        self._layer_macs: float | None = None
        self._skipped = 0
        self._example: Tensor | None = None

    # -- selection --------------------------------------------------------------------------------------
    def _kernel_ok(self, conv: nn.Conv2d) -> bool:
        kh, kw = conv.kernel_size
        if kh != kw:
            return False
        if kh == 1 and self.config.skip_pointwise:
            return False
        sizes = self.config.kernel_sizes
        return kh >= 2 if sizes is None else kh in sizes

    def _candidates(self, model: nn.Module, example: Tensor | None) -> list[tuple[str, nn.Module]]:
        """``(name, conv)`` from the start layer on, in model order, before any filtering by kernel."""
        start = self.config.start_layer
        modules = list(iter_named_modules(model))
        if isinstance(start, str):
            names = [name for name, _ in modules]
            if start not in names:
                convs = [n for n, m in modules if isinstance(m, nn.Conv2d)]
                raise MethodNotApplicableError(
                    f"haste: config field 'start_layer'={start!r} is not a module of {type(model).__name__}; "
                    f"its convs are {convs}"
                )
            first = names.index(start)
            if not isinstance(modules[first][1], nn.Conv2d):
                raise MethodNotApplicableError(
                    f"haste: config field 'start_layer'={start!r} is a {type(modules[first][1]).__name__}, "
                    "not an nn.Conv2d"
                )
            return [(n, m) for n, m in modules[first:] if isinstance(m, nn.Conv2d)]
        try:
            stages = stage_names(model, example)
        except ValueError as exc:
            raise MethodNotApplicableError(f"haste: config field 'start_layer'={start}: {exc}") from exc
        if start > len(stages):
            raise MethodNotApplicableError(
                f"haste: config field 'start_layer'={start}: {type(model).__name__} has stages "
                f"1..{len(stages)}; pass a stage number in that range or a conv name"
            )
        first_name = stages[start - 1][0]
        names = [name for name, _ in modules]
        first = names.index(first_name) if first_name in names else 0
        return [(n, m) for n, m in modules[first:] if isinstance(m, nn.Conv2d)]

    def select(self, model: nn.Module, example: Tensor | None = None) -> list[tuple[str, nn.Conv2d]]:
        """The convs ``apply`` replaces, in model order."""
        chosen: list[tuple[str, nn.Conv2d]] = []
        for name, conv in self._candidates(model, example):
            assert isinstance(conv, nn.Conv2d)
            parts = set(name.split("."))
            if isinstance(conv, HASTEConv2d) or not self._kernel_ok(conv):
                continue
            if not self.config.include_shortcuts and _SHORTCUT_NAMES.intersection(parts):
                continue
            if parametrize.is_parametrized(conv):
                raise MethodNotApplicableError(f"haste: {name}: {unsupported_reason(conv)}")
            if unsupported_reason(conv) is not None:
                continue  # grouped / depthwise convs, other padding modes: left dense (module docstring)
            chosen.append((name, conv))
        if not chosen:
            raise MethodNotApplicableError(
                f"haste: no conv of {type(model).__name__} from start_layer={self.config.start_layer!r} on "
                f"has a kernel in kernel_sizes={self.config.kernel_sizes} (groups=1, zero padding)"
            )
        return chosen

    # -- lifecycle --------------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        cfg = self.config
        chosen = self.select(model, ctx.example_input)
        total, per_module, pixels = _dense_macs(model, ctx.example_input[:1])
        if cfg.min_out_pixels:
            kept = [(n, conv) for n, conv in chosen if pixels.get(id(conv), 0) >= cfg.min_out_pixels]
            self._skipped = len(chosen) - len(kept)
            if not kept:
                raise MethodNotApplicableError(
                    f"haste: config field 'min_out_pixels'={cfg.min_out_pixels} leaves no conv to replace "
                    f"(largest output map: {max(pixels.get(id(c), 0) for _, c in chosen)} pixels)"
                )
            chosen = kept
        self._model_macs = float(total)
        self._layer_macs = float(sum(per_module.get(id(conv), 0) for _, conv in chosen))
        self._example = ctx.example_input[:8].detach().clone()
        stages = self._stages_of(model, ctx.example_input, [name for name, _ in chosen])
        per_layer = self._layer_planes([name for name, _ in chosen])
        planes = cfg.stage_hyperplanes or {}
        for index, (name, conv) in enumerate(chosen):
            layer = HASTEConv2d(
                conv,
                hyperplanes=per_layer.get(name, _stage_value(planes, stages[index], cfg.hyperplanes)),
                sparsity=cfg.sparsity,
                patch=cfg.patch,
                seed=cfg.seed * 1_000_003 + index,
                centre=cfg.centre,
                strict=cfg.hash_test == "strict",
                resample_zero_columns=cfg.resample_zero_columns,
                mode=cfg.mode,
                chunk_mb=cfg.chunk_mb,
                kernel=cfg.kernel,
            )
            layer.stage = stages[index]
            _replace(model, conv, layer)
        return model

    def _layer_planes(self, names: list[str]) -> dict[str, int]:
        """``layer_hyperplanes``, checked to name only convs that ``apply`` replaces."""
        per_layer = self.config.layer_hyperplanes or {}
        unknown = sorted(set(per_layer) - set(names))
        if unknown:
            raise MethodNotApplicableError(
                f"haste: config field 'layer_hyperplanes' names {unknown}, which are not replaced convs; "
                f"allowed names: {names}"
            )
        return dict(per_layer)

    def _stages_of(self, model: nn.Module, example: Tensor, names: list[str]) -> list[int | None]:
        """The stage number (1-based) of each conv in ``names``, ``None`` outside every stage; checks that
        each stage of ``stage_hyperplanes`` holds a replaced conv."""
        per_stage = self.config.stage_hyperplanes
        try:
            stages = stage_names(model, example)
        except ValueError as exc:
            if per_stage:
                raise MethodNotApplicableError(f"haste: config field 'stage_hyperplanes': {exc}") from exc
            return [None] * len(names)
        found = [_stage_number(name, stages) for name in names]
        unknown, present = _missing_stages(found, per_stage or {})
        if unknown:
            raise MethodNotApplicableError(
                f"haste: config field 'stage_hyperplanes' names stage(s) {unknown} with no replaced conv; "
                f"allowed stages: {present}"
            )
        return found

    def export(self, model: nn.Module) -> nn.Module:
        """The model with its cost tallies reset, otherwise unchanged: the HASTE convs *are* the inference
        model (see :func:`remove_haste`), and its cost is counted from here on (:meth:`test_stats`)."""
        for _, layer in haste_layers(model):
            layer.reset_tally()
        return model

    def test_stats(self, model: nn.Module) -> dict[str, float]:
        """:meth:`stats` over the data the exported model has seen (the bench: the test set)."""
        layers = [layer for _, layer in haste_layers(model)]
        if not any(layer.tally.images for layer in layers):
            return {}
        return self.stats(model)

    def stats(self, model: nn.Module) -> dict[str, float]:
        layers = [layer for _, layer in haste_layers(model)]
        if not layers:
            return {}
        if all(layer.tally.images == 0 for layer in layers) and self._example is not None:
            self._run_example(model)
        out = _summarise(layers, self._model_macs, self._layer_macs)
        out["layers_skipped_small"] = float(self._skipped)
        return out

    def _run_example(self, model: nn.Module) -> None:
        assert self._example is not None
        modes = [(m, m.training) for m in model.modules()]
        param = next(model.parameters(), None)
        x = self._example.to(param.device) if param is not None else self._example
        try:
            model.eval()
            with torch.no_grad():
                model(x)
        finally:
            for m, training in modes:
                m.training = training


def _iter_tallies(layers: list[HASTEConv2d]) -> Iterator[_Tally]:
    return (layer.tally for layer in layers)


def _summarise(
    layers: list[HASTEConv2d], model_macs: float | None, layer_macs: float | None
) -> dict[str, float]:
    tallies = list(_iter_tallies(layers))
    seen = [t for t in tallies if t.images > 0]
    out: dict[str, float] = {
        "layers": float(len(layers)),
        "images_seen": float(max((t.images for t in tallies), default=0)),
    }
    if not seen:
        return out
    layer_dense = sum(t.dense / t.images for t in seen)
    layer_needed = sum(t.needed / t.images for t in seen)
    overhead = sum(t.overhead / t.images for t in seen)
    out.update(
        {
            "haste_dense_flops": layer_dense,
            "haste_needed_flops": layer_needed,
            "haste_flops_reduction": 1.0 - layer_needed / layer_dense if layer_dense else 0.0,
            "overhead_flops": overhead,
            "bucket_fraction": sum(t.bucket_fraction for t in seen) / max(1, sum(t.tiles for t in seen)),
        }
    )
    other = 0.0
    dense_total = layer_dense
    if model_macs is not None and layer_macs is not None:
        other = 2.0 * (model_macs - layer_macs)
        dense_total = 2.0 * model_macs
    needed_total = other + layer_needed
    out.update(
        {
            "dense_macs": dense_total / 2.0,
            "dense_flops": dense_total,
            "needed_macs": needed_total / 2.0,
            "needed_flops": needed_total,
            "flops_reduction": 1.0 - needed_total / dense_total if dense_total else 0.0,
            # the reduced convs' saving alone, as a count that leaves hashing and merging out would report
            "flops_reduction_without_overhead": (
                1.0 - (needed_total - overhead) / dense_total if dense_total else 0.0
            ),
        }
    )
    lengths = {t.kept for t in seen}
    if len(seen) == len(tallies) and len(lengths) == 1 and lengths != {0}:
        per_image = other + sum(torch.cat(t.per_image_needed) for t in seen)
        assert isinstance(per_image, Tensor)
        for q in (5, 50, 95):
            out[f"needed_flops_p{q}"] = _percentile(per_image, q / 100.0)
    return out
