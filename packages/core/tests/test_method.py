"""The Method lifecycle: config validation, create_method, MethodStack, MethodRunner, Context."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import pytest
import torch
from pydantic import Field
from torch import nn

from cnnkit.core import (
    ConfigError,
    Context,
    IncompatibleMethodsError,
    Method,
    MethodConfig,
    MethodRunner,
    MethodSpec,
    MethodStack,
    build_param_groups,
    create_method,
    hookimpl,
)
from cnnkit.core.plugins import get_registries, reset_registries
from cnnkit.core.registry import UnknownNameError
from cnnkit.core.testing import TinyResNet, make_context, seeded_batch

EVENTS: list[str] = []


class Recorder(Method):
    """Records every event it receives; adds ``weight · Σθ²`` as extra loss."""

    name = "recorder"
    kind = "regularizer"

    class Config(MethodConfig):
        weight: float = Field(0.0, ge=0.0, le=1.0, description="L2 weight")
        tag: Literal["a", "b"] = "a"

    config: Config

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        EVENTS.append(f"{self.config.tag}:apply")
        return model

    def before_step(self, ctx: Context) -> None:
        EVENTS.append(f"{self.config.tag}:before_step@{ctx.step}")

    def extra_loss(self, model: nn.Module, ctx: Context) -> torch.Tensor | float:
        EVENTS.append(f"{self.config.tag}:extra_loss")
        return self.config.weight * sum(p.pow(2).sum() for p in model.parameters())

    def after_backward(self, ctx: Context) -> None:
        EVENTS.append(f"{self.config.tag}:after_backward")

    def after_step(self, ctx: Context) -> None:
        EVENTS.append(f"{self.config.tag}:after_step@{ctx.step}")

    def after_epoch(self, ctx: Context) -> None:
        EVENTS.append(f"{self.config.tag}:after_epoch@{ctx.epoch}")

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"weight": self.config.weight}

    def test_stats(self, model: nn.Module) -> dict[str, float]:
        return {"seen": float(self.config.weight > 0)}


class Pruner(Method):
    name = "fake_pruner"
    kind = "pruner"
    conflicts: ClassVar[frozenset[str]] = frozenset({"kind:pruner"})


class OtherPruner(Pruner):
    name = "other_pruner"


class NoDecay(Method):
    """Puts every BatchNorm parameter in a group without weight decay."""

    name = "nodecay"
    kind = "regularizer"

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
        return [{"params": params, "weight_decay": 0.0}]


@pytest.fixture
def registered() -> Iterator[None]:
    class Plugin:
        @hookimpl
        def cnnkit_register_methods(self, registry: Any) -> None:
            registry.add(MethodSpec(name="recorder", kind="regularizer", target=f"{__name__}:Recorder"))
            registry.add(MethodSpec(name="mislabelled", kind="pruner", target=f"{__name__}:Recorder"))
            registry.add(MethodSpec(name="notamethod", kind="pruner", target="collections:OrderedDict"))

    reset_registries()
    get_registries().register_plugin(Plugin())
    yield
    reset_registries()


def test_config_defaults_and_keyword_construction() -> None:
    assert Recorder().config.weight == 0.0
    assert Recorder(weight=0.5).config.weight == 0.5
    assert Recorder(config=Recorder.Config(tag="b")).config.tag == "b"
    assert Recorder(config=Recorder.Config(tag="b"), weight=0.3).config == Recorder.Config(
        tag="b", weight=0.3
    )


def test_bad_value_names_the_field_and_the_allowed_range() -> None:
    with pytest.raises(ConfigError) as info:
        Recorder(weight=1.5)
    text = str(info.value)
    assert "weight" in text and "0.0 <= weight <= 1.0" in text and "1.5" in text
    assert info.value.errors[0][0] == "weight"


def test_bad_choice_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"tag.*one of 'a', 'b'"):
        Recorder(tag="c")


def test_unknown_field_lists_the_allowed_fields() -> None:
    with pytest.raises(ConfigError, match=r"wieght: unknown field; allowed fields: weight, tag"):
        Recorder(wieght=0.1)


def test_config_is_frozen_and_schema_printable() -> None:
    config = Recorder.Config()
    with pytest.raises(Exception, match="frozen"):
        config.weight = 0.2  # type: ignore[misc]
    schema = Recorder.Config.model_json_schema()
    assert schema["properties"]["weight"]["maximum"] == 1.0


def test_create_method_by_name_validates(registered: None) -> None:
    method = create_method("recorder", weight=0.25)
    assert isinstance(method, Recorder) and method.config.weight == 0.25
    with pytest.raises(ConfigError, match="weight"):
        create_method("recorder", weight=-1)


def test_create_method_unknown_name_suggests(registered: None) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'recorder'"):
        create_method("recordr")


def test_create_method_checks_the_target(registered: None) -> None:
    with pytest.raises(TypeError, match="not a cnnkit.core.Method subclass"):
        create_method("notamethod")
    with pytest.raises(TypeError, match="must agree"):
        create_method("mislabelled")


def test_stack_applies_and_dispatches_in_order() -> None:
    EVENTS.clear()
    stack = MethodStack([Recorder(tag="a"), Recorder(tag="b")])
    Recorder.allow_multiple = True
    try:
        stack.apply(nn.Linear(2, 2), make_context())
    finally:
        Recorder.allow_multiple = False
    stack.before_step(make_context())
    assert EVENTS == ["a:apply", "b:apply", "a:before_step@0", "b:before_step@0"]


def test_stack_sums_extra_losses_and_merges_stats() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    stack = MethodStack([Recorder(weight=0.5), NoDecay()])
    assert float(torch.as_tensor(stack.extra_loss(model, make_context())).detach()) == pytest.approx(1.0)
    assert stack.stats(model) == {"weight": 0.5}
    assert stack.test_stats(model) == {"seen": 1.0}
    assert NoDecay().test_stats(model) == {}  # the default: nothing data-dependent


def test_stack_rejects_conflicting_methods_at_apply() -> None:
    with pytest.raises(IncompatibleMethodsError, match="fake_pruner.*other_pruner"):
        MethodStack([Pruner(), OtherPruner()]).apply(nn.Linear(2, 2), make_context())
    with pytest.raises(IncompatibleMethodsError, match="twice"):
        MethodStack([Recorder(), Recorder()]).apply(nn.Linear(2, 2), make_context())


def test_stack_rejects_non_methods() -> None:
    with pytest.raises(TypeError, match="Method instances"):
        MethodStack([Recorder(), "swd"])  # type: ignore[list-item]


def test_param_groups_route_special_parameters() -> None:
    model = TinyResNet()
    groups = build_param_groups(model, [NoDecay()], weight_decay=5e-4)
    default, special = groups
    assert default["weight_decay"] == 5e-4 and special["weight_decay"] == 0.0
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in special["params"]) == n_bn
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="claimed by two"):
        build_param_groups(model, [NoDecay(), NoDecay()])


def test_runner_drives_events_in_order_and_counts() -> None:
    EVENTS.clear()
    model = TinyResNet()
    runner = MethodRunner(Recorder(weight=0.01), make_context())
    model = runner.apply(model)
    assert runner.ctx.model is model
    runner.set_optimizer(torch.optim.SGD(runner.param_groups(model), lr=0.01))
    for _ in range(2):
        x, y = seeded_batch()
        runner.train_step(model, x, y)
    runner.end_epoch()
    assert EVENTS == [
        "a:apply",
        "a:before_step@0",
        "a:extra_loss",
        "a:after_backward",
        "a:after_step@0",
        "a:before_step@1",
        "a:extra_loss",
        "a:after_backward",
        "a:after_step@1",
        "a:after_epoch@0",
    ]
    assert runner.ctx.step == 2 and runner.ctx.epoch == 1


def test_runner_includes_the_extra_loss() -> None:
    model = TinyResNet()
    x, y = seeded_batch()
    plain = MethodRunner(Recorder(weight=0.0), make_context()).loss(model, model(x), y)
    heavy = MethodRunner(Recorder(weight=0.1), make_context()).loss(model, model(x), y)
    l2 = sum(p.pow(2).sum() for p in model.parameters())
    torch.testing.assert_close(heavy - plain, 0.1 * l2)


def test_runner_stops_on_non_finite_loss() -> None:
    model = TinyResNet()
    ctx = make_context()
    ctx.loss_fn = lambda out, y: out.sum() * float("nan")
    runner = MethodRunner(Recorder(), ctx)
    runner.set_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(FloatingPointError, match="nan"):
        runner.train_step(model, *seeded_batch())


def test_runner_needs_an_optimizer() -> None:
    with pytest.raises(RuntimeError, match="set_optimizer"):
        MethodRunner(Recorder(), make_context()).train_step(TinyResNet(), *seeded_batch())


def test_context_validates_and_defaults() -> None:
    x = torch.zeros(1, 3, 8, 8)
    ctx = Context(example_input=x)
    assert ctx.device == x.device and isinstance(ctx.loss_fn, nn.CrossEntropyLoss)
    assert ctx.step == 0 and ctx.optimizer is None and ctx.batches is None
    with pytest.raises(TypeError, match="example_input"):
        Context(example_input=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        Context(example_input=x, total_steps=0)
    with pytest.raises(ValueError, match=r"Context\.batches is None"):
        ctx.scoring_batches()
    seeded = Context(example_input=x, seed=3)
    assert torch.equal(
        torch.randn(2, generator=seeded.generator(offset=1)),
        torch.randn(2, generator=torch.Generator().manual_seed(4)),
    )


class _Rounds(Method):
    name = "rounds"

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds

    def checkpoint_phase(self) -> int:
        return self.rounds


def test_checkpoint_phase_defaults_to_zero_and_a_stack_changes_when_any_member_does() -> None:
    assert Method().checkpoint_phase() == 0
    a, b = _Rounds(0), _Rounds(0)
    stack = MethodStack([a, b])
    seen = [stack.checkpoint_phase()]
    a.rounds = 1
    seen.append(stack.checkpoint_phase())
    b.rounds = 1
    seen.append(stack.checkpoint_phase())
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("name", [dict, None, 3, nn.Linear])
def test_create_method_refuses_what_is_neither_a_name_nor_a_method_class(name: Any) -> None:
    with pytest.raises(TypeError, match=r"registry name \(str\) or a cnnkit\.core\.Method subclass, got"):
        create_method(name)
