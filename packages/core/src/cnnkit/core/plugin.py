"""cnnkit-core's own plugin: registers the cost metrics every run can report."""

from __future__ import annotations

from typing import Any

from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.specs import MetricSpec


@hookimpl
def cnnkit_register_metrics(registry: Any) -> None:
    registry.add(
        MetricSpec(
            name="params",
            target="cnnkit.core.cost:count_params",
            unit="params",
            higher_is_better=False,
            summary="Parameters: total, non-zero, trainable.",
        )
    )
    registry.add(
        MetricSpec(
            name="macs",
            target="cnnkit.core.cost:count_flops",
            unit="MAC",
            higher_is_better=False,
            summary="Multiply-accumulates of one forward pass (dense and sparsity-aware effective).",
        )
    )
