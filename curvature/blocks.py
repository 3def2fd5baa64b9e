"""A K-FAC block: one layer's adapter (:mod:`acktr.curvature.layers`) paired with its curvature
approximation (:mod:`acktr.curvature.approximations`).

The block is the unit :class:`~acktr.curvature.KFAC` iterates over: it feeds the adapter's rows to the
approximation during ``collect_statistics()`` and hands the layer's gradient matrix through the
approximation's ``precondition``. The approximation's attributes (``activation_factor``,
``gradient_eigen``, ...) are readable on the block for inspection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from acktr.curvature.approximations import CurvatureApproximation
from acktr.curvature.layers import LayerAdapter


class KFACBlock:
    """K-FAC state of one layer: ``F_layer ≈ A ⊗ G`` (or whatever the approximation keeps).

    Attributes:
        module / name: the layer and its qualified name in the model.
        layer: the :class:`LayerAdapter` (how the layer yields rows and reads/writes its gradient).
        approximation: the :class:`CurvatureApproximation` (statistics, decompositions, preconditioning).
    """

    def __init__(
        self, module: nn.Module, name: str, layer: LayerAdapter, approximation: CurvatureApproximation
    ):
        self.module = module
        self.name = name
        self.layer = layer
        self.approximation = approximation

    def __getattr__(self, name: str) -> Any:
        # read access to the approximation's state (activation_factor, gradient_eigen, finite_updates, ...)
        approximation = self.__dict__.get("approximation")
        if approximation is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(approximation, name)

    @property
    def factor_dtype(self) -> torch.dtype:
        return self.approximation.dtype

    # ----------------------------------------------------------------- layer
    def parameters(self) -> list[nn.Parameter]:
        return self.layer.parameters()

    def factor_dims(self) -> tuple[int, int]:
        return self.layer.factor_dims()

    def gradient_matrix(self) -> Tensor | None:
        return self.layer.gradient_matrix()

    def write_gradient_matrix(self, matrix: Tensor) -> None:
        self.layer.write_gradient_matrix(matrix)

    # ----------------------------------------------------------------- statistics
    def reset_accumulators(self) -> None:
        self.approximation.reset_pending()

    def accumulate_activations(self, inputs: Tensor) -> None:
        self.approximation.observe_activations(self.layer.activation_rows(inputs.detach()))

    def accumulate_gradients(self, output_grads: Tensor, *, mean_reduction: bool) -> None:
        rows, examples, weight = self.layer.gradient_rows(output_grads.detach())
        grad_scale = float(examples) if mean_reduction else 1.0
        self.approximation.observe_gradients(rows, examples, weight, grad_scale)

    def update_factors(self, *, decay: float, cold_iter: int) -> bool:
        return self.approximation.update(decay=decay, cold_iter=cold_iter)

    @property
    def has_factors(self) -> bool:
        return self.approximation.has_statistics

    @property
    def statistics_updates(self) -> int:
        return self.approximation.statistics_updates

    # ----------------------------------------------------------------- curvature
    @property
    def has_curvature(self) -> bool:
        return self.approximation.has_curvature

    def clear_curvature(self) -> None:
        self.approximation.clear_curvature()

    def update_curvature(self, *, damping: float) -> bool:
        """Refresh the decompositions; on failure the previous ones are kept and counted. Returns success."""
        return self.approximation.refresh(damping)

    def natural_gradient(self, grad_matrix: Tensor, *, damping: float) -> Tensor:
        """The approximation's damped natural gradient ``(d_out, d_in')`` (the gradient itself before the
        first successful refresh).

        A non-finite result from a finite gradient (broken curvature, e.g. overflowing statistics) falls back
        to the gradient itself, without a host sync; the trust region still bounds that step. A non-finite
        gradient stays non-finite, so the optimizer can skip the update.
        """
        direction = self.approximation.precondition(grad_matrix, damping)
        # a sum is non-finite iff some entry is (or it overflows, when the direction is useless anyway)
        fallback = grad_matrix if grad_matrix.dtype == direction.dtype else grad_matrix.to(direction.dtype)
        return torch.where(torch.isfinite(direction.sum()), direction, fallback)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**self.approximation.state_dict(), "kind": self.layer.kind}

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        if state.get("kind") != self.layer.kind:
            raise ValueError(
                f"K-FAC state for layer {self.name!r} is a {state.get('kind')} block but the model has a "
                f"{self.layer.kind}: load state saved from the same model architecture"
            )
        saved = state.get("curvature", self.approximation.name)
        if saved != self.approximation.name:
            raise ValueError(
                f"K-FAC state for layer {self.name!r} was saved with curvature={saved!r}, this KFAC uses "
                f"{self.approximation.name!r}: build KFAC with curvature={saved!r} to load it"
            )
        self.approximation.load_state_dict(state, device=device)


__all__ = ["KFACBlock"]
