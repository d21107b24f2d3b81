"""FreezeNet: train a few weights chosen at initialization, freeze the rest at their seeded initial values.

Paper: P. Wimmer, J. Mehnert, A. Condurache, "FreezeNet: Full Performance by Reduced Storage Costs", ACCV 2020
(LNCS 12627, pp. 685–701), arXiv 2011.14087. Only the abstract and page 1 of the supplement could be read
(METHODS.md §11); what follows is METHODS.md §11 and §1.8.

Computation (METHODS.md §11a–b)
-------------------------------
1. seed → θ₀: the model is re-initialised from FreezeNet's own 32-bit ``seed`` (see "Initial weights").
2. ``g = Σ_b ∂L_b/∂θ`` on ``batches`` training mini-batches of ``ctx.batches`` at θ₀ (one by default: "a
   single forward and backward pass"), ``L = ctx.loss_fn``.
3. score ``S = |θ₀ ⊙ g|`` (``score="snip"``: SNIP's criterion, "since we share its feature selection"
   [choice]) or ``S = |g|`` (``score="grad"`` [choice]).
4. ``m`` = exact top-k of ``S`` with ``k = ⌈(1 − q)·N⌉`` over all maskable weights (``scope="global"``) or per
   layer; ``q = sparsity`` is the *freezing rate* (ties broken by position, :mod:`cnnkit.pruning._base`).
5. training runs on ``w = m⊙θ + (1 − m)⊙θ₀`` (core's ``freeze`` mask, :mod:`cnnkit.core.masks`): frozen
   entries are **never zeroed** and stay bit-identical to θ₀ under any optimizer, momentum and (coupled or
   decoupled) weight decay -- the effective weight does not depend on θ there, gradients are masked, and
   ``after_step`` re-imposes θ₀ on the raw tensor (METHODS.md §1.8's safety net).
6. storage: :func:`compact_state` keeps the seed, the packed mask bits, the trained values and the dense
   non-maskable tensors; :func:`load_compact_state` regenerates θ₀ from the seed and scatters the trained
   values back, reproducing the model bit for bit.

Initial weights [choice]
------------------------
θ₀ must be regenerable from the seed alone, so FreezeNet re-initialises the whole model at ``apply``: every
module's own ``reset_parameters()`` (PyTorch's default init of that layer; BN: γ = 1, β = 0 and fresh running
statistics), in ``model.modules()`` order, with the CPU default generator seeded by ``seed`` (on a CPU copy
when the model lives elsewhere: GPU RNG streams are not portable, METHODS.md §11h ``rng``). The global RNG
state is restored afterwards. The initial weights of a FreezeNet run are thus FreezeNet's, as in the paper,
not those of the model's constructor (a model whose constructor applies a custom init, e.g. He init in the
bench's ResNets, starts from the layers' default init instead). The seed is the config's ``seed``; by default
it is derived from the run's seed, ``(ctx.seed + 15_485_863) mod 2³²`` (a random 32-bit seed when ``ctx.seed``
is None). It is stored in every mask's ``seed`` buffer.

Choices where the paper is silent (METHODS.md §11h), all config options
-----------------------------------------------------------------------
* ``score="snip"``, ``scope="global"``, ``batches=1``, ``scoring_mode="train"``.
* ``train_bias_bn=True``: biases and BN affine parameters are dense and trained (METHODS.md §11d–e). With
  ``False`` every parameter other than the masked weights (biases, BN, interspace bases) is frozen at its
  seeded value too (``requires_grad=False``) and not stored -- except a parameter of a module without
  ``reset_parameters``, which the seed does not regenerate: the compact state stores it.
* ``frozen_weight_decay=False``: frozen entries stay θ₀. ``True`` is our reading of "FreezeNet-WD" (only the
  name is known): the weight decay of the optimizer group also shrinks the frozen entries,
  ``θ₀·∏_t (1 − η_t·λ)`` (``η_t`` the group's learning rate of step ``t``, ``λ`` its ``weight_decay``),
  applied after each optimizer step. The product is kept per tensor as one float64 scalar and the frozen
  values are recomputed as ``(θ₀ in float64 · scalar)`` rounded to the weight's dtype, so they stay
  reproducible from the seed plus one scalar per tensor (stored in the compact state and in
  :meth:`FreezeNet.state_dict`).
* ``reinit_after_mask`` is not supported (the training start *is* the seeded θ₀).
* Interspace (``interspace=True``, :mod:`cnnkit.pruning.interspace`): the seeded model is converted to the
  interspace representation before scoring, so the score and the freeze mask act on the coefficients ``Λ``
  and the frozen background is ``Λ₀ = W₀F₀ᵀ`` -- still a function of the seed (and of ``basis_init``, which
  the compact state records); the bases are dense, trained (``train_basis``) and stored like biases.

Accounting (METHODS.md §1.8, §15): ``stats`` adds to the pruners' keys ``trained_params`` (D: kept weights
plus every other trained parameter), ``dense_params`` (N), ``stored_params`` (D + 1 seed),
``compression_factor = N / stored_params`` (all parameters), ``compression_factor_weights`` = maskable
weights / trained weights (the paper's "×157 fewer trained parameters" counts weights: METHODS.md §11f) and
``frozen_fraction`` (= ``q``). The compact state additionally stores ⌈N_l/8⌉ mask bytes per tensor.

Limitations: FreezeNet must be applied before methods that reparametrize the maskable weights (it raises if
a target is already parametrized), since it re-initialises the plain parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cnnkit.core.context import Batch, Context
from cnnkit.core.masks import apply_mask, get_weight_mask, masked_modules
from cnnkit.pruning._base import DataPrunerConfig, ScoredPruner, drt_stats, scoring_batches
from cnnkit.pruning.interspace import interspace_modules, prepare_interspace, to_interspace
from cnnkit.pruning.scores import snip_scores

__all__ = [
    "COMPACT_FORMAT",
    "FreezeNet",
    "compact_nbytes",
    "compact_state",
    "grad_scores",
    "load_compact_state",
    "pack_mask",
    "regenerate",
    "unpack_mask",
]

COMPACT_FORMAT = "cnnkit.freezenet.compact/1"
_SEED_OFFSET = 15_485_863
_SEED_SPACE = 2**32
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


# --------------------------------------------------------------------------------------------- seeded init


@contextmanager
def _cpu_rng(seed: int) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _reset_all(model: nn.Module) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))


def regenerate(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``model`` in place from ``seed``: every module's ``reset_parameters()`` in model order,
    drawn from the CPU default generator seeded with ``seed`` (the global RNG state is restored).

    A model that is not on the CPU is re-initialised on a CPU copy whose values are copied back, so θ₀ does
    not depend on the device. Returns ``model``.

    Raises:
        ValueError: ``seed`` is not in [0, 2³²), or a weight is parametrized (re-initialising would miss it).
    """
    _check_seed(seed)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise ValueError(
                f"cannot regenerate initial weights: module {name!r} is parametrized "
                "(apply FreezeNet before methods that reparametrize or mask weights)"
            )
    if _on_cpu(model):
        with _cpu_rng(seed):
            _reset_all(model)
        return model
    work = copy.deepcopy(model).cpu()
    with _cpu_rng(seed):
        _reset_all(work)
    target = model.state_dict()
    with torch.no_grad():
        for key, value in work.state_dict().items():
            target[key].copy_(value)
    return model


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_SPACE:
        raise ValueError(f"seed must be a 32-bit unsigned int (0 <= seed < 2**32); got {seed!r}")


