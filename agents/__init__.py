"""ACKTR, NPG and K-FAC policies for Stable-Baselines3 (``from acktr import ACKTR, NPG``)."""

from acktr.agents.acktr import ACKTR
from acktr.agents.extractors import MinAtarCNN
from acktr.agents.npg import NPG
from acktr.agents.optim import KFACOptimizer, NonFiniteUpdateError
from acktr.agents.policies import (
    KFACActorCriticCnnPolicy,
    KFACActorCriticPolicy,
    KFACMultiInputActorCriticPolicy,
)

__all__ = [
    "ACKTR",
    "NPG",
    "KFACActorCriticCnnPolicy",
    "KFACActorCriticPolicy",
    "KFACMultiInputActorCriticPolicy",
    "KFACOptimizer",
    "MinAtarCNN",
    "NonFiniteUpdateError",
]
