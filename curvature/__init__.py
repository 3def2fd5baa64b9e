"""acktr.curvature: a K-FAC curvature module for any PyTorch model (knows nothing about RL).

- :class:`KFAC` — the preconditioner (statistics hooks, damping, amortised inverses, KL trust region).
- :mod:`acktr.curvature.blocks` — one block class per layer kind, and the type → block registry.
- :mod:`acktr.curvature.kfac_math` — the math as pure functions with shape contracts.
"""

from acktr.curvature.blocks import (
    BLOCK_REGISTRY,
    Conv2dBlock,
    KFACBlock,
    LinearBlock,
    block_class_for,
    register_block,
)
from acktr.curvature.kfac_math import Eigendecomposition
from acktr.curvature.preconditioner import KFAC, PreconditionInfo

__all__ = [
    "BLOCK_REGISTRY",
    "KFAC",
    "Conv2dBlock",
    "Eigendecomposition",
    "KFACBlock",
    "LinearBlock",
    "PreconditionInfo",
    "block_class_for",
    "register_block",
]
