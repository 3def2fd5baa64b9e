"""Curvature approximations: what is kept from a layer's rows and how it preconditions the layer's gradient.

Every approximation has the same life cycle, driven by :class:`~acktr.curvature.KFAC`:

- ``observe_activations(rows)`` / ``observe_gradients(rows, examples, weight, grad_scale)`` during one
  ``collect_statistics()`` block (a module called R times in one block is weight sharing: activations are
  averaged over the calls and gradient statistics summed, K-FAC "expand");
- ``update(decay, cold_iter)`` folds that block's statistics into running averages (plain over the first
  ``cold_iter`` finite batches, then exponential; non-finite batches skipped without a host sync);
- ``refresh(damping)`` recomputes the decompositions (amortised: every ``update_inverses_every`` steps);
- ``precondition(grad_matrix, damping)`` returns the damped natural gradient ``(d_out, d_in')``;
- ``posterior_sample(noise, damping)`` maps white noise to a weight sample with covariance ``(F̂ + γI)⁻¹``
  (noisy natural gradient), from the same decompositions;
- ``state_dict()`` / ``load_state_dict()``.

Kinds (``KFAC(curvature=...)``):

- ``"eigen"`` — K-FAC with eigendecompositions of ``A`` and ``G`` and exact Tikhonov damping of ``A ⊗ G``;
- ``"cholesky"`` — K-FAC with factored (π) damping and Cholesky inverses (cheaper refresh);
- ``"lowrank"`` — K-FAC whose wide factors keep their top-``rank`` eigenpairs (randomized subspace
  iteration) plus the mean of the rest as an isotropic term: refresh ``O(d² k)``, apply ``O(d_out d_in k)``;
  factors no wider than ``rank + 16`` are decomposed exactly;
- ``"eva"`` — Kronecker vectors (Eva, Zhang et al. 2022): the mean activation and the mean output gradient
  replace ``A`` and ``G`` by rank-one factors, inverted by Sherman–Morrison in ``O(d_out d_in)``; nothing to
  refresh.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from acktr.curvature import kfac_math
from acktr.curvature.kfac_math import Eigendecomposition, LowRankEigen


def blend_weight(count: Tensor, finite: Tensor, *, decay: float, cold_iter: int) -> Tensor:
    """The weight ``w`` of a new batch in ``F ← (1 − w) F + w F_new`` (0-dim tensor, no host sync): a plain
    average while fewer than ``cold_iter`` finite batches were folded in (and always over a zero-initialised
    statistic, ``count = 0``), ``1 − decay`` afterwards, 0 for a non-finite batch."""
    cold = count < max(cold_iter, 1)
    exponential = torch.full_like(count, 1.0 - decay)
    weight = torch.where(cold, (1.0 / (count + 1.0)).clamp(min=1.0 - decay), exponential)
    return torch.where(finite, weight, torch.zeros_like(weight))


class DiagonalFisher:
    """Running diagonal Fisher of a parameter that no layer block covers (e.g. a Gaussian policy's
    state-independent ``log_std``), kept with the same cold-start/decay rule as the Kronecker factors.

    Preconditions as ``Δ = g / (f + λ)`` (elementwise). Fed by
    :func:`~acktr.curvature.kfac_math.diagonal_fisher_sample` from the statistics backward — one χ²₁-like
    sample per element per batch, so it needs many batches (``factor_decay`` near 1) to settle. Where the
    diagonal is known in closed form, :meth:`set_exact` fixes it and the samples are ignored.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.diagonal: Tensor | None = None
        self.finite_updates: Tensor | None = None
        self.statistics_updates = 0
        self.exact = False

    def set_exact(self, diagonal: Tensor) -> None:
        """Fix the diagonal to a known value (shape of the parameter, entries ≥ 0, in the convention of
        :func:`~acktr.curvature.kfac_math.diagonal_fisher_sample`: the per-example average), e.g. 2 per
        element for a Gaussian's state-independent log standard deviation. Later samples are ignored.

        :raises ValueError: for a negative or non-finite entry.
        """
        diagonal = diagonal.detach().to(self.dtype)
        if not bool(torch.isfinite(diagonal).all()) or bool((diagonal < 0).any()):
            raise ValueError("DiagonalFisher.set_exact: the diagonal must be finite and >= 0")
        self.diagonal = diagonal.clone()
        self.finite_updates = torch.ones((), dtype=self.dtype, device=diagonal.device)
        self.exact = True

    @property
    def has_statistics(self) -> bool:
        return self.diagonal is not None

    def update(self, sample: Tensor, *, decay: float, cold_iter: int) -> None:
        """Fold one diagonal sample (shape of the parameter) into the running average (counted, not folded,
        once the diagonal is exact)."""
        if self.exact:
            self.statistics_updates += 1
            return
        sample = sample.detach().to(self.dtype)
        finite = torch.isfinite(sample.sum())
        if self.diagonal is None or self.finite_updates is None:
            self.diagonal = torch.where(finite, sample, torch.zeros_like(sample))
            self.finite_updates = finite.to(self.dtype)
        else:
            weight = blend_weight(self.finite_updates, finite, decay=decay, cold_iter=cold_iter)
            self.diagonal.lerp_(torch.where(finite, sample, self.diagonal), weight)
            self.finite_updates = self.finite_updates + finite.to(self.dtype)
        self.statistics_updates += 1

    def precondition(self, grad: Tensor, damping: float) -> Tensor:
        """``g / (f + λ)``; the gradient unchanged before any statistics."""
        if self.diagonal is None:
            return grad
        return grad / (self.diagonal.to(grad.dtype) + damping)

    def state_dict(self) -> dict[str, Any]:
        return {
            "diagonal": None if self.diagonal is None else self.diagonal.clone(),
            "finite_updates": None if self.finite_updates is None else self.finite_updates.clone(),
            "statistics_updates": self.statistics_updates,
            "exact": self.exact,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        diagonal, finite = state.get("diagonal"), state.get("finite_updates")
        self.diagonal = None if diagonal is None else diagonal.to(device=device, dtype=self.dtype)
        self.finite_updates = None if finite is None else finite.to(device=device, dtype=self.dtype)
        self.statistics_updates = int(state.get("statistics_updates", 0))
        self.exact = bool(state.get("exact", False)) and self.diagonal is not None


class CurvatureApproximation:
    """Base class: counters, failure bookkeeping and the cold-start/decay rule shared by every kind."""

    name: ClassVar[str] = ""
    #: tensors saved by ``state_dict`` (``None`` allowed)
    state_tensors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        self.activation_dim, self.gradient_dim = activation_dim, gradient_dim
        self.has_bias = has_bias
        self.dtype = dtype
        self.statistics_updates = 0
        self.decomposition_failures = 0
        self.consecutive_failures = 0  # refreshes failed in a row (reset by a success or by reset_statistics)
        self.finite_updates: Tensor | None = None
        # (damping, d_G, d_A, (d_G d_Aᵀ + λ)⁻¹) of the last eigenbasis step, see _inverse_scaling
        self._inverse_scaling_cache: tuple[float, Tensor, Tensor, Tensor] | None = None
        self.reset_pending()

    # ------------------------------------------------------------------ statistics (override)
    def reset_pending(self) -> None:
        raise NotImplementedError

    def observe_activations(self, rows: Tensor) -> None:
        raise NotImplementedError

    def observe_gradients(self, rows: Tensor, examples: int, weight: float, grad_scale: float) -> None:
        raise NotImplementedError

    def pending(self) -> tuple[Tensor, Tensor] | None:
        """This block's (activation, gradient) statistics, or None if either is missing."""
        raise NotImplementedError

    def running(self) -> tuple[Tensor | None, Tensor | None]:
        raise NotImplementedError

    def set_running(self, activation: Tensor | None, gradient: Tensor | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ running averages (shared)
    @property
    def has_statistics(self) -> bool:
        activation, gradient = self.running()
        return activation is not None and gradient is not None

    def update(self, *, decay: float, cold_iter: int) -> bool:
        """Fold the pending statistics into the running averages; False if there were none."""
        pending = self.pending()
        if pending is None:
            return False
        activation_new, gradient_new = pending
        # A sum is non-finite iff some element is (NaN/inf propagate): one cheap reduction per statistic.
        finite = torch.isfinite(activation_new.sum()) & torch.isfinite(gradient_new.sum())
        activation, gradient = self.running()
        if activation is None or gradient is None or self.finite_updates is None:
            # A first batch with NaNs must not become the statistic: zeros make the damping alone act,
            # i.e. a plain gradient step that the trust region still bounds.
            self.set_running(
                torch.where(finite, activation_new, torch.zeros_like(activation_new)),
                torch.where(finite, gradient_new, torch.zeros_like(gradient_new)),
            )
            self.finite_updates = finite.to(self.dtype)
        else:
            count = self.finite_updates
            weight = blend_weight(count, finite, decay=decay, cold_iter=cold_iter)
            activation.lerp_(torch.where(finite, activation_new, activation), weight)
            gradient.lerp_(torch.where(finite, gradient_new, gradient), weight)
            self.finite_updates = count + finite.to(count.dtype)
        self.statistics_updates += 1
        return True

    # ------------------------------------------------------------------ curvature (override)
    @property
    def has_curvature(self) -> bool:
        """Whether :meth:`precondition` has what it needs (else it returns the gradient unchanged)."""
        raise NotImplementedError

    def refresh(self, damping: float) -> bool:
        """Recompute decompositions from the running statistics; returns whether that succeeded.

        A failure (non-finite running statistics, a decomposition that raises or fails in float32 and in
        float64) keeps the previous decompositions and is counted in ``decomposition_failures`` and
        ``consecutive_failures``; the caller decides when a factor that stays broken is reset
        (:meth:`reset_statistics`). One host sync per refresh (refreshes are amortised).
        """
        if not self.has_statistics:
            return True
        succeeded = False
        if bool(self._statistics_finite()):
            try:
                succeeded = self._decompose(damping)
            except RuntimeError:  # e.g. a LinAlgError the numerical helpers did not catch
                succeeded = False
        if succeeded:
            self.consecutive_failures = 0
        else:
            self.decomposition_failures += 1
            self.consecutive_failures += 1
        return succeeded

    def _statistics_finite(self) -> Tensor:
        """0-dim bool: whether the running statistics are finite (one reduction per statistic)."""
        activation, gradient = self.running()
        assert activation is not None and gradient is not None
        # a sum is non-finite iff some element is
        return torch.isfinite(activation.sum() + gradient.sum())

    def _decompose(self, damping: float) -> bool:
        """Decompositions from finite running statistics; False (state unchanged) when they fail."""
        return True

    def reset_statistics(self) -> None:
        """Forget the running statistics: the next batches rebuild them from scratch (plain averaging over
        ``cold_iter`` batches again). Decompositions from the last successful refresh stay in use until the
        rebuilt statistics are decomposed."""
        self.set_running(None, None)
        self.finite_updates = None
        self.consecutive_failures = 0

    def clear_curvature(self) -> None:
        """Drop decompositions: the next step recomputes them (e.g. after damping baked into them changed)."""

    def damping_is_baked_in(self) -> bool:
        """True when a changed damping needs a refresh (factored inverses include it)."""
        return False

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        raise NotImplementedError

    def _inverse_scaling(self, gradient_values: Tensor, activation_values: Tensor, damping: float) -> Tensor:
        """``(d_G d_Aᵀ + λ)⁻¹`` for these eigenvalues, kept until they or the damping change: between
        refreshes every step divides by the same matrix, and for small layers its three ops per step are a
        measurable share of the step (keyed on the eigenvalue tensors themselves, so any refresh, load or
        direct assignment of new decompositions invalidates it)."""
        cache = self._inverse_scaling_cache
        if (
            cache is not None
            and cache[0] == damping
            and cache[1] is gradient_values
            and cache[2] is activation_values
        ):
            return cache[3]
        inverse = kfac_math.inverse_eigen_scaling(gradient_values, activation_values, damping)
        self._inverse_scaling_cache = (damping, gradient_values, activation_values, inverse)
        return inverse

    def posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        """``(F̂ + γI)^{-1/2} vec E`` for white noise ``E`` ``(..., d_out, d_in')``: a sample of the Gaussian
        with covariance ``(F̂ + γI)⁻¹`` over the layer's weights (noisy natural gradient), ``F̂`` this
        approximation's Fisher block, from the decomposition it already holds. Without curvature yet
        (``F̂ = 0``) it is the prior alone, ``E / √γ``."""
        if not self.has_curvature:
            return noise.to(self.dtype) / math.sqrt(damping)
        return self._posterior_sample(noise.to(self.dtype), damping)

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        raise NotImplementedError(
            f"curvature {self.name!r} has no posterior sampler; use curvature='eigen' or 'lowrank'"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self.state_tensors}
        state["finite_updates"] = self.finite_updates
        state["statistics_updates"] = self.statistics_updates
        state["decomposition_failures"] = self.decomposition_failures
        state["consecutive_failures"] = self.consecutive_failures
        state["curvature"] = self.name
        return state

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        def to_device(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.to(device=device, dtype=self.dtype)

        for name in self.state_tensors:
            setattr(self, name, to_device(state.get(name)))
        finite_updates = state.get("finite_updates")
        if finite_updates is None and self.has_statistics:
            # state saved before non-finite batches were counted apart: every batch counted
            finite_updates = torch.tensor(float(state["statistics_updates"]))
        self.finite_updates = to_device(finite_updates)
        self.statistics_updates = int(state["statistics_updates"])
        self.decomposition_failures = int(state["decomposition_failures"])
        self.consecutive_failures = int(state.get("consecutive_failures", 0))
        self.reset_pending()


def _running_factor(side: str, shape: str) -> Any:
    """A property reading one side's dense running factor (deferred updates folded in on access) and
    setting it (dropping that side's deferred updates)."""

    def read(self: KroneckerFactors) -> Tensor | None:
        return self._factor(side)

    def write(self: KroneckerFactors, value: Tensor | None) -> None:
        self._set_factor(side, value)

    return property(read, write, doc=f"{shape} (running average; deferred updates folded in on access)")


class KroneckerFactors(CurvatureApproximation):
    """K-FAC's ``A = E[ā āᵀ]`` ``(d_in', d_in')`` and ``G`` ``(d_out, d_out)`` as running averages.

    A call with fewer rows than its factor's side (a wide layer on a small batch) keeps its rows until the
    update and folds them in as a rank-N update ``F ← (1 − w) F + w c RᵀR`` instead of forming ``RᵀR`` and
    blending it in; other calls are reduced to second moments at once. Rank-N updates are deferred: the
    scaled rows of successive updates are stacked (earlier ones rescaled by each later ``√(1 − w)``) and
    folded into ``F`` in one pass once :data:`DEFERRED_ROWS` rows are waiting or when the factor is read
    (``activation_factor`` / ``gradient_factor``, a refresh, ``state_dict``). A pass over a wide ``F``
    costs about the same for 10 rows as for 64 (it is memory-bound), so a 3137-wide factor fed 10 rows per
    update pays one pass per several updates instead of one per update. Same sum, other rounding order.
    """

    state_tensors: ClassVar[tuple[str, ...]] = ("activation_factor", "gradient_factor")
    #: deferred rank-N rows per factor that trigger the fold into the dense factor
    DEFERRED_ROWS: ClassVar[int] = 64

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        # side -> dense factor; side -> (scale of the dense factor, stacked scaled rows) not yet folded in
        self._factors: dict[str, Tensor | None] = {"activation": None, "gradient": None}
        self._deferred: dict[str, tuple[Tensor, list[Tensor]]] = {}
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    # ------------------------------------------------------------------ deferred rank-N updates
    def _factor(self, side: str) -> Tensor | None:
        """The dense running factor of ``side`` with every deferred update folded in."""
        factor = self._factors[side]
        deferred = self._deferred.pop(side, None)
        if deferred is not None and factor is not None:
            scale, rows = deferred
            stacked = rows[0] if len(rows) == 1 else torch.cat(rows)
            factor.mul_(scale).addmm_(stacked.T, stacked)
        return factor

    def _set_factor(self, side: str, value: Tensor | None) -> None:
        self._deferred.pop(side, None)
        self._factors[side] = value

    def _defer_rank_update(self, side: str, scaled_rows: Tensor, weight: Tensor) -> None:
        """``F ← (1 − w) F + RᵀR`` for ``R = scaled_rows`` ``(N, d)``, deferred (see the class docs)."""
        keep = 1.0 - weight
        scale, rows = self._deferred.get(side, (torch.ones_like(weight), []))
        root = keep.sqrt()
        rows = [previous.mul_(root) for previous in rows] + [scaled_rows]
        self._deferred[side] = (scale * keep, rows)
        if sum(len(part) for part in rows) >= self.DEFERRED_ROWS:
            self._factor(side)

    def _has_side(self, side: str) -> bool:
        return self._factors[side] is not None

    def _start_side(self, side: str, dim: int, device: torch.device) -> None:
        """An empty (zero) running factor, before the first batch is folded in."""
        self._set_factor(side, torch.zeros(dim, dim, dtype=self.dtype, device=device))

    def _dim(self, side: str) -> int:
        return self.activation_dim if side == "activation" else self.gradient_dim

    def _keeps_rows(self, side: str, count: int) -> bool:
        """Whether ``count`` rows of ``side`` are kept for a rank-N update (else reduced to a moment)."""
        return count < self._dim(side)

    def _side_sum(self, side: str) -> Tensor:
        """The sum of one side's running statistic (finite iff every entry is)."""
        factor = self._factor(side)
        assert factor is not None
        return factor.sum()

    def _statistics_finite(self) -> Tensor:
        return torch.isfinite(self._side_sum("activation") + self._side_sum("gradient"))

    @property
    def has_statistics(self) -> bool:
        return self._has_side("activation") and self._has_side("gradient")

    activation_factor = _running_factor("activation", "``A`` ``(d_in', d_in')``")
    gradient_factor = _running_factor("gradient", "``G`` ``(d_out, d_out)``")

    def reset_pending(self) -> None:
        # each side: a list of (rows R, coefficient c) with statistic c Σ RᵀR (rows already padded with the
        # homogeneous 1), or a reduced statistic; A averages its calls, G sums them
        self._activation_calls: list[tuple[Tensor, float, int]] = []  # (statistic, c, rows of the call)
        self._gradient_calls: list[tuple[Tensor, float]] = []

    def observe_activations(self, rows: Tensor) -> None:
        rows = rows.to(self.dtype)
        count = rows.shape[0]
        # few rows: keep them (with the homogeneous 1) for a rank-N update
        if self._keeps_rows("activation", count):
            if self.has_bias:
                rows = torch.cat([rows, rows.new_ones(count, 1)], dim=1)
            self._activation_calls.append((rows, 1.0 / count, count))
        else:  # many rows: reduce now (the border trick avoids copying them to append the 1)
            moment = kfac_math.second_moment(rows, with_ones=self.has_bias)
            self._activation_calls.append((moment, 0.0, count))

    def observe_gradients(self, rows: Tensor, examples: int, weight: float, grad_scale: float) -> None:
        rows = rows.to(self.dtype)
        # weight sharing: the per-example G sums over the calls of the module (K-FAC "expand")
        if self._keeps_rows("gradient", rows.shape[0]):  # few rows: kept for a rank-N update
            self._gradient_calls.append((rows, weight * grad_scale * grad_scale / examples))
            return
        factor = kfac_math.gradient_factor(rows, batch_size=examples, grad_scale=grad_scale)
        self._gradient_calls.append((factor * weight if weight != 1.0 else factor, 0.0))

    def _activation_statistic(self) -> tuple[Tensor, float]:
        if len(self._activation_calls) == 1:
            statistic, coefficient, _ = self._activation_calls[0]
            return statistic, coefficient
        # several calls (weight sharing): the row-weighted mean of their second moments
        total = sum(rows for _, _, rows in self._activation_calls)
        moments = [
            self._dense(statistic, c) * (rows / total) for statistic, c, rows in self._activation_calls
        ]
        return torch.stack(moments).sum(dim=0), 0.0

    def _gradient_statistic(self) -> tuple[Tensor, float]:
        if len(self._gradient_calls) == 1:
            return self._gradient_calls[0]
        return torch.stack([self._dense(statistic, c) for statistic, c in self._gradient_calls]).sum(
            dim=0
        ), 0.0

    @staticmethod
    def _dense(rows: Tensor, coefficient: float) -> Tensor:
        return rows if coefficient == 0.0 else torch.mm(rows.T, rows).mul_(coefficient)

    def pending(self) -> tuple[Tensor, Tensor] | None:
        if not self._activation_calls or not self._gradient_calls:
            return None
        activation, a_coefficient = self._activation_statistic()
        gradient, g_coefficient = self._gradient_statistic()
        return self._dense(activation, a_coefficient), self._dense(gradient, g_coefficient)

    def update(self, *, decay: float, cold_iter: int) -> bool:
        if not self._activation_calls or not self._gradient_calls:
            return False
        sides = [
            ("activation", *self._activation_statistic()),
            ("gradient", *self._gradient_statistic()),
        ]
        if not self.has_statistics or self.finite_updates is None:
            # Start from zero factors with no finite batch counted: the blend weight of a finite first
            # batch is then 1 (it becomes the statistic), of a non-finite one 0 (the factors stay zero, so
            # the damping alone acts). Rows are folded in as a rank-N update, so a wide factor fed few
            # rows never holds a dense RᵀR beside itself.
            device = sides[0][1].device
            for side in ("activation", "gradient"):
                self._start_side(side, self._dim(side), device)
            self.finite_updates = torch.zeros((), dtype=self.dtype, device=device)
        finite = torch.isfinite(sides[0][1].sum()) & torch.isfinite(sides[1][1].sum())
        count = self.finite_updates
        weight = blend_weight(count, finite, decay=decay, cold_iter=cold_iter)
        for side, statistic, coefficient in sides:
            if coefficient == 0.0:  # a reduced statistic: blend it in
                factor = self._factor(side)
                assert factor is not None
                factor.lerp_(torch.where(finite, statistic, factor), weight)
            else:  # rows: a rank-N update; a non-finite batch has weight 0 and its rows are zeroed
                scaled = torch.nan_to_num(statistic, nan=0.0, posinf=0.0, neginf=0.0) * torch.sqrt(
                    weight * coefficient
                )
                self._defer_rank_update(side, scaled, weight)
        self.finite_updates = count + finite.to(count.dtype)
        self.statistics_updates += 1
        return True

    def running(self) -> tuple[Tensor | None, Tensor | None]:
        return self.activation_factor, self.gradient_factor

    def set_running(self, activation: Tensor | None, gradient: Tensor | None) -> None:
        self.activation_factor, self.gradient_factor = activation, gradient


class EigenKFAC(KroneckerFactors):
    """K-FAC with eigendecompositions and exact Tikhonov damping: ``Δ = (A ⊗ G + λI)⁻¹ vec(∇W)``."""

    name = "eigen"

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        self.activation_eigen: Eigendecomposition | None = None
        self.gradient_eigen: Eigendecomposition | None = None
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    @property
    def has_curvature(self) -> bool:
        return self.activation_eigen is not None and self.gradient_eigen is not None

    def _decompose(self, damping: float) -> bool:
        assert self.activation_factor is not None and self.gradient_factor is not None
        activation_eigen = kfac_math.safe_eigh(self.activation_factor)
        gradient_eigen = kfac_math.safe_eigh(self.gradient_factor)
        if activation_eigen is None or gradient_eigen is None:
            return False
        self.activation_eigen, self.gradient_eigen = activation_eigen, gradient_eigen
        return True

    def clear_curvature(self) -> None:
        self.activation_eigen = self.gradient_eigen = None

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        grad = grad_matrix if grad_matrix.dtype == self.dtype else grad_matrix.to(self.dtype)
        activation, gradient = self.activation_eigen, self.gradient_eigen
        if activation is None or gradient is None:
            return grad
        # = kfac_math.eigen_precondition, with the divisor kept between refreshes
        inverse = self._inverse_scaling(gradient.eigenvalues, activation.eigenvalues, damping)
        return kfac_math.eigenbasis_rescale(grad, activation.eigenvectors, gradient.eigenvectors, inverse)

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        assert self.activation_eigen is not None and self.gradient_eigen is not None
        return kfac_math.eigen_posterior_sample(noise, self.activation_eigen, self.gradient_eigen, damping)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for prefix in ("activation", "gradient"):
            eigen: Eigendecomposition | None = getattr(self, f"{prefix}_eigen")
            state[f"{prefix}_eigenvalues"] = None if eigen is None else eigen.eigenvalues
            state[f"{prefix}_eigenvectors"] = None if eigen is None else eigen.eigenvectors
        return state

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        super().load_state_dict(state, device=device)
        for prefix in ("activation", "gradient"):
            values, vectors = state.get(f"{prefix}_eigenvalues"), state.get(f"{prefix}_eigenvectors")
            eigen = None
            if values is not None and vectors is not None:
                eigen = Eigendecomposition(
                    values.to(device=device, dtype=self.dtype), vectors.to(device=device, dtype=self.dtype)
                )
            setattr(self, f"{prefix}_eigen", eigen)


class EigenbasisKFAC(EigenKFAC):
    """EKFAC (George, Laurent, Bouthillier, Ballas & Vincent 2018): K-FAC's eigenbasis ``Q_A ⊗ Q_G`` with the
    eigenvalues ``d_G d_Aᵀ`` replaced by the second moments of per-example gradients in that basis,
    ``s = E_n[(Q_Gᵀ ∇W_n Q_A)²]`` — the best diagonal in the basis (Frobenius), which K-FAC's is only when a
    layer's inputs and output gradients are independent: ``Δ = Q_G [(Q_Gᵀ ∇W Q_A) / (s + λ)] Q_Aᵀ``.

    The basis is refreshed from the running factors as in :class:`EigenKFAC`; ``s`` is re-estimated in it
    from the latest batch at each refresh and then averaged over the batches until the next one (plainly at
    first, with ``factor_decay`` once more than ``1/(1 − decay)`` batches are in). Per-example gradients
    ``g_n ā_nᵀ`` need one row per example on both sides: a Linear layer called once per forward. Blocks
    without them (convolutions, whose per-example gradient sums over positions, and modules called several
    times) keep K-FAC's ``d_G d_Aᵀ``.
    """

    name = "ekfac"
    state_tensors: ClassVar[tuple[str, ...]] = (*EigenKFAC.state_tensors, "scaling")

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        self.scaling: Tensor | None = None  # s (d_out, d_in') in the current basis
        self._scaling_batches = 0  # batches averaged into s since the last refresh
        # the latest finite batch's per-example rows (ā_n with the 1, g_n scaled), for the next refresh
        self._example_rows: tuple[Tensor, Tensor] | None = None
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    def reset_pending(self) -> None:
        super().reset_pending()
        self._pending_activation_rows: list[Tensor] = []
        self._pending_gradient_rows: list[tuple[Tensor, int]] = []

    def observe_activations(self, rows: Tensor) -> None:
        super().observe_activations(rows)
        rows = rows.to(self.dtype)
        if self.has_bias:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        self._pending_activation_rows.append(rows)

    def observe_gradients(self, rows: Tensor, examples: int, weight: float, grad_scale: float) -> None:
        super().observe_gradients(rows, examples, weight, grad_scale)
        # scaled so that G = (1/N) Σ_n g_n g_nᵀ, as KroneckerFactors folds it in
        scaled = rows.to(self.dtype) * (grad_scale * math.sqrt(weight))
        self._pending_gradient_rows.append((scaled, examples))

    def _batch_example_rows(self) -> tuple[Tensor, Tensor] | None:
        """This batch's (ā_n, g_n) rows when there is one row per example on each side, else None."""
        if len(self._pending_activation_rows) != 1 or len(self._pending_gradient_rows) != 1:
            return None
        activation_rows = self._pending_activation_rows[0]
        gradient_rows, examples = self._pending_gradient_rows[0]
        if activation_rows.shape[0] != examples or gradient_rows.shape[0] != examples:
            return None
        return activation_rows, gradient_rows

    def update(self, *, decay: float, cold_iter: int) -> bool:
        example_rows = self._batch_example_rows()
        if not super().update(decay=decay, cold_iter=cold_iter):
            return False
        if example_rows is None:
            return True
        activation_rows, gradient_rows = example_rows
        finite = torch.isfinite(activation_rows.sum() + gradient_rows.sum())
        if self.scaling is not None and self.has_curvature:
            assert self.activation_eigen is not None and self.gradient_eigen is not None
            batch_scaling = kfac_math.eigenbasis_scaling(
                activation_rows,
                gradient_rows,
                self.activation_eigen.eigenvectors,
                self.gradient_eigen.eigenvectors,
            )
            self._scaling_batches += 1
            weight = max(1.0 - decay, 1.0 / self._scaling_batches)
            self.scaling.lerp_(torch.where(finite, batch_scaling, self.scaling), weight)
        # kept for the next refresh (a non-finite batch leaves the previous rows)
        if self._example_rows is None:
            self._example_rows = (activation_rows, gradient_rows)
        else:
            previous_activation, previous_gradient = self._example_rows
            self._example_rows = (
                torch.where(finite, activation_rows, previous_activation)
                if previous_activation.shape == activation_rows.shape
                else activation_rows,
                torch.where(finite, gradient_rows, previous_gradient)
                if previous_gradient.shape == gradient_rows.shape
                else gradient_rows,
            )
        return True

    def _decompose(self, damping: float) -> bool:
        if not super()._decompose(damping):
            return False
        assert self.activation_eigen is not None and self.gradient_eigen is not None
        scaling: Tensor | None = None
        if self._example_rows is not None:
            activation_rows, gradient_rows = self._example_rows
            scaling = kfac_math.eigenbasis_scaling(
                activation_rows,
                gradient_rows,
                self.activation_eigen.eigenvectors,
                self.gradient_eigen.eigenvectors,
            )
            if not bool(torch.isfinite(scaling.sum())):  # one host sync; refreshes are amortised
                scaling = None
        # without (finite) per-example rows, e.g. for a convolution: K-FAC's own eigenvalues
        self._scaling_batches = 0 if scaling is None else 1
        self.scaling = (
            torch.outer(self.gradient_eigen.eigenvalues, self.activation_eigen.eigenvalues)
            if scaling is None
            else scaling
        )
        return True

    def clear_curvature(self) -> None:
        super().clear_curvature()
        self.scaling = None

    @property
    def has_curvature(self) -> bool:
        return super().has_curvature and self.scaling is not None

    def _basis(self) -> tuple[Tensor, Tensor, Tensor]:
        """(Q_A, Q_G, s) of the current curvature."""
        assert self.activation_eigen is not None and self.gradient_eigen is not None
        assert self.scaling is not None
        return self.activation_eigen.eigenvectors, self.gradient_eigen.eigenvectors, self.scaling

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        grad = grad_matrix.to(self.dtype)
        if not self.has_curvature:
            return grad
        return kfac_math.eigenbasis_precondition(grad, *self._basis(), damping)

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        return kfac_math.eigenbasis_posterior_sample(noise, *self._basis(), damping)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scaling_batches"] = self._scaling_batches
        state["example_activation_rows"] = None if self._example_rows is None else self._example_rows[0]
        state["example_gradient_rows"] = None if self._example_rows is None else self._example_rows[1]
        return state

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        super().load_state_dict(state, device=device)
        self._scaling_batches = int(state.get("scaling_batches", 0))
        activation_rows = state.get("example_activation_rows")
        gradient_rows = state.get("example_gradient_rows")
        self._example_rows = (
            None
            if activation_rows is None or gradient_rows is None
            else (
                activation_rows.to(device=device, dtype=self.dtype),
                gradient_rows.to(device=device, dtype=self.dtype),
            )
        )

    def reset_statistics(self) -> None:
        super().reset_statistics()
        self._example_rows = None


class CholeskyKFAC(KroneckerFactors):
    """K-FAC with factored damping: ``(G + (√λ/π) I)⁻¹ ∇W (A + π√λ I)⁻¹`` from Cholesky inverses."""

    name = "cholesky"
    state_tensors = ("activation_factor", "gradient_factor", "activation_inverse", "gradient_inverse")

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        self.activation_inverse: Tensor | None = None
        self.gradient_inverse: Tensor | None = None
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    @property
    def has_curvature(self) -> bool:
        return self.activation_inverse is not None and self.gradient_inverse is not None

    def damping_is_baked_in(self) -> bool:
        return True

    def _decompose(self, damping: float) -> bool:
        assert self.activation_factor is not None and self.gradient_factor is not None
        pi = kfac_math.factored_damping_pi(self.activation_factor, self.gradient_factor)
        sqrt_damping = damping**0.5
        activation_inverse = kfac_math.safe_damped_inverse(self.activation_factor, pi * sqrt_damping)
        gradient_inverse = kfac_math.safe_damped_inverse(self.gradient_factor, sqrt_damping / pi)
        if activation_inverse is None or gradient_inverse is None:
            return False
        self.activation_inverse, self.gradient_inverse = activation_inverse, gradient_inverse
        return True

    def clear_curvature(self) -> None:
        self.activation_inverse = self.gradient_inverse = None

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        grad = grad_matrix.to(self.dtype)
        if self.activation_inverse is None or self.gradient_inverse is None:
            return grad
        return kfac_math.factored_precondition(grad, self.activation_inverse, self.gradient_inverse)

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        """The covariance this kind preconditions with: ``(A + π√γ I)⁻¹ ⊗ (G + (√γ/π) I)⁻¹`` (factored
        damping, baked into the inverses at the last refresh: ``damping`` is the one they were built with)."""
        assert self.activation_inverse is not None and self.gradient_inverse is not None
        return kfac_math.factored_posterior_sample(noise, self.activation_inverse, self.gradient_inverse)


class LowRankKFAC(KroneckerFactors):
    """K-FAC whose factors keep their top-``rank`` eigenpairs plus an isotropic remainder (exact Tikhonov
    damping of that approximation); factors no wider than ``rank + 16`` are decomposed exactly.

    With ``sketch_min_dim``, a factor at least that wide is never held dense: it is kept as a sketch, rows
    ``B`` ``(m, d)`` with ``BᵀB`` approximating the running factor, plus its exact trace. A batch's rows
    ``R`` (scaled as for a rank-N update) are appended to the decayed sketch, ``B ← [√(1 − w) B; R]``,
    and once it has more than ``2ℓ`` rows (``ℓ = 2 (rank + 16)``) it is compressed to the ``ℓ`` rows of its
    best rank-``ℓ`` approximation (:func:`~acktr.curvature.kfac_math.compress_sketch`). A refresh takes the
    top ``rank`` eigenpairs of ``BᵀB`` and spreads the rest of the trace isotropically
    (:func:`~acktr.curvature.kfac_math.sketch_low_rank_eigh`). Memory ``O(ℓ d)`` instead of ``O(d²)``
    (the Nature CNN's 3137² activation factor: 39 MB → 2 MB), and no pass over a dense ``d × d`` matrix.
    Until the first compression the sketch is exact; after it, the top of the spectrum is kept and what
    the compressions dropped lands in the isotropic rest. ``activation_factor`` / ``gradient_factor`` of a
    sketched side materialise ``BᵀB + (tr − ‖B‖²_F)/d · I`` (same trace) for inspection.
    """

    name = "lowrank"
    #: columns beyond ``rank`` in the randomized range finder (as :func:`kfac_math.low_rank_eigh`)
    OVERSAMPLE: ClassVar[int] = 16

    def __init__(
        self,
        activation_dim: int,
        gradient_dim: int,
        *,
        has_bias: bool,
        dtype: torch.dtype,
        rank: int = 64,
        sketch_min_dim: int | None = None,
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"KFAC: rank must be an int >= 1, got {rank!r}")
        if sketch_min_dim is not None and (
            isinstance(sketch_min_dim, bool) or not isinstance(sketch_min_dim, int) or sketch_min_dim < 1
        ):
            raise ValueError(f"KFAC: sketch_min_dim must be None or an int >= 1, got {sketch_min_dim!r}")
        self.rank = rank
        self.sketch_min_dim = sketch_min_dim
        self.sketch_rows = 2 * (rank + self.OVERSAMPLE)
        # side -> (sketch rows B (m, d), exact trace 0-dim) for the sketched sides
        self._sketches: dict[str, tuple[Tensor, Tensor] | None] = {"activation": None, "gradient": None}
        self.activation_lowrank: LowRankEigen | None = None
        self.gradient_lowrank: LowRankEigen | None = None
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    # ------------------------------------------------------------------ sketched sides
    def sketched(self, side: str) -> bool:
        """Whether ``side`` (``"activation"`` or ``"gradient"``) is kept as a sketch."""
        dim = self._dim(side)
        return (
            self.sketch_min_dim is not None
            and dim >= self.sketch_min_dim
            and dim > self.rank + self.OVERSAMPLE
        )

    def _sketch(self, side: str) -> tuple[Tensor, Tensor] | None:
        """``(B, trace)`` of a sketched side that has statistics; None otherwise."""
        return self._sketches[side] if self.sketched(side) else None

    def _has_side(self, side: str) -> bool:
        return self._sketches[side] is not None if self.sketched(side) else super()._has_side(side)

    def _start_side(self, side: str, dim: int, device: torch.device) -> None:
        if not self.sketched(side):
            return super()._start_side(side, dim, device)
        self._sketches[side] = (
            torch.zeros(0, dim, dtype=self.dtype, device=device),
            torch.zeros((), dtype=self.dtype, device=device),
        )

    def _keeps_rows(self, side: str, count: int) -> bool:
        return self.sketched(side) or super()._keeps_rows(side, count)

    def _activation_statistic(self) -> tuple[Tensor, float]:
        if not self.sketched("activation") or len(self._activation_calls) == 1:
            return super()._activation_statistic()
        # several calls (weight sharing): the row-weighted mean as one stack of scaled rows
        total = sum(rows for _, _, rows in self._activation_calls)
        parts = [statistic * (c * rows / total) ** 0.5 for statistic, c, rows in self._activation_calls]
        return torch.cat(parts), 1.0

    def _gradient_statistic(self) -> tuple[Tensor, float]:
        if not self.sketched("gradient") or len(self._gradient_calls) == 1:
            return super()._gradient_statistic()
        return torch.cat([statistic * c**0.5 for statistic, c in self._gradient_calls]), 1.0

    def _defer_rank_update(self, side: str, scaled_rows: Tensor, weight: Tensor) -> None:
        if not self.sketched(side):
            return super()._defer_rank_update(side, scaled_rows, weight)
        sketch = self._sketches[side]
        assert sketch is not None
        rows, trace = sketch
        keep = 1.0 - weight
        rows = torch.cat([rows * keep.sqrt(), scaled_rows])
        trace = trace * keep + scaled_rows.square().sum()
        if rows.shape[0] > 2 * self.sketch_rows:
            rows = kfac_math.compress_sketch(rows, self.sketch_rows)
        self._sketches[side] = (rows, trace)

    def _factor(self, side: str) -> Tensor | None:
        if not self.sketched(side):
            return super()._factor(side)
        sketch = self._sketches[side]
        if sketch is None:
            return None
        return self._dense_from_sketch(*sketch)

    @staticmethod
    def _dense_from_sketch(rows: Tensor, trace: Tensor) -> Tensor:
        """``BᵀB + (tr − ‖B‖²_F)/d · I`` ``(d, d)``: the sketch with its dropped trace spread evenly."""
        dim = rows.shape[1]
        rest = (trace - rows.square().sum()).clamp_min(0.0) / dim
        return torch.addmm(torch.eye(dim, dtype=rows.dtype, device=rows.device) * rest, rows.T, rows)

    def _set_factor(self, side: str, value: Tensor | None) -> None:
        if not self.sketched(side):
            return super()._set_factor(side, value)
        if value is None:
            self._sketches[side] = None
            return
        # a dense factor (e.g. carried over from another curvature kind): its top part as sketch rows
        decomposition = kfac_math.low_rank_eigh(value, self.sketch_rows)
        if decomposition is None:
            raise ValueError(f"LowRankKFAC: cannot sketch a non-finite {side} factor")
        rows = decomposition.eigenvalues.sqrt()[:, None] * decomposition.eigenvectors.T
        self._sketches[side] = (rows.to(self.dtype), torch.diagonal(value).sum().to(self.dtype))

    def _side_sum(self, side: str) -> Tensor:
        sketch = self._sketch(side)
        return super()._side_sum(side) if sketch is None else sketch[0].sum() + sketch[1]

    # ------------------------------------------------------------------ curvature
    @property
    def has_curvature(self) -> bool:
        return self.activation_lowrank is not None and self.gradient_lowrank is not None

    def _decompose_side(self, side: str, previous: LowRankEigen | None) -> LowRankEigen | None:
        sketch = self._sketch(side)
        if sketch is not None:
            return kfac_math.sketch_low_rank_eigh(sketch[0], sketch[1], self._dim(side), self.rank)
        factor = self._factor(side)
        assert factor is not None
        # each refresh continues the subspace iteration from the previous eigenvectors (one product)
        return kfac_math.low_rank_eigh(
            factor, self.rank, start=None if previous is None else previous.eigenvectors
        )

    def _decompose(self, damping: float) -> bool:
        activation = self._decompose_side("activation", self.activation_lowrank)
        gradient = self._decompose_side("gradient", self.gradient_lowrank)
        if activation is None or gradient is None:
            return False
        self.activation_lowrank, self.gradient_lowrank = activation, gradient
        return True

    def clear_curvature(self) -> None:
        self.activation_lowrank = self.gradient_lowrank = None

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        grad = grad_matrix if grad_matrix.dtype == self.dtype else grad_matrix.to(self.dtype)
        activation, gradient = self.activation_lowrank, self.gradient_lowrank
        if activation is None or gradient is None:
            return grad
        if activation.full_rank and gradient.full_rank:  # exact K-FAC (narrow factors): the short form
            inverse = self._inverse_scaling(gradient.eigenvalues, activation.eigenvalues, damping)
            return kfac_math.eigenbasis_rescale(grad, activation.eigenvectors, gradient.eigenvectors, inverse)
        return kfac_math.low_rank_precondition(grad, activation, gradient, damping)

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        assert self.activation_lowrank is not None and self.gradient_lowrank is not None
        return kfac_math.low_rank_posterior_sample(
            noise, self.activation_lowrank, self.gradient_lowrank, damping
        )

    def state_dict(self) -> dict[str, Any]:
        sketches = {side: self._sketches[side] for side in ("activation", "gradient") if self.sketched(side)}
        state = super().state_dict()
        state["rank"] = self.rank
        for side, sketch in sketches.items():  # the sketch, not a dense materialisation
            state[f"{side}_factor"] = None
            state[f"{side}_sketch"] = None if sketch is None else (sketch[0].clone(), sketch[1].clone())
        for prefix in ("activation", "gradient"):
            decomposition: LowRankEigen | None = getattr(self, f"{prefix}_lowrank")
            state[f"{prefix}_lowrank"] = None if decomposition is None else tuple(decomposition)
        return state

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        super().load_state_dict(state, device=device)
        for side in ("activation", "gradient"):
            saved_sketch = state.get(f"{side}_sketch")
            if saved_sketch is None:
                continue
            rows, trace = (t.to(device=device, dtype=self.dtype) for t in saved_sketch)
            if self.sketched(side):
                self._sketches[side] = (rows, trace)
            else:  # saved sketched, loaded without sketching: materialise it
                super()._set_factor(side, self._dense_from_sketch(rows, trace))
        for prefix in ("activation", "gradient"):
            saved = state.get(f"{prefix}_lowrank")
            value = None
            if saved is not None:
                value = LowRankEigen(*(t.to(device=device, dtype=self.dtype) for t in saved))
            setattr(self, f"{prefix}_lowrank", value)


class KroneckerVectors(CurvatureApproximation):
    """Eva: running means ``ā`` ``(d_in',)`` and ``ḡ`` ``(d_out,)`` stand for ``A ≈ ā āᵀ`` and ``G ≈ ḡ ḡᵀ``.

    ``ḡ`` is scaled like K-FAC's ``G``: for rows ``r`` with ``G = (w/B) Σ r rᵀ``,
    ``ḡ = sqrt(w N / B) · mean(r)``, i.e. ``ḡ ḡᵀ`` replaces each row's second moment by the outer product of
    the mean row.
    """

    name = "eva"
    state_tensors: ClassVar[tuple[str, ...]] = ("activation_vector", "gradient_vector")

    def __init__(self, activation_dim: int, gradient_dim: int, *, has_bias: bool, dtype: torch.dtype) -> None:
        self.activation_vector: Tensor | None = None
        self.gradient_vector: Tensor | None = None
        super().__init__(activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)

    def reset_pending(self) -> None:
        self._activation_mean: Tensor | None = None
        self._activation_rows = 0
        self._gradient_sum: Tensor | None = None

    def observe_activations(self, rows: Tensor) -> None:
        rows = rows.to(self.dtype)
        mean = rows.mean(dim=0)
        if self.has_bias:
            mean = torch.cat([mean, mean.new_ones(1)])
        count = rows.shape[0]
        if self._activation_mean is None:
            self._activation_mean = mean
        else:
            self._activation_mean.lerp_(mean, count / (self._activation_rows + count))
        self._activation_rows += count

    def observe_gradients(self, rows: Tensor, examples: int, weight: float, grad_scale: float) -> None:
        rows = rows.to(self.dtype)
        vector = rows.mean(dim=0) * (grad_scale * math.sqrt(weight * rows.shape[0] / examples))
        self._gradient_sum = vector if self._gradient_sum is None else self._gradient_sum.add_(vector)

    def pending(self) -> tuple[Tensor, Tensor] | None:
        if self._activation_mean is None or self._gradient_sum is None:
            return None
        return self._activation_mean, self._gradient_sum

    def running(self) -> tuple[Tensor | None, Tensor | None]:
        return self.activation_vector, self.gradient_vector

    def set_running(self, activation: Tensor | None, gradient: Tensor | None) -> None:
        self.activation_vector, self.gradient_vector = activation, gradient

    @property
    def has_curvature(self) -> bool:
        return self.has_statistics

    def precondition(self, grad_matrix: Tensor, damping: float) -> Tensor:
        grad = grad_matrix.to(self.dtype)
        if self.activation_vector is None or self.gradient_vector is None:
            return grad
        return kfac_math.kronecker_vector_precondition(
            grad, self.activation_vector, self.gradient_vector, damping
        )

    def _posterior_sample(self, noise: Tensor, damping: float) -> Tensor:
        assert self.activation_vector is not None and self.gradient_vector is not None
        return kfac_math.kronecker_vector_posterior_sample(
            noise, self.activation_vector, self.gradient_vector, damping
        )


APPROXIMATIONS: dict[str, type[CurvatureApproximation]] = {
    cls.name: cls for cls in (EigenKFAC, EigenbasisKFAC, CholeskyKFAC, LowRankKFAC, KroneckerVectors)
}


def make_approximation(
    name: str,
    activation_dim: int,
    gradient_dim: int,
    *,
    has_bias: bool,
    dtype: torch.dtype,
    rank: int,
    sketch_min_dim: int | None = None,
) -> CurvatureApproximation:
    """An approximation of kind ``name`` (see :data:`APPROXIMATIONS`) for one layer (``rank`` and
    ``sketch_min_dim`` apply to ``"lowrank"``)."""
    if name not in APPROXIMATIONS:
        raise ValueError(f"KFAC: curvature must be one of {', '.join(APPROXIMATIONS)}, got {name!r}")
    if name == "lowrank":
        return LowRankKFAC(
            activation_dim,
            gradient_dim,
            has_bias=has_bias,
            dtype=dtype,
            rank=rank,
            sketch_min_dim=sketch_min_dim,
        )
    return APPROXIMATIONS[name](activation_dim, gradient_dim, has_bias=has_bias, dtype=dtype)


__all__ = [
    "APPROXIMATIONS",
    "CholeskyKFAC",
    "CurvatureApproximation",
    "EigenKFAC",
    "EigenbasisKFAC",
    "KroneckerFactors",
    "KroneckerVectors",
    "LowRankKFAC",
    "make_approximation",
]
