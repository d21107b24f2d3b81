"""Run configuration: one frozen, validated description of a training run.

A run is keyed by the SHA-256 of its canonical JSON (:meth:`RunConfig.key`), so a sweep that is killed
and restarted finds the runs it already finished. Fields that do not change results (where data lives,
progress bars) are left out of the key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnnkit.core.config import ConfigError

__all__ = ["MethodRef", "OptimizerConfig", "RunConfig", "ScheduleConfig", "parse_method_ref"]

_KEY_EXCLUDE = {"data_root", "download", "progress", "num_workers", "checkpoint_dir"}
_KEY_OMIT_WHEN_DEFAULT = ("cpu_amp", "data_on_device")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MethodRef(_Frozen):
    """A method by registry name plus its config values (validated when the method is created)."""

    name: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)

    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"{self.name}:{args}" if args else self.name


class OptimizerConfig(_Frozen):
    """SGD (momentum, Nesterov) or AdamW."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Frozen):
    """Learning-rate schedule, stepped once per optimizer step.

    ``multistep`` decays by ``gamma`` at ``milestones`` given as fractions of training (0.5 = half-way);
    ``cosine`` anneals to 0; ``onecycle`` is torch's OneCycleLR with ``max_lr = lr``.
    """

    name: Literal["constant", "multistep", "cosine", "onecycle"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _milestones_are_fractions(self) -> ScheduleConfig:
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(
            self.milestones
        ):
            raise ValueError(
                "milestones must be increasing fractions of training in (0, 1), e.g. [0.5, 0.75]"
            )
        return self


class RunConfig(_Frozen):
    """Everything that defines one run.

    Args:
        model, dataset: registry names; ``model_args`` / ``dataset_args`` go to their factories.
        methods: methods applied in order (a :class:`~cnnkit.core.MethodStack` when several).
        seed: seeds torch, the data order and the methods.
        epochs, batch_size, max_steps_per_epoch: the budget (the last caps an epoch, for demos and tests).
        protocol: ``"val"`` = train on 90 %, keep the best-validation checkpoint and evaluate it on test;
            ``"last"`` = train on all training data and evaluate the last epoch on test.
        device: ``"auto"`` picks CUDA when available.
        amp, channels_last: bfloat16 autocast and channels-last memory format, on CUDA; on CPU only with
            ``cpu_amp``.
        cpu_amp: apply ``amp`` and ``channels_last`` on CPU too [opt-in]: 3.1x faster training steps on
            a CPU with native bfloat16 (CIFAR ResNet-18, batch 128, 2 threads of an AVX512-BF16 AMD EPYC:
            0.59 s against 1.85 s); CPUs without it emulate bfloat16 (not measured; expect less or no gain),
            and results differ from float32 at rounding level. Models with a strided 1×1 conv of fewer than
            16 input channels are refused (a oneDNN memory bug, see the trainer).
        data_on_device: read every split once, without augmentation, into one tensor on the run's device
            and replay the dataset's training augmentation (random crop, flip) there per batch, instead of
            decoding and augmenting each image in loader workers every epoch (:mod:`cnnkit.bench.data.
            on_device`) [opt-in: the split must fit in device memory, and the augmentation draws differ
            from torchvision's per-sample ones].
        checkpoint_dir: refused unless ``None``: checkpoints always go to ``STORE/runs/<key>/``, where resume
            finds them.
    """

    model: str = "lenet5_caffe"
    model_args: dict[str, Any] = Field(default_factory=dict)
    dataset: str = "fashion_mnist_mini"
    dataset_args: dict[str, Any] = Field(default_factory=dict)
    methods: tuple[MethodRef, ...] = ()
    seed: int = Field(0, ge=0, lt=2**32)
    epochs: int = Field(1, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    protocol: Literal["val", "last"] = "val"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    cpu_amp: bool = False
    data_on_device: bool = False
    deterministic: bool = True
    measure_latency: bool = True
    data_root: str | None = None
    download: bool = False
    num_workers: int = Field(0, ge=0, le=64)
    progress: bool = True
    checkpoint_dir: None = None  # kept (always None) so stored configs still validate; see the validator

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _checkpoint_dir_is_not_supported(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "not supported: checkpoints are written to STORE/runs/<key>/; choose STORE with --store"
            )
        return None

    def key(self) -> str:
        """SHA-256 of the fields that define the result (hex, 16 chars)."""
        payload = self.model_dump(mode="json", exclude=_KEY_EXCLUDE)
        for name in _KEY_OMIT_WHEN_DEFAULT:  # fields added later: earlier runs keep their keys (and resume)
            if payload[name] == RunConfig.model_fields[name].default:
                del payload[name]
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def method_label(self) -> str:
        return "+".join(m.label() for m in self.methods) or "baseline"


def parse_method_ref(text: str) -> MethodRef:
    """Parse ``"swd:p=0.1,variant=1d"`` (values parsed as JSON when possible, else kept as strings)."""
    name, _, args = text.partition(":")
    if not name.strip():
        raise ConfigError(
            "--method",
            [(repr(text), "the method name is empty; expected NAME[:key=value,...], e.g. swd:p=0.1")],
        )
    config: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_top_level(args))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method {name!r}", [(item, "expected key=value, e.g. swd:p=0.1,variant=1d")])
        config[key.strip()] = _parse_value(raw.strip())
    return MethodRef(name=name.strip(), config=config)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so ``stages=[3,4],p=0.1`` gives two items."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += int(char in "[{(") - int(char in "]})")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        lowered = raw.lower()
        if lowered in {"true", "false"}:
            return lowered == "true"
        return raw
