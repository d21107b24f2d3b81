"""The example plugin meets cnnkit's method contract (run from the repository's integration tests)."""

from __future__ import annotations

import torch

from cnnkit.core import create_method
from cnnkit.core.testing import TinyResNet, check_method_contract, make_context, method_factory


def test_feature_noise_meets_the_contract() -> None:
    check_method_contract(method_factory("feature_noise"))


def test_noise_only_in_training_and_removed_by_export() -> None:
    method = create_method("feature_noise", sigma=0.5)
    model = method.apply(TinyResNet(), make_context())
    x = make_context().example_input
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    assert method.stats(model) == {"noise_sites": 1.0}
    assert method.stats(method.export(model)) == {"noise_sites": 0.0}
