"""The run factory: a :class:`~acktr.run_config.RunConfig` in, environments and agents out.

``acktr train``, ``eval``, ``record``, ``bench sample-efficiency`` and the learning tests all build through
these functions, so a benchmark measures exactly what ``acktr train`` runs::

    from acktr.factory import build_run
    from acktr.run_config import TrainOptions, resolve_config
    venv, model = build_run(resolve_config(TrainOptions(env="CartPole", seed=0)))
    model.learn(100_000)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from acktr.algorithms import algorithm_class
from acktr.errors import UserError
from acktr.guards import VecCheckFinite
from acktr.hyperparams import build_agent_kwargs
from acktr.run_config import RunConfig, check_device

EVAL_SEED_OFFSET = 10_000  # evaluation envs never share seeds with the training envs
MAX_THREADS_PER_CORE = 4


def make_run_env(
    config: RunConfig,
    n_envs: int | None = None,
    seed: int | None = None,
    training: bool = True,
    render_mode: str | None = None,
    start_step: int = 0,
) -> VecEnv:
    """The run's env, on the backend training used (``training=False``: full Atari games, raw rewards).

    With ``render_mode`` the backend is chosen for rendering (gymnasium), since the torch and envpool
    backends do not draw frames; dynamics and preprocessing are the same. Every backend is wrapped in
    :class:`~acktr.guards.VecCheckFinite`: a NaN/inf observation, reward or action raises a one-line
    :class:`~acktr.errors.NonFiniteEnvError` naming the env and the step (``start_step``: steps already
    taken by a resumed run).
    """
    from acktr.envs import make_env

    kwargs: dict[str, Any] = {}
    if config.atari and config.frame_stack is not None:
        kwargs["frame_stack"] = config.frame_stack
    backend = config.backend_used if render_mode is None else "auto"
    try:
        venv = make_env(
            config.env_id,
            n_envs=config.n_envs if n_envs is None else n_envs,
            seed=config.seed if seed is None else seed,
            backend=backend,
            device=config.device,
            training=training,
            render_mode=render_mode,
            check_finite=False,  # VecCheckFinite below checks every backend, with the step count
            **kwargs,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    return VecCheckFinite(venv, config.env_id, start_step=start_step)


def normalize_env(venv: VecEnv, config: RunConfig, training: bool = True) -> VecEnv:
    """``VecNormalize`` when the configuration asks for it (evaluation: frozen statistics, raw rewards)."""
    if config.normalize is None:
        return venv
    kwargs = {"gamma": float(config.hyperparams.get("gamma", 0.99)), **config.normalize}
    if not training:
        kwargs.update(training=False, norm_reward=False)
    try:
        return VecNormalize(venv, **kwargs)
    except TypeError as error:
        raise UserError(f"normalize={config.normalize}: {error}; fix the zoo entry or -p normalize") from None


def evaluation_env(
    config: RunConfig,
    n_envs: int,
    seed: int,
    vecnormalize: VecNormalize | Path | None,
    render_mode: str | None = None,
) -> VecEnv:
    """Evaluation env: full games, raw rewards, the run's frozen observation statistics if it normalised."""
    venv = make_run_env(config, n_envs, seed, training=False, render_mode=render_mode)
    if isinstance(vecnormalize, Path):
        try:
            venv = VecNormalize.load(str(vecnormalize), venv)
        except Exception as error:
            venv.close()
            raise UserError(
                f"cannot load {vecnormalize} ({error.__class__.__name__}); delete or restore it"
            ) from None
        venv.training, venv.norm_reward = False, False
    elif vecnormalize is not None:
        normalized = VecNormalize(venv, training=False, norm_reward=False)
        normalized.obs_rms = copy.deepcopy(vecnormalize.obs_rms)
        normalized.clip_obs, normalized.epsilon = vecnormalize.clip_obs, vecnormalize.epsilon
        normalized.norm_obs = vecnormalize.norm_obs
        venv = normalized
    return venv


def default_policy(observation_space: gym.Space) -> str:
    """SB3's policy alias for an observation space: CNN for images, multi-input for dicts, else MLP."""
    if isinstance(observation_space, gym.spaces.Dict):
        return "MultiInputPolicy"
    if is_image_space(observation_space, check_channels=False):
        return "CnnPolicy"
    return "MlpPolicy"


