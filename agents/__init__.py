"""ACKTR and K-FAC policies for Stable-Baselines3 (``from acktr import ACKTR, KFACActorCriticPolicy``)."""

from acktr.agents.acktr import ACKTR
from acktr.agents.extractors import MinAtarCNN
from acktr.agents.optim import KFACOptimizer, NonFiniteUpdateError
from acktr.agents.policies import (
    KFACActorCriticCnnPolicy,
    KFACActorCriticPolicy,
    KFACMultiInputActorCriticPolicy,
)

__all__ = [
    "ACKTR",
    "KFACActorCriticCnnPolicy",
    "KFACActorCriticPolicy",
    "KFACMultiInputActorCriticPolicy",
    "KFACOptimizer",
    "MinAtarCNN",
    "NonFiniteUpdateError",
]
