"""ACKTR, NPG, NoisyACKTR and K-FAC policies for Stable-Baselines3 (``from acktr import ACKTR, NPG,
NoisyACKTR``)."""

from acktr.agents.acktr import ACKTR
from acktr.agents.extractors import MinAtarCNN
from acktr.agents.noisy_acktr import NoisyACKTR
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
    "NoisyACKTR",
    "NonFiniteUpdateError",
]
