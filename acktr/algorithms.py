"""The algorithm registry: the one table the CLI, the zoo, rl-zoo3 registration, the benchmarks and the
public API read.

Each :class:`AlgorithmSpec` names an agent once: its ``--algo`` name, where its class lives, its zoo file
(``acktr/zoo/<zoo>.yml``), its name in rl-zoo3 and whether this package provides it. A new agent (NPG,
NoisyACKTR) becomes available everywhere by adding one entry here.

    from acktr.algorithms import get_algorithm
    spec = get_algorithm("acktr")
    spec.load()          # -> acktr.agents.ACKTR
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from acktr.errors import UserError


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm: how the command line, the zoo and rl-zoo3 name it and where its class lives."""

    name: str
    """``--algo`` name (lower case, hyphenated)."""
    module: str
    class_name: str
    zoo: str
    """Stem of its hyperparameter file in ``acktr/zoo/``."""
    rl_zoo_name: str
    """Its ``--algo`` name in rl-zoo3 (underscores; rl-zoo3 parses names as Python identifiers)."""
    ours: bool
    """True for the agents of this package (registered with rl-zoo3); False for SB3's, for comparisons."""
    description: str

    def load(self) -> Any:
        """The agent class (raises :class:`UserError` when it cannot be imported)."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            fix = "reinstall acktr (pip install -e .)"
            if not self.ours:  # a comparison algorithm from another package (sb3-contrib's TRPO, ...)
                fix = f"install it: pip install {self.module.split('.')[0].replace('_', '-')}"
            raise UserError(f"algorithm {self.name!r} cannot be imported ({error}); {fix}") from None
        return getattr(module, self.class_name)


# The registry.
ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            "acktr", "acktr.agents", "ACKTR", "acktr", "acktr", True, "K-FAC natural gradient A2C (ACKTR)"
        ),
        AlgorithmSpec(
            "npg",
            "acktr.agents",
            "NPG",
            "npg",
            "npg",
            True,
            "natural policy gradient with a K-FAC Fisher (NPG)",
        ),
        AlgorithmSpec(
            "noisy-acktr",
            "acktr.agents",
            "NoisyACKTR",
            "noisy_acktr",
            "noisy_acktr",
            True,
            "ACKTR acting with weights sampled from its K-FAC posterior (noisy K-FAC exploration)",
        ),
        AlgorithmSpec("a2c", "stable_baselines3", "A2C", "a2c", "a2c", False, "SB3 A2C, for comparison"),
        AlgorithmSpec("ppo", "stable_baselines3", "PPO", "ppo", "ppo", False, "SB3 PPO, for comparison"),
        AlgorithmSpec(
            "trpo", "sb3_contrib", "TRPO", "trpo", "trpo", False, "sb3-contrib TRPO, for comparison with NPG"
        ),
    )
}


def algorithm_names() -> list[str]:
    """``--algo`` choices, ours first."""
    return [spec.name for spec in sorted(ALGORITHMS.values(), key=lambda spec: not spec.ours)]


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registry entry of ``name`` (``--algo`` or rl-zoo3 spelling); UserError for unknown names."""
    spec = ALGORITHMS.get(name) or next((s for s in ALGORITHMS.values() if s.rl_zoo_name == name), None)
    if spec is None:
        raise UserError(f"unknown algorithm {name!r}; choose one of {', '.join(algorithm_names())}")
    return spec


def algorithm_class(name: str) -> Any:
    """The agent class of ``--algo name``."""
    return get_algorithm(name).load()


def our_algorithms() -> list[AlgorithmSpec]:
    """The agents this package provides (what rl-zoo3 registration and ``from acktr import ...`` expose)."""
    return [spec for spec in ALGORITHMS.values() if spec.ours]


__all__ = [
    "ALGORITHMS",
    "AlgorithmSpec",
    "algorithm_class",
    "algorithm_names",
    "get_algorithm",
    "our_algorithms",
]
