"""cnnkit-bench's plugin: registers the bench's models, datasets and metrics (specs only, no torch)."""

from __future__ import annotations

from typing import Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.specs import MetricSpec

_METRICS = (
    MetricSpec(
        name="test_top1", target="cnnkit.bench.trainer:Trainer", unit="%", summary="Top-1 test accuracy."
    ),
    MetricSpec(
        name="test_top5", target="cnnkit.bench.trainer:Trainer", unit="%", summary="Top-5 test accuracy."
    ),
    MetricSpec(
        name="test_loss",
        target="cnnkit.bench.trainer:Trainer",
        higher_is_better=False,
        summary="Mean test cross-entropy.",
    ),
    MetricSpec(
        name="cpu_latency_ms_b1",
        target="cnnkit.bench.trainer:measure_latency",
        unit="ms",
        higher_is_better=False,
        summary="Median CPU latency at batch 1 (also _b64, and gpu_* on CUDA runs).",
    ),
    MetricSpec(
        name="train_samples_per_s",
        target="cnnkit.bench.trainer:Trainer",
        unit="img/s",
        summary="Training throughput: samples per second over the training steps.",
    ),
    MetricSpec(
        name="peak_memory_mb",
        target="cnnkit.bench.trainer:peak_memory_mb",
        unit="MiB",
        higher_is_better=False,
        summary="Peak memory (CUDA allocator, else process max RSS).",
    ),
    MetricSpec(
        name="wall_time_s",
        target="cnnkit.bench.trainer:run",
        unit="s",
        higher_is_better=False,
        summary="Wall time of the whole run.",
    ),
)


@hookimpl
def cnnkit_register_models(registry: Any) -> None:
    from cnnkit.bench._model_specs import MODEL_SPECS

    for spec in MODEL_SPECS:
        registry.add(spec)


@hookimpl
def cnnkit_register_datasets(registry: Any) -> None:
    from cnnkit.bench._dataset_specs import DATASET_SPECS

    for spec in DATASET_SPECS:
        registry.add(spec)


@hookimpl
def cnnkit_register_metrics(registry: Any) -> None:
    for spec in _METRICS:
        registry.add(spec)