def create_model(config: RunConfig, venv: VecEnv) -> Any:
    """A new agent for ``config`` on ``venv`` (sets ``config.policy`` from the observation space if unset).

    Constructor errors become one-line UserErrors.
    """
    cls = algorithm_class(config.algo)
    if config.policy is None:
        config.policy = default_policy(venv.observation_space)
    kwargs = build_agent_kwargs(config.hyperparams)
    check_rollout_memory(config, venv)
    try:
        return cls(config.policy, venv, seed=config.seed, device=config.device, verbose=0, **kwargs)
    except AssertionError as error:  # SB3 checks spaces with asserts
        message = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported environment"
        raise UserError(
            f"{config.algo} cannot train on {config.env_id}: {message}; pick another env"
        ) from None
    except (TypeError, ValueError, KeyError) as error:
        message = str(error).strip().splitlines()[0]
        raise UserError(f"cannot build {config.algo} for {config.env_id}: {message}") from None


def rollout_bytes(observation_space: gym.Space, action_space: gym.Space, n_envs: int, n_steps: int) -> int:
    """Bytes of SB3's ``RolloutBuffer`` for ``n_steps × n_envs`` transitions: float32 observations and
    actions plus six float32 scalars (reward, return, value, log-prob, advantage, episode start)."""
    from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape

    shapes = get_obs_shape(observation_space)
    observation_floats = sum(
        int(np.prod(shape)) for shape in (shapes.values() if isinstance(shapes, dict) else [shapes])
    )
    return 4 * n_envs * n_steps * (observation_floats + get_action_dim(action_space) + 6)


def check_rollout_memory(config: RunConfig, venv: VecEnv) -> None:
    """One-line UserErrors for an ``n_steps`` below 1 and for a rollout buffer that alone would take more than
    half the machine's memory (``-p n_steps=1e9`` would otherwise die in an allocation deep inside SB3)."""
    n_steps = config.hyperparams.get("n_steps")
    if n_steps is None:
        return
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        # SB3 accepts n_steps=0 and then divides by the rollout size
        raise UserError(
            f"n_steps must be a positive whole number of steps per env and update, got {n_steps!r}"
        )
    try:
        needed = rollout_bytes(venv.observation_space, venv.action_space, venv.num_envs, n_steps)
    except NotImplementedError:  # a space SB3 cannot store: the agent's constructor says so in one line
        return
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS: no check
        return
    if needed > memory // 2:
        raise UserError(
            f"n_steps={n_steps:,} x n_envs={venv.num_envs:,} needs {needed / 2**30:,.1f} GiB for the "
            f"rollout buffer, more than half of this machine's {memory / 2**30:,.0f} GiB; lower -p n_steps "
            "or --n-envs"
        )


def build_run(config: RunConfig) -> tuple[VecEnv, Any]:
    """The training env (normalised if configured) and a new agent on it."""
    venv = normalize_env(make_run_env(config, training=True), config, training=True)
    try:
        return venv, create_model(config, venv)
    except BaseException:
        venv.close()
        raise


def load_model(algo: str, path: Path, venv: VecEnv | None = None, device: str = "auto") -> Any:
    """``cls.load`` with one-line errors for missing or corrupt files."""
    cls = algorithm_class(algo)
    check_device(device)
    if not path.is_file():
        raise UserError(
            f"model file {path} does not exist; pass a run folder or a model.zip written by acktr train"
        )
    try:
        return cls.load(str(path), env=venv, device=device)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as error:
        raise UserError(
            f"cannot load {path} as a {algo} model ({error.__class__.__name__}: {str(error)[:120]}); "
            f"it is corrupt or from another algorithm: pass a model.zip written by acktr train (or --algo)"
        ) from None


def set_threads(config: RunConfig, threads: int | None) -> int:
    """Torch intra-op threads: ``threads`` if given, else 1 on CPU unless the policy is a CNN (small matmuls
    lose time to OpenMP synchronisation, badly when the cores are shared), else torch's default. Returns the
    count set."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        # more threads than cores only thrashes; far more cannot even be started
        most = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
        if threads > most:
            raise UserError(
                f"--threads {threads:,} is more than {MAX_THREADS_PER_CORE}x this machine's {os.cpu_count()} "
                f"cores; pass at most {most}"
            )
        torch.set_num_threads(threads)
    else:
        on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        if on_cpu and "Cnn" not in str(config.policy):
            torch.set_num_threads(1)
    return torch.get_num_threads()


__all__ = [
    "EVAL_SEED_OFFSET",
    "build_run",
    "create_model",
    "default_policy",
    "evaluation_env",
    "load_model",
    "make_run_env",
    "normalize_env",
    "set_threads",
]