# --------------------------------------------------------------------------------------------- scores


def grad_scores(
    model: nn.Module, names: Sequence[str], batches: Iterable[Batch], loss_fn: Any
) -> dict[str, Tensor]:
    """``|Σ_b ∂L_b/∂θ|`` per named module (``model`` in the mode the caller set)."""
    weights = [cast(Tensor, model.get_submodule(n).weight) for n in names]
    for w in weights:
        w.requires_grad_(True)
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model(x), y), weights, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g)
    return {n: g.abs() for n, g in zip(names, total, strict=True)}


# --------------------------------------------------------------------------------------------- mask bits


def pack_mask(mask: Tensor) -> Tensor:
    """The flattened boolean ``mask`` as uint8 bytes, 8 entries per byte, most significant bit first."""
    flat = mask.detach().reshape(-1).bool().cpu()
    pad = (-flat.numel()) % 8
    bits = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.int32)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32)
    return (bits * weights).sum(1).to(torch.uint8)


def unpack_mask(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`pack_mask`: a boolean tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= int(d)
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(
            f"packed mask must be {(n + 7) // 8} uint8 bytes for shape {tuple(shape)}; "
            f"got {packed.numel()} of {packed.dtype}"
        )
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32)
    bits = (packed.to(torch.int32)[:, None] & weights) != 0
    return bits.reshape(-1)[:n].reshape(tuple(int(d) for d in shape))


