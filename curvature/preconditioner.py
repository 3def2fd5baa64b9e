"""The K-FAC preconditioner: rewrites ``.grad`` of any ``nn.Module`` with the natural gradient.

Usage (the optimizer is any torch optimizer; ACKTR uses SGD with momentum)::

    kfac = KFAC(model, lr=0.25, damping=1e-2, kl_clip=1e-3)
    with kfac.collect_statistics():                 # hooks live only inside this block
        output = model(x)
        sampled_nll(output).backward(retain_graph=True)   # targets SAMPLED from the model
    model.zero_grad()
    loss(output).backward()
    info = kfac.precondition()                      # natural gradient, scaled by the KL trust region
    optimizer.step()

It knows nothing about reinforcement learning.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from acktr.curvature import kfac_math
from acktr.curvature.approximations import (
    APPROXIMATIONS,
    DiagonalFisher,
    KroneckerFactors,
    make_approximation,
)
from acktr.curvature.blocks import KFACBlock
from acktr.curvature.layers import adapter_class_for

LOSS_REDUCTIONS = ("mean", "sum")
STEP_RULES = ("natural", "whitened")
UNCOVERED_CURVATURES = ("identity", "diagonal")
# Largest Kronecker factor side covered by default: 8192² floats are 268 MB (eigendecomposition: minutes).
DEFAULT_MAX_FACTOR_DIM = 8192
# A layer whose curvature refresh fails this many times in a row (non-finite statistics, decompositions that
# fail in float32 and float64) has its statistics reset: with update_inverses_every=10, 50 updates on stale
# curvature, long enough to ride out a transient fault and short enough not to train on a dead layer.
DEFAULT_MAX_REFRESH_FAILURES = 5
STATE_VERSION = 2
_UNSET: Any = object()  # "not given" where None is a meaningful value


@dataclass
class PreconditionInfo:
    """What one :meth:`KFAC.precondition` call did.

    Tensors are 0-dim and stay on the model's device (no host sync); :meth:`as_dict` converts.
    """

    step_scale: Tensor
    """ν, the trust-region scale applied to the gradients (1 when ``kl_clip`` is None); with
    ``trust_region_groups``, the scale of the parameters outside every group."""
    predicted_kl: Tensor
    """``η² ν² Σ⟨Δ, g⟩``: the quadratic-model KL of the step that will be taken (baselines' units)."""
    natural_grad_dot: Tensor
    """``Σ⟨Δ, g⟩ = gᵀ F̂⁻¹ g`` before scaling (uncovered parameters contribute ``⟨g, g⟩``)."""
    eigh_failures: int
    """Total decompositions so far that failed in float32 and float64 (previous result kept)."""
    inverses_updated: bool
    factor_ms: float
    """Wall time of statistics work since the previous precondition() call."""
    inverse_ms: float
    precondition_ms: float
    group_step_scales: list[Tensor] = field(default_factory=list)
    """ν of each ``trust_region_groups`` entry, in order (``step_scale`` is the default group's)."""
    group_natural_grad_dots: list[Tensor] = field(default_factory=list)
    """``Σ⟨Δ, g⟩`` of each ``trust_region_groups`` entry (the default group's is the remainder)."""

    def __getitem__(self, key: str) -> Any:
        """Mapping-style access (``info["step_scale"]``) for loggers that expect a dict."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def as_dict(self) -> dict[str, float]:
        """All fields as Python floats (one host sync for the tensors)."""
        return {
            "step_scale": float(self.step_scale),
            "predicted_kl": float(self.predicted_kl),
            "natural_grad_dot": float(self.natural_grad_dot),
            "eigh_failures": float(self.eigh_failures),
            "inverses_updated": float(self.inverses_updated),
            "factor_ms": self.factor_ms,
            "inverse_ms": self.inverse_ms,
            "precondition_ms": self.precondition_ms,
            **{
                f"group{index}_step_scale": float(scale)
                for index, scale in enumerate(self.group_step_scales, 1)
            },
        }


def _sum_of_terms(terms: list[Tensor], device: torch.device) -> Tensor:
    """0-dim float32 sum of 0-dim tensors (no op for a single one; zero for none)."""
    if len(terms) == 1:
        return terms[0]
    if not terms:
        return torch.zeros((), dtype=torch.float32, device=device)
    return torch.stack(terms).sum()


def _check_positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"KFAC: {name} must be a number, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"KFAC: {name} must be {bound}, got {value!r}")
    return float(value)


def _check_fraction(name: str, value: Any) -> float:
    fraction = _check_positive_number(name, value)
    if fraction > 1.0:
        raise ValueError(f"KFAC: {name} must be in (0, 1], got {value!r}")
    return fraction


def _check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"KFAC: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"KFAC: {name} must be {'>= 0' if allow_zero else '>= 1'}, got {value!r}")
    return value


class KFAC:
    """K-FAC natural-gradient preconditioner with a KL trust region (Martens & Grosse 2015; ACKTR).

    Args:
        model: any module; every submodule whose type has a registered block (``nn.Linear``,
            ``nn.Conv2d``) is covered. Other modules with parameters are listed in one warning: their
            gradients are left unchanged (but still scaled by the trust region).
        lr: learning rate η the trust region assumes (float or zero-argument callable);
            :meth:`precondition` may override it per call.
        damping: Tikhonov damping λ added to ``A ⊗ G``.
        factor_decay: running-average decay ε of the factors, ``F ← ε F + (1 − ε) F_new``.
        kl_clip: trust-region size δ; ``None`` disables step scaling.
        update_factors_every: collect statistics on every n-th :meth:`collect_statistics` block.
        update_inverses_every: refresh decompositions on every n-th :meth:`precondition` call.
        cold_iter: the cold start: plain (equal-weight) averaging of the first ``cold_iter`` statistics
            updates, then exponential averaging with ``factor_decay`` (baselines' ``cold_iter``).
        curvature: the approximation (:mod:`acktr.curvature.approximations`): ``"eigen"`` (K-FAC, exact
            Tikhonov damping via eigendecompositions; the default), ``"ekfac"`` (K-FAC's eigenbasis with
            the per-example gradients' second moments in it instead of its eigenvalues, for Linear layers
            called once per forward; EKFAC), ``"cholesky"`` (factored π-damping with
            Cholesky inverses, cheaper to refresh), ``"lowrank"`` (top-``rank`` eigenpairs of wide factors
            plus an isotropic rest: cheap refresh and apply for wide layers) or ``"eva"`` (Kronecker vectors,
            rank-one factors inverted by Sherman–Morrison: the cheapest).
        inverse_method: former name of ``curvature`` (``"eigen"``/``"cholesky"``); prefer ``curvature``.
        rank: eigenpairs kept per factor by ``curvature="lowrank"``.
        sketch_min_dim: with ``curvature="lowrank"``, factors at least this wide are kept as sketches of
            ``2 (rank + 16)`` rows plus their exact trace instead of dense ``d × d`` matrices (memory
            ``O(d·rank)``; see :class:`~acktr.curvature.approximations.LowRankKFAC`). None: all dense.
        statistics_fraction: fraction of a batch the caller should run the statistics pass on
            (:meth:`statistics_subset` draws the rows); 1 uses the whole batch.
        row_fraction: fraction of a convolution's (example, position) rows used for its factors, drawn
            uniformly at random (unbiased); 1 uses all.
        step_rule: how ``lr`` sizes the step (both within the KL trust region ``kl_clip``): ``"natural"``
            (ACKTR's: the step is ``η F̂⁻¹g``, predicted KL ``min(η² gᵀF̂⁻¹g, δ)``) or ``"whitened"`` (``η``
            is a per-parameter step in Fisher-whitened units, predicted KL
            ``min(η² P, δ (η / reference_lr)²)`` with ``P`` the group's parameter count: RMSprop/Adam-scale
            learning rates give comparable steps, and a decaying schedule shrinks the trust region).
        reference_lr: ``η₀`` of ``step_rule="whitened"`` (the schedule's initial value); default: ``lr``.
        stagger_refresh: spread the layers' decomposition refreshes over the ``update_inverses_every`` steps
            (largest first, greedily balanced), so one update does not pay for every layer at once.
        factor_dtype: dtype of factors and decompositions; default float32 (float64 for float64 models).
        modules: restrict coverage to these modules (default: every supported submodule).
        loss_reduction: ``"mean"`` if the statistics loss is a mean over the batch (backprop gradients are
            multiplied by the batch size to recover per-example gradients), ``"sum"`` otherwise.
        warn_unsupported: emit the warning about uncovered modules.
        max_factor_dim: refuse (ValueError naming the layer) a layer whose ``A`` or ``G`` would be larger than
            ``max_factor_dim × max_factor_dim`` (e.g. a Linear layer over raw image pixels: 27,649² floats
            are 3 GB, and their eigendecomposition takes hours). None: no limit.
        trust_region_groups: ``[(parameters, kl_clip), ...]``: each group of parameters gets its own
            trust region ``ν_k = min(1, sqrt(kl_clip_k / (η² Σ_{p∈k}⟨Δ, g⟩)))`` (e.g. a separate critic, as
            in ACKTR's continuous-control setup); all other parameters share ``kl_clip``. A layer's weight
            and bias must be in the same group.
        max_refresh_failures: a layer whose refresh fails this many times in a row (non-finite statistics,
            decompositions failing in float32 and float64) gets its statistics reset with a warning and
            rebuilt from the next batches; until then it keeps its last good decompositions.
        uncovered_curvature: what preconditions the parameters no block covers (e.g. a Gaussian policy's
            ``log_std``): ``"identity"`` (their plain gradient, the original ACKTR) or ``"diagonal"`` (a
            running diagonal Fisher ``f`` estimated from the statistics backward with
            :func:`~acktr.curvature.kfac_math.diagonal_fisher_sample`, ``Δ = g / (f + λ)``; needs the
            statistics loss to be backpropagated inside :meth:`collect_statistics` with sampled targets).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float | Callable[[], float] = 0.25,
        damping: float = 1e-2,
        factor_decay: float = 0.99,
        kl_clip: float | None = 1e-3,
        update_factors_every: int = 1,
        update_inverses_every: int = 10,
        cold_iter: int = 10,
        curvature: str = "eigen",
        inverse_method: str | None = None,
        rank: int = 64,
        sketch_min_dim: int | None = None,
        statistics_fraction: float = 1.0,
        row_fraction: float = 1.0,
        stagger_refresh: bool = False,
        step_rule: str = "natural",
        reference_lr: float | None = None,
        factor_dtype: torch.dtype | None = None,
        modules: Iterable[nn.Module] | None = None,
        loss_reduction: str = "mean",
        warn_unsupported: bool = True,
        trust_region_groups: Sequence[tuple[Iterable[nn.Parameter], float | None]] = (),
        max_factor_dim: int | None = DEFAULT_MAX_FACTOR_DIM,
        max_refresh_failures: int = DEFAULT_MAX_REFRESH_FAILURES,
        uncovered_curvature: str = "identity",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"KFAC: model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(lr):
            _check_positive_number("lr", lr, allow_zero=True)
        self.lr = lr
        # Hyperparameters are validated properties: changing one between steps takes effect at the next.
        self.damping = damping
        self.kl_clip = kl_clip
        self.factor_decay = factor_decay
        self.update_factors_every = update_factors_every
        self.update_inverses_every = update_inverses_every
        self.cold_iter = cold_iter
        if inverse_method is not None:
            if inverse_method not in ("eigen", "cholesky"):
                raise ValueError(
                    f"KFAC: inverse_method must be 'eigen' or 'cholesky', got {inverse_method!r}"
                )
            curvature = inverse_method
        if curvature not in APPROXIMATIONS:
            raise ValueError(f"KFAC: curvature must be one of {', '.join(APPROXIMATIONS)}, got {curvature!r}")
        self._curvature = curvature
        self.rank = _check_positive_int("rank", rank)
        self.sketch_min_dim = (
            None if sketch_min_dim is None else _check_positive_int("sketch_min_dim", sketch_min_dim)
        )
        self.statistics_fraction = statistics_fraction
        self._row_fraction = _check_fraction("row_fraction", row_fraction)
        self.stagger_refresh = bool(stagger_refresh)
        if step_rule not in STEP_RULES:
            raise ValueError(f"KFAC: step_rule must be one of {', '.join(STEP_RULES)}, got {step_rule!r}")
        self.step_rule = step_rule
        if reference_lr is None:
            reference_lr = float(lr()) if callable(lr) else float(lr)
        self.reference_lr = _check_positive_number("reference_lr", reference_lr, allow_zero=True)
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"KFAC: loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        self.loss_reduction = loss_reduction
        self.max_refresh_failures = _check_positive_int("max_refresh_failures", max_refresh_failures)
        self.statistics_resets = 0

        if uncovered_curvature not in UNCOVERED_CURVATURES:
            raise ValueError(
                f"KFAC: uncovered_curvature must be one of {', '.join(UNCOVERED_CURVATURES)}, "
                f"got {uncovered_curvature!r}"
            )
        self.uncovered_curvature = uncovered_curvature

        self.model = model
        self._group_kl_clips: list[float | None] = []
        if max_factor_dim is not None:
            _check_positive_int("max_factor_dim", max_factor_dim)
        self.blocks: list[KFACBlock] = self._make_blocks(model, modules, factor_dtype, warn_unsupported)
        if max_factor_dim is not None:
            self._check_factor_sizes(max_factor_dim)
        covered = {id(p) for block in self.blocks for p in block.parameters()}
        self._uncovered_parameters = [p for p in model.parameters() if id(p) not in covered]
        self._set_trust_region_groups(trust_region_groups)
        diagonal_dtype = self.blocks[0].factor_dtype if self.blocks else torch.float32
        self._uncovered_fishers = [DiagonalFisher(diagonal_dtype) for _ in self._uncovered_parameters]
        self._statistics_batch_size: int | None = None

        self.steps = 0
        self.statistics_calls = 0
        self._collecting = False
        self._inactive_block_open = False
        self._statistics_outputs: list[Tensor] = []
        self._factor_seconds = 0.0
        self._warned_missing_statistics = False

    # ----------------------------------------------------------------- hyperparameters (validated on set)
    @property
    def damping(self) -> float:
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        damping = _check_positive_number("damping", value)
        if getattr(self, "_damping", damping) != damping:
            for block in getattr(self, "blocks", ()):
                if block.approximation.damping_is_baked_in():  # e.g. factored damping in Cholesky inverses
                    block.clear_curvature()
        self._damping = damping

    @property
    def kl_clip(self) -> float | None:
        return self._kl_clip

    @kl_clip.setter
    def kl_clip(self, value: float | None) -> None:
        self._kl_clip = None if value is None else _check_positive_number("kl_clip", value)

    @property
    def factor_decay(self) -> float:
        return self._factor_decay

    @factor_decay.setter
    def factor_decay(self, value: float) -> None:
        if not 0.0 <= _check_positive_number("factor_decay", value, allow_zero=True) < 1.0:
            raise ValueError(f"KFAC: factor_decay must be in [0, 1), got {value!r}")
        self._factor_decay = float(value)

    @property
    def update_factors_every(self) -> int:
        return self._update_factors_every

    @update_factors_every.setter
    def update_factors_every(self, value: int) -> None:
        self._update_factors_every = _check_positive_int("update_factors_every", value)

    @property
    def update_inverses_every(self) -> int:
        return self._update_inverses_every

    @update_inverses_every.setter
    def update_inverses_every(self, value: int) -> None:
        self._update_inverses_every = _check_positive_int("update_inverses_every", value)

    @property
    def cold_iter(self) -> int:
        return self._cold_iter

    @cold_iter.setter
    def cold_iter(self, value: int) -> None:
        self._cold_iter = _check_positive_int("cold_iter", value, allow_zero=True)

    @property
    def statistics_fraction(self) -> float:
        return self._statistics_fraction

    @statistics_fraction.setter
    def statistics_fraction(self, value: float) -> None:
        self._statistics_fraction = _check_fraction("statistics_fraction", value)

    @property
    def row_fraction(self) -> float:
        return self._row_fraction

    @row_fraction.setter
    def row_fraction(self, value: float) -> None:
        self._row_fraction = _check_fraction("row_fraction", value)
        for block in self.blocks:
            block.layer.row_fraction = self._row_fraction

    @property
    def curvature(self) -> str:
        """The approximation kind; assigning another one takes effect at the next step (K-FAC factors are
        carried over between the Kronecker kinds; other changes restart the statistics)."""
        return self._curvature

    @curvature.setter
    def curvature(self, value: str) -> None:
        if value not in APPROXIMATIONS:
            raise ValueError(f"KFAC: curvature must be one of {', '.join(APPROXIMATIONS)}, got {value!r}")
        if value == self._curvature:
            return
        for block in self.blocks:
            old = block.approximation
            new = self._approximation_for(block.layer, old.dtype, value)
            if isinstance(old, KroneckerFactors) and isinstance(new, KroneckerFactors):
                new.set_running(*old.running())  # type: ignore[arg-type]
                new.finite_updates, new.statistics_updates = old.finite_updates, old.statistics_updates
            block.approximation = new
        self._curvature = value

    @property
    def inverse_method(self) -> str:
        """Former name of :attr:`curvature`."""
        return self._curvature

    @inverse_method.setter
    def inverse_method(self, value: str) -> None:
        self.curvature = value

    def statistics_subset(self, batch_size: int, device: torch.device | str | None = None) -> Tensor | None:
        """Indices of the rows the statistics pass should use (``statistics_fraction`` of ``batch_size``,
        uniformly at random without replacement), or None for the whole batch."""
        keep = max(1, math.ceil(self.statistics_fraction * batch_size))
        if keep >= batch_size:
            return None
        device = device if device is not None else self.blocks[0].parameters()[0].device
        return torch.randperm(batch_size, device=device)[:keep]

    @property
    def group_kl_clips(self) -> list[float | None]:
        """δ of each ``trust_region_groups`` entry, in order (assign a list of the same length to change)."""
        return list(self._group_kl_clips)

    @group_kl_clips.setter
    def group_kl_clips(self, values: Sequence[float | None]) -> None:
        values = list(values)
        if len(values) != len(self._group_kl_clips):
            raise ValueError(
                f"KFAC: group_kl_clips needs {len(self._group_kl_clips)} entries (one per trust-region "
                f"group), got {len(values)}"
            )
        self._group_kl_clips = [
            None if value is None else _check_positive_number("trust_region_groups kl_clip", value)
            for value in values
        ]

    def current_lr(self) -> float:
        return float(self.lr()) if callable(self.lr) else float(self.lr)

    # ----------------------------------------------------------------- construction
    def _approximation_for(self, layer: Any, dtype: torch.dtype, curvature: str) -> Any:
        activation_dim, gradient_dim = layer.factor_dims()
        return make_approximation(
            curvature,
            activation_dim,
            gradient_dim,
            has_bias=layer.has_bias,
            dtype=dtype,
            rank=self.rank,
            sketch_min_dim=self.sketch_min_dim,
        )

    def _make_blocks(
        self,
        model: nn.Module,
        modules: Iterable[nn.Module] | None,
        factor_dtype: torch.dtype | None,
        warn_unsupported: bool,
    ) -> list[KFACBlock]:
        wanted = None if modules is None else {id(m) for m in modules}
        blocks: list[KFACBlock] = []
        uncovered: list[str] = []
        for name, module in model.named_modules():
            own_params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            adapter_class = adapter_class_for(module)
            selected = wanted is None or id(module) in wanted
            if adapter_class is None or not selected or getattr(module, "weight", None) is None:
                if own_params:
                    uncovered.append(f"{name or '<root>'} ({type(module).__name__})")
                continue
            if not module.weight.requires_grad:
                continue
            reason = adapter_class.unsupported_reason(module)
            if reason is not None:
                if wanted is not None:
                    raise ValueError(
                        f"KFAC: layer {name!r} ({type(module).__name__}) has unsupported {reason}"
                    )
                uncovered.append(f"{name or '<root>'} ({type(module).__name__}, {reason})")
                continue
            dtype = factor_dtype
            if dtype is None:
                dtype = torch.float64 if module.weight.dtype == torch.float64 else torch.float32
            layer = adapter_class(module, row_fraction=self.row_fraction)
            blocks.append(
                KFACBlock(module, name, layer, self._approximation_for(layer, dtype, self._curvature))
            )
        if wanted is not None:
            found = {id(block.module) for block in blocks}
            missing = [m for m in model.modules() if id(m) in wanted and id(m) not in found]
            if len(found) + len(missing) < len(wanted):
                raise ValueError("KFAC: modules= contains modules that are not part of the model")
            if missing:
                names = ", ".join(type(m).__name__ for m in missing)
                raise ValueError(
                    f"KFAC: no K-FAC block for {names}; supported: Linear, Conv2d (or register one)"
                )
        if not blocks:
            raise ValueError(
                "KFAC: the model has no nn.Linear or nn.Conv2d layer with trainable weights to precondition"
            )
        if uncovered and warn_unsupported:
            treatment = (
                "preconditioned by a running diagonal Fisher"
                if self.uncovered_curvature == "diagonal"
                else "left to the base optimizer"
            )
            warnings.warn(
                "K-FAC covers no block for: "
                + ", ".join(uncovered)
                + f"; their gradients are {treatment} (still scaled by the trust region)",
                UserWarning,
                stacklevel=3,
            )
        return blocks

    def _check_factor_sizes(self, max_factor_dim: int) -> None:
        for block in self.blocks:
            activation_dim, gradient_dim = block.factor_dims()
            if max(activation_dim, gradient_dim) > max_factor_dim:
                dim = max(activation_dim, gradient_dim)
                gigabytes = dim * dim * 4 / 1e9
                kind = type(block.module).__name__
                layer = f"{block.name!r} ({kind}, factors {activation_dim}² and {gradient_dim}²)"
                raise ValueError(
                    f"KFAC: layer {layer} needs a {dim}×{dim} Kronecker factor ({gigabytes:.1f} GB in "
                    f"float32, plus its decomposition), above max_factor_dim={max_factor_dim}; for image "
                    "observations use a CNN policy (CnnPolicy), or leave the layer out with "
                    "KFAC(modules=...), or raise max_factor_dim"
                )

    def _set_trust_region_groups(self, groups: Sequence[tuple[Iterable[nn.Parameter], float | None]]) -> None:
        """Map every parameter to a trust-region group: 0 is the default group (``kl_clip``)."""
        self._group_kl_clips = []
        group_of: dict[int, int] = {}
        model_ids = {id(p) for p in self.model.parameters()}
        for index, (params, group_kl_clip) in enumerate(groups, start=1):
            if group_kl_clip is not None:
                _check_positive_number("trust_region_groups kl_clip", group_kl_clip)
            self._group_kl_clips.append(group_kl_clip)
            for param in params:
                if id(param) not in model_ids:
                    raise ValueError(
                        "KFAC: trust_region_groups contains a parameter that is not in the model"
                    )
                if id(param) in group_of:
                    raise ValueError("KFAC: a parameter appears in two trust_region_groups")
                group_of[id(param)] = index
        for block in self.blocks:
            block_groups = {group_of.get(id(p), 0) for p in block.parameters()}
            if len(block_groups) > 1:
                raise ValueError(
                    f"KFAC: layer {block.name!r} has parameters in different trust_region_groups; "
                    "put its weight and bias in the same group"
                )
        # resolved once: precondition() runs every step
        self._block_groups = [group_of.get(id(block.parameters()[0]), 0) for block in self.blocks]
        self._uncovered_groups = [group_of.get(id(p), 0) for p in self._uncovered_parameters]

    def _group_parameter_counts(self) -> list[int]:
        """Trainable parameter count of each trust-region group (the ``P`` of ``step_rule="whitened"``)."""
        counts = [0] * (1 + len(self._group_kl_clips))
        for block, group in zip(self.blocks, self._block_groups, strict=True):
            counts[group] += sum(p.numel() for p in block.parameters())
        for param, group in zip(self._uncovered_parameters, self._uncovered_groups, strict=True):
            if param.requires_grad:
                counts[group] += param.numel()
        return counts

    def _group_kl_clip(self, group: int) -> float | None:
        return self.kl_clip if group == 0 else self._group_kl_clips[group - 1]

    def covered_parameters(self) -> list[nn.Parameter]:
        """Parameters preconditioned by a K-FAC block."""
        return [p for block in self.blocks for p in block.parameters()]

    def uncovered_parameters(self) -> list[nn.Parameter]:
        """Model parameters no block covers (identity or diagonal curvature, see ``uncovered_curvature``)."""
        return list(self._uncovered_parameters)

    def diagonal_fisher(self, parameter: nn.Parameter) -> DiagonalFisher:
        """The running diagonal Fisher kept for an uncovered ``parameter`` (used when
        ``uncovered_curvature="diagonal"``; its ``diagonal`` is None until statistics arrive).

        :raises KeyError: for a covered or foreign parameter.
        """
        for candidate, fisher in zip(self._uncovered_parameters, self._uncovered_fishers, strict=True):
            if candidate is parameter:
                return fisher
        raise KeyError("KFAC.diagonal_fisher: the parameter is not one of this model's uncovered parameters")

    # ----------------------------------------------------------------- statistics
    def collects_next(self) -> bool:
        """Whether the next :meth:`collect_statistics` block records statistics (``update_factors_every``);
        callers can skip their statistics pass (e.g. a sampled-Fisher backward) when it does not."""
        return self.statistics_calls % self.update_factors_every == 0

    @contextlib.contextmanager
    def collect_statistics(self) -> Iterator[None]:
        """Record ``A`` and ``G`` for the forward and backward passes run inside this block.

        Run the forward pass (or reuse one run inside) and the backward pass of a loss whose targets are
        sampled from the model's own predictive distribution. Hooks exist only inside the block, so
        rollouts and the training-loss backward pay nothing. Passes under ``torch.no_grad()`` are
        ignored. Only every ``update_factors_every``-th block collects.
        """
        if self._collecting:
            raise RuntimeError("KFAC.collect_statistics() blocks cannot be nested")
        active = self.collects_next()
        self.statistics_calls += 1
        if not active:
            self._inactive_block_open = True
            try:
                yield
            finally:
                self._inactive_block_open = False
            return
        handles = [
            block.module.register_forward_hook(self._make_forward_hook(block)) for block in self.blocks
        ]
        for block in self.blocks:
            block.reset_accumulators()
        # the uncovered parameters' statistics: the gradients that reach them inside the block
        uncovered_grads: list[Tensor | None] = [None] * len(self._uncovered_parameters)
        if self.uncovered_curvature == "diagonal":
            handles += [
                param.register_hook(self._make_uncovered_hook(uncovered_grads, index))
                for index, param in enumerate(self._uncovered_parameters)
                if param.requires_grad
            ]
        self._statistics_batch_size = None
        self._statistics_outputs = []
        self._collecting = True
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            self._collecting = False
            self._statistics_outputs = []
            for handle in handles:
                handle.remove()
            if succeeded:
                self._update_factors()
                if self.uncovered_curvature == "diagonal":
                    self._update_uncovered_fishers(uncovered_grads)
            for block in self.blocks:
                block.reset_accumulators()

    def statistics_backward(self, loss: Tensor, *, retain_graph: bool = False) -> None:
        """Backpropagate a statistics loss only as far as the statistics need, inside
        :meth:`collect_statistics`: to the outputs of the covered layers recorded in this block (and to the
        uncovered parameters with ``uncovered_curvature="diagonal"``), never into any ``.grad``.

        Equivalent, for the statistics, to ``loss.backward()`` in the block, and cheaper: no weight
        gradient is formed (the first layer's backward is skipped altogether) and the parameters'
        ``.grad`` are left as they were, so no ``zero_grad()`` is needed around it. A block that does not
        collect (``update_factors_every``) skips the backward.
        """
        if not self._collecting:
            if self._inactive_block_open:  # this block records nothing: nothing to backpropagate
                return
            raise RuntimeError("KFAC.statistics_backward() must be called inside collect_statistics()")
        inputs = list(self._statistics_outputs)
        if self.uncovered_curvature == "diagonal":
            inputs += [param for param in self._uncovered_parameters if param.requires_grad]
        if not inputs:
            return
        torch.autograd.grad(loss, inputs, retain_graph=retain_graph, allow_unused=True)

    def _make_forward_hook(self, block: KFACBlock) -> Callable[..., None]:
        mean_reduction = self.loss_reduction == "mean"

        def gradient_hook(output_grad: Tensor) -> None:
            # The graph may be backpropagated again after the block closed (retain_graph): ignore that.
            if self._collecting:
                start = time.perf_counter()
                block.accumulate_gradients(output_grad, mean_reduction=mean_reduction)
                self._factor_seconds += time.perf_counter() - start

        def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
                return
            start = time.perf_counter()
            if self._statistics_batch_size is None and args[0].dim() > 0:
                self._statistics_batch_size = int(args[0].shape[0])
            block.accumulate_activations(args[0])
            output.register_hook(gradient_hook)
            self._statistics_outputs.append(output)
            self._factor_seconds += time.perf_counter() - start

        return forward_hook

    def _make_uncovered_hook(self, grads: list[Tensor | None], index: int) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if self._collecting:
                previous = grads[index]
                grads[index] = grad.detach() if previous is None else previous + grad.detach()

        return hook

    def _update_uncovered_fishers(self, grads: list[Tensor | None]) -> None:
        """Fold the statistics backward's gradient of each uncovered parameter into its diagonal Fisher."""
        batch_size = self._statistics_batch_size
        if batch_size is None:  # no covered layer ran a forward pass: nothing says how many examples
            return
        mean_reduction = self.loss_reduction == "mean"
        for gradient, fisher in zip(grads, self._uncovered_fishers, strict=True):
            if gradient is None:
                continue
            sample = kfac_math.diagonal_fisher_sample(
                gradient, batch_size=batch_size, mean_reduction=mean_reduction
            )
            fisher.update(sample, decay=self.factor_decay, cold_iter=self.cold_iter)

    def _update_factors(self) -> None:
        start = time.perf_counter()
        for block in self.blocks:
            block.update_factors(decay=self.factor_decay, cold_iter=self.cold_iter)
        self._factor_seconds += time.perf_counter() - start

    # ----------------------------------------------------------------- preconditioning
    def _refresh_offsets(self) -> list[int]:
        """Per block, the phase of its refresh within ``update_inverses_every`` steps (0 for all unless
        staggered). Largest decompositions first, each to the least loaded phase."""
        every = self.update_inverses_every
        key = (every, self.stagger_refresh, len(self.blocks))
        if getattr(self, "_offsets_key", None) != key:
            offsets = [0] * len(self.blocks)
            if self.stagger_refresh and every > 1:
                load = [0.0] * every
                costs = [float(sum(d**3 for d in block.factor_dims())) for block in self.blocks]
                for index in sorted(range(len(costs)), key=lambda i: -costs[i]):
                    phase = min(range(every), key=lambda p: load[p])
                    offsets[index] = phase
                    load[phase] += costs[index]
            self._offsets, self._offsets_key = offsets, key
        return self._offsets

    def update_curvature(self) -> None:
        """Refresh every block's eigendecompositions (or damped inverses) from its current factors."""
        for block in self.blocks:
            self._refresh_block(block)

    def _refresh_block(self, block: KFACBlock) -> None:
        """Refresh one block; reset its statistics (with a warning) once it failed too often in a row."""
        if block.update_curvature(damping=self.damping):
            return
        failures = block.approximation.consecutive_failures
        if failures >= self.max_refresh_failures:
            block.approximation.reset_statistics()
            self.statistics_resets += 1
            warnings.warn(
                f"K-FAC layer {block.name or '<root>'!r} ({self.curvature}): {failures} curvature refreshes "
                "in a row failed (non-finite or undecomposable statistics); its statistics were reset and "
                "are rebuilt from the next batches",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def eigh_failures(self) -> int:
        return sum(block.decomposition_failures for block in self.blocks)

    @torch.no_grad()
    def precondition(
        self,
        lr: float | None = None,
        group_lrs: Sequence[float] | None = None,
        *,
        kl_clip: float | None = _UNSET,
        advance: bool = True,
    ) -> PreconditionInfo:
        """Rewrite every parameter's ``.grad`` with the trust-region-scaled natural gradient.

        Blocks: ``Δ = (A ⊗ G + λI)⁻¹ ∇W``; uncovered parameters: ``Δ = g`` (``uncovered_curvature=
        "identity"``) or ``Δ = g / (f + λ)`` (``"diagonal"``, once it has statistics). Then all are multiplied
        by ``ν = min(1, sqrt(kl_clip / (η² Σ⟨Δ, g⟩)))`` (one ν per trust-region group). Parameters
        without ``.grad`` are skipped.

        Args:
            lr: the learning rate η of the step about to be taken (default: ``self.lr``).
            group_lrs: η of each ``trust_region_groups`` entry, in order, when those parameters are stepped
                with their own learning rate (default: ``lr`` for every group).
            kl_clip: the first group's trust region for this call only (default: ``self.kl_clip``).
            advance: False preconditions a further gradient of the same update (e.g. another part of the
                loss, with its own ``kl_clip``): no decomposition is refreshed and ``steps`` does not advance.
        """
        eta = self.current_lr() if lr is None else float(lr)
        if group_lrs is None:
            group_etas = [eta] * (1 + len(self._group_kl_clips))
        else:
            if len(group_lrs) != len(self._group_kl_clips):
                raise ValueError(
                    f"precondition: group_lrs has {len(group_lrs)} entries but there are "
                    f"{len(self._group_kl_clips)} trust-region groups"
                )
            group_etas = [eta, *(float(value) for value in group_lrs)]
        start = time.perf_counter()
        refreshed = False
        for block, offset in zip(self.blocks, self._refresh_offsets(), strict=True):
            due = advance and (self.steps + offset) % self.update_inverses_every == 0
            if due or (block.has_factors and not block.has_curvature):
                self._refresh_block(block)
                refreshed = True
        inverse_seconds = time.perf_counter() - start

        start = time.perf_counter()
        device = next(iter(self.blocks)).parameters()[0].device
        group_count = 1 + len(self._group_kl_clips)
        # per group: the terms of Σ⟨Δ, g⟩ (summed once at the end) and the .grad tensors its scale multiplies
        group_terms: list[list[Tensor]] = [[] for _ in range(group_count)]
        group_grads: list[list[Tensor]] = [[] for _ in range(group_count)]
        without_statistics = []
        for block, group in zip(self.blocks, self._block_groups, strict=True):
            grad_matrix = block.gradient_matrix()
            if grad_matrix is None:
                continue
            if not block.has_factors:
                without_statistics.append(block.name)
            direction = block.natural_gradient(grad_matrix, damping=self.damping)
            if grad_matrix.dtype != direction.dtype:
                grad_matrix = grad_matrix.to(direction.dtype)
            term = (direction * grad_matrix).sum()
            group_terms[group].append(term if term.dtype == torch.float32 else term.float())
            # written unscaled; the group's ν multiplies all of its .grad tensors in one foreach op below
            block.write_gradient_matrix(direction)
            group_grads[group].extend(param.grad for param in block.parameters() if param.grad is not None)
        if without_statistics and self.statistics_calls > 0 and not self._warned_missing_statistics:
            # e.g. nn.MultiheadAttention's out_proj, whose weight is used without calling its forward()
            self._warned_missing_statistics = True
            warnings.warn(
                f"K-FAC has no statistics for layers {without_statistics} (no forward and backward pass "
                "reached them inside collect_statistics(), e.g. the statistics loss does not use them); "
                "their gradients are used unpreconditioned",
                UserWarning,
                stacklevel=2,
            )
        uncovered = [
            (param, group, fisher)
            for param, group, fisher in zip(
                self._uncovered_parameters, self._uncovered_groups, self._uncovered_fishers, strict=True
            )
            if param.grad is not None
        ]
        diagonal = self.uncovered_curvature == "diagonal"
        for param, group, fisher in uncovered:
            assert param.grad is not None
            if diagonal and fisher.has_statistics:
                grad = param.grad
                param.grad = fisher.precondition(grad, self.damping)
                group_terms[group].append((param.grad * grad).float().sum())
            else:
                group_terms[group].append(param.grad.float().square().sum())
            group_grads[group].append(param.grad)
        group_dots = [_sum_of_terms(terms, device) for terms in group_terms]

        clips = [self._group_kl_clip(group) for group in range(group_count)]
        if kl_clip is not _UNSET:
            clips[0] = kl_clip
        if self.step_rule == "whitened":
            counts = self._group_parameter_counts()
            scales = [
                kfac_math.whitened_step_scale(
                    dot, group_etas[group], clips[group], counts[group], self.reference_lr
                )
                for group, dot in enumerate(group_dots)
            ]
        else:
            scales = [
                kfac_math.trust_region_scale(dot, group_etas[group], clips[group])
                for group, dot in enumerate(group_dots)
            ]
        for grads, scale in zip(group_grads, scales, strict=True):
            if grads:
                torch._foreach_mul_(grads, scale)
        precondition_seconds = time.perf_counter() - start

        if advance:
            self.steps += 1
        factor_seconds, self._factor_seconds = self._factor_seconds, 0.0
        natural_grad_dot = torch.stack(group_dots).sum()
        predicted_kl = torch.stack(
            [
                (group_eta * group_eta) * scale.square() * dot
                for group_eta, scale, dot in zip(group_etas, scales, group_dots, strict=True)
            ]
        ).sum()
        return PreconditionInfo(
            step_scale=scales[0],
            predicted_kl=predicted_kl,
            natural_grad_dot=natural_grad_dot,
            eigh_failures=self.eigh_failures,
            inverses_updated=refreshed,
            factor_ms=1000.0 * factor_seconds,
            inverse_ms=1000.0 * inverse_seconds,
            precondition_ms=1000.0 * precondition_seconds,
            group_step_scales=scales[1:],
            group_natural_grad_dots=group_dots[1:],
        )

    # ----------------------------------------------------------------- posterior samples
    def block_names(self) -> list[str]:
        """The names of the covered layers (keys of :meth:`sample_weight_perturbations`)."""
        return [block.name for block in self.blocks]

    @torch.no_grad()
    def sample_weight_perturbations(
        self,
        samples: int,
        *,
        scale: float = 1.0,
        layers: Iterable[str] | None = None,
        damping: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Independent weight perturbations ``ΔW ~ N(0, scale² (F̂ + γI)⁻¹)`` per layer (noisy natural
        gradient, Zhang, Sun, Duvenaud & Grosse 2018: the Gaussian the curvature defines around the weights).

        Each approximation samples from the decomposition it already holds (one preconditioning's cost):
        ``"eigen"`` exactly ``(A ⊗ G + γI)⁻¹``, ``"lowrank"`` its top-k-plus-isotropic factors, ``"eva"`` its
        rank-one factors, ``"cholesky"`` its factored-damping curvature. A layer with statistics but no
        decomposition yet is refreshed first; a layer without statistics gets the prior alone (``I / γ``).
        Equivalent to :meth:`weight_perturbations` of :meth:`sample_weight_noise`.

        Args:
            samples: ``K``, the number of independent draws.
            scale: multiplies every draw (``s·sqrt(λ/N)`` of a tempered posterior).
            layers: block names to sample (default: all, :meth:`block_names`).
            damping: the prior precision γ (default: the preconditioner's ``damping``; ``"cholesky"`` only
                takes that one, which its inverses include).
            generator: random generator (e.g. one per distributed rank, so the noise differs across ranks).

        Returns:
            block name -> ``(K, d_out, d_in')`` matrices (bias last column; :meth:`parameter_perturbations`
            maps them to parameter names).
        """
        noise = self.sample_weight_noise(samples, layers=layers, generator=generator)
        return self.weight_perturbations(noise, scale=scale, damping=damping)

    def sample_weight_noise(
        self, samples: int, *, layers: Iterable[str] | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """White noise ``E`` for :meth:`weight_perturbations`: block name -> ``(K, d_out, d_in')`` standard
        normal matrices on the block's device, in its factor dtype. Holding ``E`` and mapping it again after
        the curvature changed keeps a perturbation "the same draw" under the new posterior."""
        _check_positive_int("samples", samples)
        noise: dict[str, Tensor] = {}
        for block in self._selected_blocks(layers):
            activation_dim, gradient_dim = block.factor_dims()
            noise[block.name] = torch.randn(
                (samples, gradient_dim, activation_dim),
                generator=generator,
                device=block.parameters()[0].device,
                dtype=block.factor_dtype,
            )
        return noise

    def weight_perturbations(
        self, noise: dict[str, Tensor], *, scale: float = 1.0, damping: float | None = None
    ) -> dict[str, Tensor]:
        """``ΔW = scale · (F̂ + γI)^{-1/2} vec E`` per block for white noise ``E`` (block name ->
        ``(..., d_out, d_in')``, e.g. from :meth:`sample_weight_noise`), from the current decompositions
        (see :meth:`sample_weight_perturbations`). ``noise`` is not modified."""
        gamma = self.damping if damping is None else _check_positive_number("damping", damping)
        perturbations: dict[str, Tensor] = {}
        for block in self._selected_blocks(noise):
            approximation = block.approximation
            if approximation.damping_is_baked_in() and gamma != self.damping:
                raise ValueError(
                    f"KFAC: curvature {self.curvature!r} samples with the damping its inverses include "
                    f"({self.damping}); call without damping= or use curvature='eigen'"
                )
            if block.has_factors and not block.has_curvature:
                block.update_curvature(damping=self.damping)
            expected = block.factor_dims()[::-1]
            if tuple(noise[block.name].shape[-2:]) != expected:
                raise ValueError(
                    f"KFAC: noise for block {block.name!r} must end in shape {expected}, "
                    f"got {tuple(noise[block.name].shape)}"
                )
            perturbations[block.name] = approximation.posterior_sample(noise[block.name], gamma).mul(scale)
        return perturbations

    def _selected_blocks(self, layers: Iterable[str] | None) -> list[KFACBlock]:
        """The blocks named in ``layers`` (all when None), in model order; unknown names are an error."""
        if layers is None:
            return list(self.blocks)
        wanted = set(layers)
        unknown = sorted(wanted - set(self.block_names()))
        if unknown:
            raise ValueError(f"KFAC: no K-FAC block named {unknown}; choose among {self.block_names()}")
        return [block for block in self.blocks if block.name in wanted]

    def parameter_perturbations(self, perturbations: dict[str, Tensor]) -> dict[str, Tensor]:
        """Block-name matrices ``(..., d_out, d_in')`` as the model's parameter names -> tensors shaped
        ``(..., *parameter.shape)`` (e.g. for ``torch.func.functional_call``)."""
        names = {id(param): name for name, param in self.model.named_parameters()}
        by_block = {block.name: block for block in self.blocks}
        result: dict[str, Tensor] = {}
        for block_name, matrix in perturbations.items():
            block = by_block[block_name]
            for param, tensor in zip(block.parameters(), block.layer.parameter_tensors(matrix), strict=True):
                result[names[id(param)]] = tensor
        return result

    @contextlib.contextmanager
    def perturbed_weights(self, perturbations: dict[str, Tensor]) -> Iterator[None]:
        """Forward passes inside this block run at perturbed weights, per group of rows.

        With ``perturbations`` from :meth:`sample_weight_perturbations` (``K`` draws), a batch of ``K·R`` rows
        is read as ``K`` contiguous groups of ``R`` rows, and group ``k`` runs every listed layer at
        ``W + ΔW_k``. The perturbations are constants, so a loss computed inside gives the mean weights ``W``
        the gradient at the perturbed weights (the reparameterisation of noisy natural gradient). Statistics
        collected inside describe the perturbed network. A batch that does not split into ``K`` equal groups
        raises ValueError.
        """
        by_block = {block.name: block for block in self.blocks}
        unknown = sorted(set(perturbations) - set(by_block))
        if unknown:
            raise ValueError(f"KFAC: no K-FAC block named {unknown}; choose among {self.block_names()}")
        counts = {matrix.shape[0] for matrix in perturbations.values()}
        if len(counts) > 1:
            raise ValueError(
                f"KFAC.perturbed_weights: every layer needs the same number of draws, got {sorted(counts)}"
            )

        def make_hook(block: KFACBlock, deltas: Tensor) -> Callable[..., Tensor]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
                return output + block.layer.grouped_output_delta(args[0], deltas)

            return hook

        handles = [
            by_block[name].module.register_forward_hook(make_hook(by_block[name], matrix.detach()))
            for name, matrix in perturbations.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Factors, decompositions and counters: loading it gives bit-identical continuation."""
        return {
            "version": STATE_VERSION,
            "steps": self.steps,
            "statistics_calls": self.statistics_calls,
            "statistics_resets": self.statistics_resets,
            "curvature": self.curvature,
            "blocks": {block.name: block.state_dict() for block in self.blocks},
            "uncovered_curvature": self.uncovered_curvature,
            "uncovered": [fisher.state_dict() for fisher in self._uncovered_fishers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            not isinstance(state, dict)
            or state.get("version") not in (1, STATE_VERSION)
            or "blocks" not in state
        ):
            raise ValueError("KFAC.load_state_dict: not a KFAC state_dict (missing version/blocks)")
        # version 1 named the approximation inverse_method; a state of another kind switches this KFAC to it
        saved_curvature = str(state.get("curvature", state.get("inverse_method", self.curvature)))
        if saved_curvature != self.curvature:
            self.curvature = saved_curvature
        saved_names = list(state["blocks"])
        names = [block.name for block in self.blocks]
        if sorted(saved_names) != sorted(names):
            raise ValueError(
                f"KFAC.load_state_dict: saved layers {saved_names} do not match this model's {names}; "
                "load state saved from the same architecture"
            )
        for block in self.blocks:
            device = block.parameters()[0].device
            block.load_state_dict(state["blocks"][block.name], device=device)
        uncovered_states = state.get("uncovered")
        for index, fisher in enumerate(self._uncovered_fishers):
            device = self._uncovered_parameters[index].device
            if isinstance(uncovered_states, list) and len(uncovered_states) == len(self._uncovered_fishers):
                fisher.load_state_dict(uncovered_states[index], device=device)
            else:  # saved before diagonal statistics existed, or by another model: start them afresh
                fisher.load_state_dict({}, device=device)
        self.steps = int(state["steps"])
        self.statistics_calls = int(state["statistics_calls"])
        self.statistics_resets = int(state.get("statistics_resets", 0))

    def __repr__(self) -> str:
        layers = ", ".join(f"{block.name or '<root>'}:{type(block).__name__}" for block in self.blocks)
        return (
            f"KFAC(damping={self.damping}, kl_clip={self.kl_clip}, factor_decay={self.factor_decay}, "
            f"curvature={self.curvature!r}, blocks=[{layers}])"
        )
