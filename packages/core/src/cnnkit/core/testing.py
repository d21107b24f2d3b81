"""cnnkit.core.testing: opt-in pytest helpers for method authors.

Enable the fixtures with ``pytest_plugins = ["cnnkit.core.testing"]`` in a ``conftest.py`` (or
``pytest -p cnnkit.core.testing``). Plain functions work without the plugin::

    import pytest
    from cnnkit.core import create_method
    from cnnkit.core.testing import check_method_contract, registered_method_names

    @pytest.mark.parametrize("name", registered_method_names(distribution="my-dist"))
    def test_contract(name):
        check_method_contract(lambda: create_method(name))

The contract (:func:`check_method_contract`): apply → forward → backward → optimizer step → export on
tiny CNNs; a ``state_dict`` round trip into a freshly built model; determinism under a seed; no NaN or
inf anywhere; ``stats`` returns finite floats; and a generous wall-clock budget that catches hangs (it is
not a speed target: speed lives in benchmarks).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from cnnkit.core.context import Batch, Context
from cnnkit.core.hookspecs import hookimpl
from cnnkit.core.loop import MethodRunner
from cnnkit.core.method import Method, MethodNotApplicableError
from cnnkit.core.specs import ModelSpec

__all__ = [
    "TINY_MODELS",
    "TinyResNet",
    "TinyVGG",
    "check_method_contract",
    "make_context",
    "method_factory",
    "one_torch_thread",
    "registered_method_names",
    "seeded_batch",
]

INPUT_SHAPE = (3, 16, 16)
NUM_CLASSES = 10


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A CIFAR-style ResNet in miniature: 3×3 stem, stages ``layer1..layer3`` (8/16/32 channels, strides
    1/2/2), one BasicBlock each, global average pool, linear classifier."""

    def __init__(self, *, num_classes: int = NUM_CLASSES, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(_BasicBlock(width, 2 * width, 2))
        self.layer3 = nn.Sequential(_BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: torch.Tensor = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return logits


class TinyVGG(nn.Module):
    """A VGG-style CNN in miniature: three conv-BN-ReLU-maxpool stages in ``features``, then a classifier."""

    def __init__(self, *, num_classes: int = NUM_CLASSES, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * 2 * 2, 32), nn.ReLU(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


TINY_MODELS: dict[str, Callable[..., nn.Module]] = {"tiny_resnet": TinyResNet, "tiny_vgg": TinyVGG}


def seeded_batch(
    batch_size: int = 8, shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES, seed: int = 0
) -> Batch:
    """A reproducible ``(x, y)`` batch: standard-normal inputs, uniform labels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *shape), generator=gen)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    return x, y


def make_context(seed: int = 0, batch_size: int = 8, total_steps: int = 4) -> Context:
    """A Context with an example input, two scoring batches and small step/epoch totals."""
    batches = [seeded_batch(batch_size, seed=seed + i) for i in range(2)]
    return Context(
        example_input=batches[0][0], batches=batches, seed=seed, total_steps=total_steps, total_epochs=2
    )


def registered_method_names(distribution: str | None = None, kind: str | None = None) -> list[str]:
    """Installed method names, optionally only those registered by ``distribution`` / of ``kind``."""
    from cnnkit.core.plugins import get_registries

    methods = get_registries().methods
    names = []
    for spec in methods:
        if distribution is not None and not methods.source(spec.name).startswith(f"{distribution} "):
            continue
        if kind is not None and spec.kind != kind:
            continue
        names.append(spec.name)
    return names


def method_factory(name: str, **overrides: Any) -> Callable[[], Method]:
    """A factory for registered method ``name`` with its class's ``contract_config`` and ``overrides``."""
    from cnnkit.core.method import create_method
    from cnnkit.core.plugins import get_registries

    cls = get_registries().methods.get(name).load()
    config = {**getattr(cls, "contract_config", {}), **overrides}
    return lambda: create_method(name, **config)


class TinyModelsPlugin:
    """A plugin object registering the tiny CNNs as models ``tiny_resnet`` and ``tiny_vgg`` (16×16 inputs),
    for tests that drive the bench: ``get_registries().register_plugin(TinyModelsPlugin())``."""

    @hookimpl
    def cnnkit_register_models(self, registry: Any) -> None:
        for name in sorted(TINY_MODELS):
            target = f"{__name__}:{TINY_MODELS[name].__name__}"
            registry.add(
                ModelSpec(name=name, target=target, input_shape=INPUT_SHAPE, summary="test-only CNN")
            )


def check_distribution_plugin(distribution: str, entry_point: str) -> None:
    """The distribution's plugin loads through its entry point in strict mode, reports the installed
    version, and every method it registers can be created with its defaults under its own name."""
    from importlib import metadata

    from cnnkit.core.method import create_method
    from cnnkit.core.plugins import build_registries

    registries = build_registries(strict=True)
    assert not registries.failed, registries.failed
    info = registries.plugins[entry_point]
    assert info.distribution == distribution, info
    assert info.version == metadata.version(distribution)
    for name in registered_method_names(distribution=distribution):
        assert create_method(name).name == name


# -- contract checks ----------------------------------------------------------------------------------
def _seeded_model(make_model: Callable[..., nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make_model()


def _assert_finite(what: str, tensor: torch.Tensor) -> None:
    assert torch.isfinite(tensor).all(), f"{what} contains NaN or inf"


def _train(method: Method, model: nn.Module, steps: int, seed: int) -> tuple[nn.Module, MethodRunner]:
    torch.manual_seed(seed)
    runner = MethodRunner(method, make_context(seed=seed, total_steps=steps))
    model = runner.apply(model)
    groups = runner.param_groups(model, weight_decay=5e-4)
    runner.set_optimizer(torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True))
    for step in range(steps):
        x, y = seeded_batch(seed=seed + 100 + step)
        try:
            loss = runner.train_step(model, x, y)
        except FloatingPointError as exc:
            raise AssertionError(f"training produced NaN or inf: {exc}") from exc
        _assert_finite(f"loss at step {step}", loss)
    runner.end_epoch()
    return model, runner


def _eval_output(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(seeded_batch(seed=999)[0])
    return out


def check_apply_train_export(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], steps: int = 2, seed: int = 0
) -> None:
    """apply → forward/backward/step (``steps`` times) → export; outputs finite; gradients reach weights."""
    model, _ = _train(make_method(), _seeded_model(make_model, seed), steps, seed)
    method = make_method()
    model2 = method.apply(_seeded_model(make_model, seed), make_context(seed=seed))
    x, y = seeded_batch(seed=seed)
    model2.train()
    loss = nn.functional.cross_entropy(model2(x), y) + method.extra_loss(model2, make_context(seed=seed))
    loss.backward()  # type: ignore[no-untyped-call]
    grads = [p.grad for p in model2.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no parameter received a gradient"
    for g in grads:
        if g is not None:
            _assert_finite("a gradient", g)
    trained = _eval_output(model)
    _assert_finite("eval output", trained)
    exported = method_export(make_method, model)
    out = _eval_output(exported)
    _assert_finite("exported model output", out)
    assert out.shape == trained.shape, (
        f"export changed the output shape {tuple(trained.shape)} → {tuple(out.shape)}"
    )
    _check_original_kept(model, trained)


def _check_original_kept(model: nn.Module, before: torch.Tensor) -> None:
    """The original of an exported deep copy still runs and computes ``before`` (e.g. torch's
    ``remove_parametrizations`` on a copy deletes the property from the class it shares with the original)."""
    try:
        after = _eval_output(model)
    except Exception as exc:  # any error here is the failure being checked
        raise AssertionError(f"exporting a deep copy broke the original model: {exc!r}") from exc
    torch.testing.assert_close(
        after, before, rtol=1e-5, atol=1e-6, msg="exporting a deep copy changed the original model's output"
    )


def method_export(make_method: Callable[[], Method], model: nn.Module) -> nn.Module:
    """Export a deep copy of ``model`` with a method of the same configuration (the original is kept)."""
    return make_method().export(copy.deepcopy(model))


def check_export_preserves_output(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], steps: int = 2, seed: int = 0
) -> None:
    """``export`` computes the same eval-mode function (unless the method says otherwise)."""
    method = make_method()
    if not type(method).export_preserves_output:
        return
    model, runner = _train(method, _seeded_model(make_model, seed), steps, seed)
    before = _eval_output(model)
    after = _eval_output(runner.method.export(copy.deepcopy(model)))
    torch.testing.assert_close(
        after, before, rtol=1e-4, atol=1e-5, msg="export changed the model's eval output"
    )


def check_state_dict_roundtrip(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], steps: int = 2, seed: int = 0
) -> None:
    """A trained model's ``state_dict`` loads (strict) into a fresh model the method was applied to, and
    the two compute the same eval output."""
    model, _ = _train(make_method(), _seeded_model(make_model, seed), steps, seed)
    fresh = make_method().apply(_seeded_model(make_model, seed + 1), make_context(seed=seed))
    fresh.load_state_dict(copy.deepcopy(model.state_dict()), strict=True)
    torch.testing.assert_close(
        _eval_output(fresh),
        _eval_output(model),
        rtol=1e-5,
        atol=1e-6,
        msg="state_dict round trip changed the eval output",
    )


def check_determinism(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], steps: int = 2, seed: int = 0
) -> None:
    """Two runs under the same seed give bitwise identical eval outputs."""
    first, _ = _train(make_method(), _seeded_model(make_model, seed), steps, seed)
    second, _ = _train(make_method(), _seeded_model(make_model, seed), steps, seed)
    assert torch.equal(_eval_output(first), _eval_output(second)), "two runs with the same seed differ"


def check_stats(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], steps: int = 1, seed: int = 0
) -> None:
    """``stats`` returns a dict of finite floats keyed by strings."""
    method = make_method()
    model, _ = _train(method, _seeded_model(make_model, seed), steps, seed)
    stats = method.stats(model)
    assert isinstance(stats, dict), f"stats() must return a dict, got {type(stats).__name__}"
    for key, value in stats.items():
        assert isinstance(key, str), f"stats key {key!r} is not a string"
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"stats[{key!r}] is not a number"
        )
        assert torch.isfinite(torch.tensor(float(value))), f"stats[{key!r}] = {value} is not finite"