# --------------------------------------------------------------------------------------------- compact state


def _freeze_masks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(module name, module)`` of every freeze-mode, seeded ``weight`` mask (model order)."""
    found = []
    for name, module, tensor_name in masked_modules(model):
        wm = get_weight_mask(module, tensor_name)
        if wm is None or wm.mode != "freeze" or wm.seed_value is None or tensor_name != "weight":
            raise ValueError(
                f"compact_state needs FreezeNet's seeded freeze masks on weights; {name}.{tensor_name} is "
                f"{'not one' if wm is None else f'mode={wm.mode!r}, seed={wm.seed_value}'}"
            )
        found.append((name, module))
    if not found:
        raise ValueError("compact_state: the model has no FreezeNet masks (apply FreezeNet first)")
    return found


def _original(module: nn.Module) -> Tensor:
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists["weight"]).original


def _mask_prefix(name: str) -> str:
    return f"{name}.parametrizations.weight." if name else "parametrizations.weight."


def _seeded_params(model: nn.Module) -> set[int]:
    """``id``s of the frozen parameters that :func:`regenerate` re-creates from the seed: those held directly
    by a module with ``reset_parameters`` (an interspace conv's basis included). A frozen parameter of any
    other module keeps values the seed cannot give back, so the compact state stores it."""
    seeded: set[int] = set()
    for module in model.modules():
        if callable(getattr(module, "reset_parameters", None)):
            seeded.update(id(p) for p in module.parameters(recurse=False) if not p.requires_grad)
    return seeded


def compact_state(
    model: nn.Module,
    *,
    frozen_scales: Mapping[str, float] | None = None,
    interspace: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """FreezeNet's compact checkpoint of a model with FreezeNet masks.

    Holds: ``seed``; per masked module its weight ``shape``, the packed mask bits (:func:`pack_mask`) and the
    trained (kept) raw values in mask order; every other state entry (biases, BN, excluded layers, buffers)
    dense, except parameters that do not train (``requires_grad=False``) and that the seed regenerates (held
    by a module with ``reset_parameters``), listed under ``seeded``; ``frozen`` lists the stored parameters
    that do not train (so that loading freezes them again); and
    ``frozen_scales`` (FreezeNet-WD's per-tensor decay factor of θ₀, 1.0 without it); ``interspace`` (the
    ``basis_init`` and ``train_basis`` a model in the interspace representation was converted with). Only
    tensors, ints, floats, strings, lists and dicts: it loads with ``torch.load(..., weights_only=True)``.
    """
    targets = _freeze_masks(model)
    if interspace_modules(model) and interspace is None:
        raise ValueError(
            "compact_state: the model uses interspace convs; pass interspace={'basis_init': ...}"
        )
    seeds = {cast(Any, get_weight_mask(m)).seed_value for _, m in targets}
    if len(seeds) != 1:
        raise ValueError(f"compact_state: the masks carry different seeds {sorted(seeds)}")
    scales = dict(frozen_scales or {})
    masks: dict[str, Any] = {}
    for name, module in targets:
        wm = cast(Any, get_weight_mask(module))
        keep = wm.keep()
        masks[name] = {
            "shape": list(keep.shape),
            "bits": pack_mask(keep),
            "trained": _original(module).detach()[keep].cpu().clone(),
            "frozen_scale": float(scales.get(name, 1.0)),
        }
    skip = tuple(_mask_prefix(name) for name, _ in targets)
    seeded = _seeded_params(model)
    live = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(skip)}
    dense = {key: value.detach().cpu().clone() for key, value in live.items() if id(value) not in seeded}
    return {
        "format": COMPACT_FORMAT,
        "seed": int(next(iter(seeds))),
        "masks": masks,
        "dense": dense,
        "seeded": sorted(k for k, v in live.items() if id(v) in seeded),
        "frozen": sorted(k for k in dense if isinstance(live[k], nn.Parameter) and not live[k].requires_grad),
        "interspace": dict(interspace) if interspace_modules(model) and interspace is not None else {},
    }


def compact_nbytes(state: Mapping[str, Any]) -> int:
    """Bytes of a compact state's payload: mask bits, trained values, dense tensors, plus 4 for the seed."""
    total = 4
    for entry in state["masks"].values():
        total += int(entry["bits"].nbytes) + int(entry["trained"].nbytes)
    return total + sum(int(t.nbytes) for t in state["dense"].values())


def load_compact_state(model: nn.Module | Callable[[], nn.Module], state: Mapping[str, Any]) -> nn.Module:
    """Rebuild a FreezeNet model from :func:`compact_state`: bit-identical to the one it was taken from.

    Args:
        model: a freshly built, unmasked model of the same architecture (its values are overwritten), or a
            factory returning one.
        state: what :func:`compact_state` returned (e.g. after ``torch.load(..., weights_only=True)``).
    """
    if state.get("format") != COMPACT_FORMAT:
        raise ValueError(
            f"not a FreezeNet compact state (format {state.get('format')!r}, expected {COMPACT_FORMAT!r})"
        )
    net = model if isinstance(model, nn.Module) else model()
    seed = int(state["seed"])
    regenerate(net, seed)
    if state.get("interspace"):
        to_interspace(net, **dict(state["interspace"]))
    for name, entry in state["masks"].items():
        module = net.get_submodule(name)
        weight = cast(Tensor, module.weight)
        keep = unpack_mask(entry["bits"], entry["shape"]).to(weight.device)
        frozen = _scaled(weight.detach(), float(entry["frozen_scale"]))
        apply_mask(module, keep, mode="freeze", frozen=frozen, seed=seed)
        with torch.no_grad():
            original = _original(module)
            original[keep] = entry["trained"].to(device=original.device, dtype=original.dtype)
    missing, unexpected = net.load_state_dict(dict(state["dense"]), strict=False)
    skip = tuple(_mask_prefix(name) for name in state["masks"])
    missing = [k for k in missing if not k.startswith(skip) and k not in set(state["seeded"])]
    if missing or unexpected:
        raise ValueError(f"compact state does not fit the model: missing {missing}, unexpected {unexpected}")
    _stop_training(net, {*state["seeded"], *state.get("frozen", ())})
    return net


def _stop_training(model: nn.Module, keys: set[str]) -> None:
    """``requires_grad=False`` on the parameters of ``model`` named in ``keys``."""
    for key, p in model.named_parameters():
        if key in keys:
            p.requires_grad_(False)


def _scaled(theta0: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return theta0.clone()
    return (theta0.double() * scale).to(theta0.dtype)


# --------------------------------------------------------------------------------------------- method


class FreezeNet(ScoredPruner):
    """FreezeNet (Wimmer, Mehnert, Condurache, ACCV 2020): train the top-``k`` SNIP-scored weights, freeze the
    rest at their initial values θ₀ regenerated from a 32-bit seed.

    Args:
        sparsity: the freezing rate ``q`` (fraction of maskable weights frozen); ``k = ⌈(1 − q)·N⌉`` train.
        score: ``"snip"`` (``|θ₀ ⊙ g|``) or ``"grad"`` (``|g|``).
        seed: the 32-bit seed of θ₀; ``None`` derives it from the run's seed.
        frozen_weight_decay: FreezeNet-WD: weight decay also shrinks the frozen entries (see module doc).
        train_bias_bn: train biases and BN parameters densely (``False``: frozen at their seeded values).
        batches, scoring_mode: see :class:`~cnnkit.pruning._base.DataPrunerConfig`.
        scope, include, exclude, normalize: see :class:`~cnnkit.pruning._base.PrunerConfig`.
    """

    name = "freezenet"
    needs_data = True
    mask_mode: ClassVar[str] = "freeze"

    class Config(DataPrunerConfig):
        sparsity: float = Field(0.9, gt=0.0, lt=1.0, description="freezing rate: fraction of weights frozen")
        score: Literal["snip", "grad"] = Field("snip", description="|θ⊙g| (SNIP) or |g|")
        seed: int | None = Field(None, ge=0, lt=_SEED_SPACE, description="32-bit seed of θ₀; None: run seed")
        frozen_weight_decay: bool = Field(False, description="FreezeNet-WD: decay shrinks the frozen entries")
        train_bias_bn: bool = Field(True, description="train biases and BN parameters (dense)")
        reinit_after_mask: Literal[False] = Field(
            False, description="not supported: training starts from the seeded θ₀"
        )

    config: Config

    def __init__(self, *, config: Any = None, **overrides: Any) -> None:
        super().__init__(config=config, **overrides)
        self._seed: int | None = None
        self._theta0: dict[str, Tensor] = {}
        self._scales: dict[str, float] = {}

    @property
    def seed(self) -> int | None:
        """The seed θ₀ was generated from (set by :meth:`apply`)."""
        return self._seed

    def resolve_seed(self, ctx: Context) -> int:
        """The config's ``seed``, else ``(ctx.seed + offset) mod 2³²``, else a random 32-bit seed."""
        if self.config.seed is not None:
            return self.config.seed
        if ctx.seed is not None:
            return (ctx.seed + _SEED_OFFSET) % _SEED_SPACE
        return int(torch.randint(_SEED_SPACE, (1,), generator=ctx.generator(), dtype=torch.int64))

    def score(self, model: nn.Module, ctx: Context) -> dict[str, Tensor]:
        batches = scoring_batches(ctx, self.config.batches, model)
        model.train(self.config.scoring_mode == "train")
        names = [n for n, _ in self.targets(model)]
        if self.config.score == "grad":
            return grad_scores(model, names, batches, ctx.loss_fn)
        return snip_scores(model, names, batches, ctx.loss_fn)

    def attach_mask(self, module: nn.Module, mask: Tensor, ctx: Context) -> None:
        """Freeze ``module.weight`` where ``mask`` is 0 at its current (seeded) values; record the seed."""
        apply_mask(module, mask, mode="freeze", seed=self._seed)

    def prepare(self, model: nn.Module, ctx: Context) -> None:
        """θ₀ from the seed (:func:`regenerate`), then the interspace conversion under ``interspace=True``
        (``weight`` then holds ``Λ₀``); :meth:`apply` runs it on a copy first, so a failed ``apply``
        leaves the model unchanged."""
        regenerate(model, cast(int, self._seed))
        prepare_interspace(model, self.config)

    def prepares_model(self) -> bool:
        return True

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        self._seed = self.resolve_seed(ctx)
        model = super().apply(model, ctx)
        targets = self.targets(model)
        if not self.config.train_bias_bn:
            masked = {id(_original(m)) for _, m in targets}
            for p in model.parameters():
                if id(p) not in masked:
                    p.requires_grad_(False)
        if self.config.frozen_weight_decay:
            self._theta0 = {n: cast(Any, get_weight_mask(m)).frozen.detach().clone() for n, m in targets}
            self._scales = dict.fromkeys(self._theta0, 1.0)
        return model

    def after_step(self, ctx: Context) -> None:
        model = self.trained_model(ctx)
        if self.config.frozen_weight_decay and model is not None and ctx.optimizer is not None:
            self._decay_frozen(model, ctx.optimizer)
        super().after_step(ctx)

    def _decay_frozen(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for name, theta0 in self._theta0.items():
            module = model.get_submodule(name)
            group = groups.get(id(_original(module)))
            if group is None:
                continue
            self._scales[name] *= 1.0 - float(group["lr"]) * float(group.get("weight_decay", 0.0))
            with torch.no_grad():
                cast(Any, get_weight_mask(module)).frozen.copy_(_scaled(theta0, self._scales[name]))

    def frozen_scales(self) -> dict[str, float]:
        """FreezeNet-WD's decay factor of θ₀ per masked module (empty without ``frozen_weight_decay``)."""
        return dict(self._scales)

    def compact_state(self, model: nn.Module) -> dict[str, Any]:
        """:func:`compact_state` of ``model`` with this method's FreezeNet-WD factors."""
        cfg = self.config
        ip = {
            "basis_init": getattr(cfg, "basis_init", "dct"),
            "train_basis": getattr(cfg, "train_basis", True),
        }
        return compact_state(model, frozen_scales=self._scales, interspace=ip)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen_scales": dict(self._scales)} if self.config.frozen_weight_decay else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.config.frozen_weight_decay:
            super().load_state_dict(state)
            return
        scales = dict(state.get("frozen_scales", {}))
        if set(scales) != set(self._scales):
            raise ValueError(f"frozen_scales for {sorted(scales)}, expected {sorted(self._scales)}")
        self._scales = {k: float(v) for k, v in scales.items()}

    def stats(self, model: nn.Module) -> dict[str, float]:
        out = super().stats(model)
        out.update(drt_stats(model, seeded_frozen=True))
        kept, maskable = out["kept"], out["maskable"]
        out["frozen_fraction"] = 1.0 - kept / maskable if maskable else 0.0
        out["compression_factor"] = out["dense_params"] / max(out["stored_params"], 1.0)
        out["compression_factor_weights"] = maskable / max(kept, 1.0)
        return out
