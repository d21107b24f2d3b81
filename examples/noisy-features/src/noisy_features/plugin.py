"""Table of contents of this plugin: imports only cnnkit.core; the method is named by a string."""

from __future__ import annotations

from typing import Any

from cnnkit.core import MethodSpec, hookimpl


@hookimpl
def cnnkit_register_methods(registry: Any) -> None:
    registry.add(
        MethodSpec(
            name="feature_noise",
            kind="regularizer",
            target="noisy_features.method:FeatureNoise",
            summary="Gaussian noise on stage outputs during training (example plugin).",
            tags=("example",),
        )
    )
