"""Every test of this package runs with one torch thread (tiny models; CI has 2 busy cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cnnkit.core.testing import one_torch_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield
