"""acktr.curvature: a K-FAC curvature module for any PyTorch model (knows nothing about RL).

Two axes, paired per layer by :class:`KFAC`:

- :mod:`acktr.curvature.layers` — layer adapters: how a module kind (Linear, Conv2d, ...) yields rows of
  inputs and output gradients and reads/writes its gradient as a matrix (``@register_layer``);
- :mod:`acktr.curvature.approximations` — curvature approximations: what is kept from those rows and how it
  preconditions (``"eigen"``, ``"cholesky"``, ``"lowrank"``, ``"eva"``);
- :mod:`acktr.curvature.blocks` — :class:`KFACBlock`, one layer's adapter + approximation;
- :class:`KFAC` — the preconditioner: statistics hooks, schedules, damping, KL trust regions, state;
- :mod:`acktr.curvature.kfac_math` — the math as pure functions with shape contracts.
"""

from acktr.curvature.approximations import (
    APPROXIMATIONS,
    CholeskyKFAC,
    CurvatureApproximation,
    EigenKFAC,
    KroneckerFactors,
    KroneckerVectors,
    LowRankKFAC,
)
from acktr.curvature.blocks import KFACBlock
from acktr.curvature.kfac_math import Eigendecomposition, LowRankEigen
from acktr.curvature.layers import (
    LAYER_REGISTRY,
    Conv2dAdapter,
    LayerAdapter,
    LinearAdapter,
    adapter_class_for,
    register_layer,
)
from acktr.curvature.preconditioner import KFAC, PreconditionInfo

__all__ = [
    "APPROXIMATIONS",
    "KFAC",
    "LAYER_REGISTRY",
    "CholeskyKFAC",
    "Conv2dAdapter",
    "CurvatureApproximation",
    "EigenKFAC",
    "Eigendecomposition",
    "KFACBlock",
    "KroneckerFactors",
    "KroneckerVectors",
    "LayerAdapter",
    "LinearAdapter",
    "LowRankEigen",
    "LowRankKFAC",
    "PreconditionInfo",
    "adapter_class_for",
    "register_layer",
]