CONTRACT_CHECKS: dict[str, Callable[..., None]] = {
    "apply_train_export": check_apply_train_export,
    "export_preserves_output": check_export_preserves_output,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "determinism": check_determinism,
    "stats": check_stats,
}


def check_method_contract(
    make_method: Callable[[], Method],
    models: dict[str, Callable[..., nn.Module]] | None = None,
    *,
    time_budget_s: float = 120.0,
) -> None:
    """Run every contract check for the method built by ``make_method`` on each tiny model.

    ``make_method`` must build a fresh, identically configured method on each call. A model the method
    declares itself not applicable to (``MethodNotApplicableError`` from ``apply``, as MoD on a VGG) is
    skipped, as the bench skips such a run; the method must apply to at least one model. ``time_budget_s`` is
    a generous guard against hangs on CPU, not a performance target.
    """
    started = time.perf_counter()
    applied: list[str] = []
    not_applicable: dict[str, str] = {}
    for model_name, make_model in (models or TINY_MODELS).items():
        try:
            _run_checks(make_method, make_model, model_name)
        except MethodNotApplicableError as exc:
            not_applicable[model_name] = str(exc)
            continue
        applied.append(model_name)
    assert applied, f"the method applies to none of the test models: {not_applicable}"
    elapsed = time.perf_counter() - started
    assert elapsed < time_budget_s, f"contract checks took {elapsed:.0f} s (> {time_budget_s:.0f} s) on CPU"


