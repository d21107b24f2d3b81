"""The trainer: learns, is deterministic on CPU, resumes exactly, stops on NaN, drives method events."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from cnnkit.bench import trainer as trainer_module
from cnnkit.bench.runconfig import RunConfig
from cnnkit.bench.sweep import make_run_config
from cnnkit.bench.trainer import RunFailed, Trainer, build_datasets, run
from cnnkit.core import Context, Method, MethodSpec, hookimpl


class CountingMethod(Method):
    """Counts events, and keeps a counter as method state (checkpointed)."""

    name = "counting"
    kind = "regularizer"
    calls: ClassVar[dict[str, int]] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epochs_seen = 0
        self.exported_images = 0

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        assert ctx.total_steps is not None and ctx.batches is not None
        x, _ = next(iter(ctx.batches))
        assert x.shape[1:] == (3, 16, 16)
        CountingMethod.calls["apply"] = CountingMethod.calls.get("apply", 0) + 1
        return model

    def after_step(self, ctx: Context) -> None:
        CountingMethod.calls["after_step"] = CountingMethod.calls.get("after_step", 0) + 1

    def after_epoch(self, ctx: Context) -> None:
        self.epochs_seen += 1

    def stats(self, model: nn.Module) -> dict[str, float]:
        return {"epochs_seen": float(self.epochs_seen), "images_seen": -1.0}

    def export(self, model: nn.Module) -> nn.Module:
        self.exported_images = 0

        def count(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.exported_images += len(args[0])

        model.register_forward_pre_hook(count)
        return model

    def test_stats(self, model: nn.Module) -> dict[str, float]:
        return {"images_seen": float(self.exported_images)}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_seen = state["epochs_seen"]


class Exploding(Method):
    """Adds a NaN to the loss from the third step on (a diverging run)."""

    name = "exploding"
    kind = "regularizer"

    def extra_loss(self, model: nn.Module, ctx: Context) -> torch.Tensor | float:
        return float("nan") if ctx.step >= 2 else 0.0


class Phased(Method):
    """Enters phase 1 after its second epoch and then wipes the model (like a drastic pruning round)."""

    name = "phased"
    kind = "regularizer"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epochs_seen = 0
        self.model: nn.Module | None = None

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self.model = model
        return model

    def after_epoch(self, ctx: Context) -> None:
        self.epochs_seen += 1
        if self.epochs_seen >= 2 and self.model is not None:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.zero_()

    def checkpoint_phase(self) -> int:
        return int(self.epochs_seen >= 2)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_seen = state["epochs_seen"]


class Probe(Method):
    """Records, in training steps, the first conv's output dtype and whether its input and weight are
    channels-last (the trainer's conversions; the output's layout is the conv backend's choice)."""

    name = "probe"
    kind = "regularizer"
    seen: ClassVar[set[tuple[torch.dtype, tuple[bool, ...]]]] = set()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))

        def record(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            if module.training:
                layouts = tuple(
                    t.is_contiguous(memory_format=torch.channels_last) for t in (args[0], module.weight)
                )
                Probe.seen.add((out.dtype, layouts))

        conv.register_forward_hook(record)
        return model


class _Plugin:
    @hookimpl
    def cnnkit_register_methods(self, registry: Any) -> None:
        registry.add(MethodSpec(name="phased", kind="regularizer", target=f"{__name__}:Phased"))
        registry.add(MethodSpec(name="counting", kind="regularizer", target=f"{__name__}:CountingMethod"))
        registry.add(MethodSpec(name="exploding", kind="regularizer", target=f"{__name__}:Exploding"))
        registry.add(MethodSpec(name="probe", kind="regularizer", target=f"{__name__}:Probe"))


@pytest.fixture
def with_counting(registries: Any) -> Any:
    registries.register_plugin(_Plugin())
    CountingMethod.calls.clear()
    return registries


def test_best_checkpoint_comes_from_the_methods_latest_phase(
    with_counting: Any, tiny_run: dict[str, Any]
) -> None:
    metrics = run(make_run_config({**tiny_run, "epochs": 3, "methods": ["phased"]}))
    # epoch 1 (a trained model) beats the wiped model of epochs 2-3 on validation, but belongs to phase 0
    assert metrics["best_epoch"] >= 2
    assert metrics["test_top1"] <= 30.0  # the wiped model was evaluated, not epoch 1's


def test_training_learns_and_reports_metrics(registries: Any, tiny_run: dict[str, Any]) -> None:
    metrics = run(make_run_config({**tiny_run, "epochs": 3}))
    assert metrics["test_top1"] > 30.0  # 10 classes: chance is 10 %
    assert metrics["params_total"] == sum(
        p.numel() for p in trainer_module.build_model(make_run_config(tiny_run)).parameters()
    )
    assert metrics["macs"] > 0 and metrics["epochs"] == 3 and metrics["best_epoch"] >= 1
    assert metrics["steps"] == 3 * 6  # 90 % of 192 = 172 samples, batch 32 → 6 steps per epoch


def test_test_stats_cover_exactly_the_test_set(with_counting: Any, tiny_run: dict[str, Any]) -> None:
    cfg = make_run_config({**tiny_run, "epochs": 1, "methods": ["counting"]})
    metrics = run(cfg)
    test_size = len(build_datasets(cfg)["test"])  # type: ignore[arg-type]
    assert metrics["method.images_seen"] == test_size > 0  # test_stats replaced the pre-test value
    assert metrics["method.epochs_seen"] == 1.0


@pytest.mark.parametrize(
    ("cpu_amp", "expected"),
    [(False, (torch.float32, (False, False))), (True, (torch.bfloat16, (True, True)))],
)
def test_cpu_amp_trains_in_bfloat16_and_channels_last(
    with_counting: Any,
    tiny_run: dict[str, Any],
    cpu_amp: bool,
    expected: tuple[torch.dtype, tuple[bool, ...]],
) -> None:
    Probe.seen.clear()
    wide = {"model_args": {"width": 16}}  # the default width's 8-channel strided 1x1 conv is refused (below)
    cfg = {**tiny_run, **wide, "epochs": 3, "methods": ["probe"], "cpu_amp": cpu_amp}
    metrics = run(make_run_config(cfg))
    assert Probe.seen == {expected}
    assert metrics["test_top1"] > 30.0  # it still learns (chance: 10 %)


def test_cpu_amp_refuses_a_model_whose_backward_would_corrupt_memory(
    registries: Any, tiny_run: dict[str, Any]
) -> None:
    with pytest.raises(RunFailed, match=r"cpu_amp.*'layer2\.0\.shortcut\.0'.*8 input channels.*#6035"):
        run(make_run_config({**tiny_run, "cpu_amp": True}))


def test_cpu_runs_are_deterministic(registries: Any, tiny_run: dict[str, Any]) -> None:
    cfg = make_run_config(tiny_run)
    first, second = run(cfg), run(cfg)
    for key in ("test_top1", "test_loss", "train_loss", "best_val_top1"):
        assert first[key] == second[key], key


def test_resume_after_a_kill_gives_the_same_result(
    registries: Any, tiny_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_run_config({**tiny_run, "epochs": 3})
    straight = Trainer(cfg, tmp_path / "straight")
    expected = straight.fit()

    original = Trainer._train_epoch
    calls = {"n": 0}

    def killed_after_two_epochs(self: Trainer) -> None:
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "killed").fit()
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    resumed = Trainer(cfg, tmp_path / "killed")
    metrics = resumed.fit()
    for key in ("test_top1", "test_loss", "best_val_top1", "best_epoch", "steps"):
        assert metrics[key] == expected[key], key
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_checkpoint_of_another_config_is_refused(
    registries: Any, tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    Trainer(make_run_config({**tiny_run, "epochs": 1}), tmp_path).fit()
    with pytest.raises(RunFailed, match="another configuration"):
        Trainer(make_run_config({**tiny_run, "epochs": 1, "seed": 5}), tmp_path).fit()


def test_non_finite_loss_stops_with_a_clear_message(with_counting: Any, tiny_run: dict[str, Any]) -> None:
    with pytest.raises(RunFailed, match=r"loss became nan at epoch 1, step 2"):
        run(make_run_config({**tiny_run, "methods": ["exploding"]}))


def test_method_events_and_state_are_driven(
    with_counting: Any, tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    metrics = run(make_run_config({**tiny_run, "methods": ["counting"]}), tmp_path)
    assert CountingMethod.calls == {"apply": 1, "after_step": 12}
    assert metrics["method.epochs_seen"] == 2.0
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert blob["method"] == {"0": {"epochs_seen": 2}}


@pytest.mark.parametrize("schedule", ["constant", "multistep", "cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_optimizer_and_schedule_trains(
    registries: Any, tiny_run: dict[str, Any], schedule: str, optimizer: str
) -> None:
    lr = 0.05 if optimizer == "sgd" else 3e-3
    cfg = make_run_config(
        {
            **tiny_run,
            "epochs": 1,
            "schedule": {"name": schedule},
            "optimizer": {"name": optimizer, "lr": lr, "nesterov": True},
        }
    )
    metrics = run(cfg)
    assert metrics["train_loss"] < 2.5


def test_protocol_last_uses_all_training_data(registries: Any, tiny_run: dict[str, Any]) -> None:
    metrics = run(make_run_config({**tiny_run, "protocol": "last", "epochs": 1}))
    assert metrics["best_val_top1"] is None and metrics["steps"] == 6  # 192 / 32


def test_cuda_request_without_cuda_is_a_clear_error(registries: Any, tiny_run: dict[str, Any]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RunFailed, match="CUDA is not available"):
        run(make_run_config({**tiny_run, "device": "cuda"}))


def test_latency_and_throughput_are_measured(registries: Any, tiny_run: dict[str, Any]) -> None:
    metrics = run(RunConfig(**{**tiny_run, "epochs": 1, "measure_latency": True, "max_steps_per_epoch": 1}))
    for key in (
        "cpu_latency_ms_b1",
        "cpu_latency_ms_b64",
        "cpu_throughput",
        "train_samples_per_s",
        "peak_memory_mb",
    ):
        assert metrics[key] > 0, key
    assert metrics["cpu_latency_ms_b64"] > metrics["cpu_latency_ms_b1"]
    assert ("gpu_latency_ms_b1" in metrics) == torch.cuda.is_available()
    assert metrics["val_top1"] == metrics["best_val_top1"] and metrics["val_top5"] >= metrics["val_top1"]
