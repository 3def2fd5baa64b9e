"""Vectorized environments: one SB3 ``VecEnv`` front end over envpool, gymnasium and torch-native envs.

    from acktr.envs import make_env
    venv = make_env("Breakout", n_envs=8, seed=0)       # envpool, (4, 84, 84) uint8, life-loss terminals
    venv = make_env("CartPole", n_envs=256, device="cuda")  # torch-native, batched on the GPU

The tensor fast path (observations stay on the device) is :func:`make_torch_env` / :class:`TorchVecEnv`.
"""

from acktr.envs.adapters import (
    EnvpoolVecEnv,
    FiniteObservationCheck,
    GymnasiumVectorVecEnv,
    TorchVecEnvAdapter,
)
from acktr.envs.make import BACKENDS, VECTORIZATIONS, choose_backend, make_env, make_torch_env
from acktr.envs.registry import is_atari, is_minatar, known_env_names, resolve_env_id
from acktr.envs.torch_envs import (
    TORCH_ENVS,
    AcrobotTorch,
    CartPoleTorch,
    MountainCarContinuousTorch,
    MountainCarTorch,
    PendulumTorch,
    TorchStep,
    TorchVecEnv,
)

__all__ = [
    "BACKENDS",
    "TORCH_ENVS",
    "VECTORIZATIONS",
    "AcrobotTorch",
    "CartPoleTorch",
    "EnvpoolVecEnv",
    "FiniteObservationCheck",
    "GymnasiumVectorVecEnv",
    "MountainCarContinuousTorch",
    "MountainCarTorch",
    "PendulumTorch",
    "TorchStep",
    "TorchVecEnv",
    "TorchVecEnvAdapter",
    "choose_backend",
    "is_atari",
    "is_minatar",
    "known_env_names",
    "make_env",
    "make_torch_env",
    "resolve_env_id",
]