def _run_checks(
    make_method: Callable[[], Method], make_model: Callable[..., nn.Module], model_name: str
) -> None:
    for check_name, check in CONTRACT_CHECKS.items():
        try:
            check(make_method, make_model)
        except AssertionError as exc:
            raise AssertionError(f"contract check {check_name!r} failed on {model_name}: {exc}") from exc


# -- pytest fixtures (active when the plugin is enabled) ------------------------------------------------
@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread inside the block: tiny test models gain nothing from threads, and on a busy
    CPU several spinning OpenMP threads make the same steps many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(params=sorted(TINY_MODELS))
def cnnkit_tiny_model(request: pytest.FixtureRequest) -> nn.Module:
    """Each tiny CNN in turn, seeded."""
    return _seeded_model(TINY_MODELS[request.param], 0)


@pytest.fixture
def cnnkit_batch() -> Batch:
    """A seeded ``(x, y)`` batch of 8 RGB 16×16 inputs."""
    return seeded_batch()


@pytest.fixture
def cnnkit_context() -> Context:
    """A seeded :class:`Context` with two scoring batches."""
    return make_context()


@pytest.fixture
def cnnkit_fresh_registries() -> Iterator[Any]:
    """Rebuilds the process registries for the test and forgets them afterwards."""
    from cnnkit.core.plugins import get_registries, reset_registries

    reset_registries()
    yield get_registries()
    reset_registries()
