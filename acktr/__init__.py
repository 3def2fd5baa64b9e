"""acktr: natural-gradient (K-FAC) reinforcement learning agents for PyTorch and Stable-Baselines3.

Public API (imported lazily so that ``import acktr`` stays cheap and the CLI starts fast)::

    from acktr import ACKTR, KFAC, make_env

The agents exported here are the ``ours`` entries of the algorithm registry (:mod:`acktr.algorithms`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (agents come from the registry, below)
_EXPORTS: dict[str, str] = {
    "KFAC": "acktr.curvature",
    "KFACActorCriticPolicy": "acktr.agents",
    "KFACActorCriticCnnPolicy": "acktr.agents",
    "KFACMultiInputActorCriticPolicy": "acktr.agents",
    "make_env": "acktr.envs",
    "register_with_rl_zoo": "acktr.zoo_integration",
}


def _agent_exports() -> dict[str, str]:
    from acktr.algorithms import our_algorithms

    return {spec.class_name: spec.module for spec in our_algorithms()}


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name) or _agent_exports().get(name)
    if module_name is None:
        raise AttributeError(f"module 'acktr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(["__version__", *_EXPORTS, *_agent_exports()])


__all__ = ["__version__", *_EXPORTS, *_agent_exports()]
