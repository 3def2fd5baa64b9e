"""``make_env``: one front end over envpool, gymnasium and the torch-native envs, returning an SB3 VecEnv."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from acktr.envs.adapters import (
    EnvpoolVecEnv,
    FiniteObservationCheck,
    GymnasiumVectorVecEnv,
    TorchVecEnvAdapter,
)
from acktr.envs.atari import DEFAULT_MAX_EPISODE_STEPS, make_gymnasium_atari
from acktr.envs.registry import (
    envpool_env_ids,
    envpool_task_id,
    import_minatar,
    is_atari,
    is_minatar,
    resolve_env_id,
)
from acktr.envs.torch_envs import TORCH_ENVS, TorchVecEnv, resolve_device

BACKENDS = ("auto", "envpool", "gymnasium", "torch")
# gymnasium backend: SB3 DummyVecEnv / SubprocVecEnv or gymnasium Sync/AsyncVectorEnv (same-step autoreset)
VECTORIZATIONS = ("dummy", "subprocess", "gymnasium", "gymnasium-async")


def choose_backend(env_id: str, backend: str = "auto", render_mode: str | None = None) -> str:
    """The backend ``make_env`` uses for ``env_id`` (a full id) given the requested ``backend``.

    ``auto``: torch-native for the five classic-control envs, envpool for Atari and for anything else envpool
    provides under the same id, gymnasium otherwise, and gymnasium whenever ``render_mode`` is given.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if render_mode is not None:
            return (
                "gymnasium"  # only the gymnasium envs render everything (the CLI's record command needs it)
            )
        if env_id in TORCH_ENVS:
            return "torch"
        if envpool_task_id(env_id) is not None:
            return "envpool"
        return "gymnasium"
    if backend == "torch" and env_id not in TORCH_ENVS:
        raise ValueError(
            f"backend 'torch' has no {env_id}; it implements {', '.join(TORCH_ENVS)}; "
            f"use backend='gymnasium' or 'auto'"
        )
    if backend == "envpool" and envpool_task_id(env_id) is None:
        reason = "envpool is not installed" if not envpool_env_ids() else f"envpool has no {env_id}"
        raise ValueError(
            f"backend 'envpool' cannot make {env_id}: {reason}; use backend='gymnasium' or 'auto'"
        )
    if backend == "torch" and render_mode is not None:
        raise ValueError(
            "backend 'torch' cannot render; use backend='gymnasium' (or 'auto') with render_mode"
        )
    return backend


def make_torch_env(
    env: str,
    n_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    max_episode_steps: int | None = None,
) -> TorchVecEnv:
    """The tensor-in/tensor-out env behind ``backend="torch"`` (``step`` returns tensors on ``device``)."""
    env_id = resolve_env_id(env)
    if env_id not in TORCH_ENVS:
        raise ValueError(f"no torch-native {env_id}; torch envs: {', '.join(TORCH_ENVS)}")
    return TORCH_ENVS[env_id](
        n_envs, device=resolve_device(device), dtype=dtype, max_episode_steps=max_episode_steps, seed=seed
    )


def _take(options: dict[str, Any], name: str, default: Any) -> Any:
    return options.pop(name) if name in options else default


def make_env(
    env: str,
    n_envs: int = 1,
    seed: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    training: bool = True,
    render_mode: str | None = None,
    **kwargs: Any,
) -> VecEnv:
    """Make ``n_envs`` copies of ``env`` as an SB3 ``VecEnv`` with Monitor-style episode statistics.

    Args:
        env: short name (``"Breakout"``, ``"HalfCheetah"``, ``"CartPole"``) or full gymnasium id.
        n_envs: number of parallel copies.
        seed: copy ``i`` is seeded with ``seed + i`` (SB3 convention); None draws fresh entropy.
        backend: ``"auto"``, ``"envpool"``, ``"gymnasium"`` or ``"torch"`` (see :func:`choose_backend`).
        device: torch backend only: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        training: Atari only: True ends episodes on life loss and clips rewards to their sign; False gives
            the evaluation variant (full games, raw rewards). ``info["episode"]["r"]`` is the unclipped game
            score either way.
        render_mode: ``"rgb_array"`` makes ``venv.render()`` / ``get_images()`` work (auto: gymnasium).
        **kwargs: ``sticky_actions`` (Atari, default False), ``frame_stack`` (Atari, default 4), ``noop_max``
            (Atari, 30), ``max_episode_steps``, ``num_threads`` (envpool, default min(n_envs, cores)),
            ``vectorization`` (gymnasium backend: ``"dummy"`` (default) or ``"subprocess"`` for SB3's
            DummyVecEnv / SubprocVecEnv, ``"gymnasium"`` or ``"gymnasium-async"`` for gymnasium's
            SyncVectorEnv / AsyncVectorEnv in same-step autoreset mode), ``dtype`` (torch),
            ``check_finite`` (default True: NaN/inf observations raise). Anything else goes to the backend's
            constructor (``gym.make`` or ``envpool.make``).

    Observations for Atari are ``(frame_stack, 84, 84)`` uint8 on every backend (what SB3's CnnPolicy takes).
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    env_id = resolve_env_id(env)
    atari = is_atari(env_id)
    chosen = choose_backend(env_id, backend, render_mode)
    options = dict(kwargs)
    check_finite = bool(_take(options, "check_finite", True))
    max_episode_steps = _take(options, "max_episode_steps", None)

    if chosen == "torch":
        dtype = _take(options, "dtype", torch.float32)
        if options:
            raise ValueError(
                f"backend 'torch' does not take {', '.join(sorted(options))}; remove these options"
            )
        torch_env = make_torch_env(env_id, n_envs, seed, device, dtype, max_episode_steps)
        venv: VecEnv = TorchVecEnvAdapter(torch_env, check_finite=check_finite)
    elif chosen == "envpool":
        pool_kwargs: dict[str, Any] = {
            "num_threads": int(_take(options, "num_threads", min(n_envs, os.cpu_count() or 1))),
        }
        if atari:
            pool_kwargs.update(
                episodic_life=training,
                reward_clip=training,
                stack_num=int(_take(options, "frame_stack", 4)),
                noop_max=int(_take(options, "noop_max", 30)),
                repeat_action_probability=0.25 if _take(options, "sticky_actions", False) else 0.0,
                max_episode_steps=int(max_episode_steps or DEFAULT_MAX_EPISODE_STEPS),
            )
        elif max_episode_steps is not None:
            pool_kwargs["max_episode_steps"] = int(max_episode_steps)
        task_id = envpool_task_id(env_id)
        assert task_id is not None
        venv = EnvpoolVecEnv(
            env_id,
            task_id,
            n_envs,
            atari=atari,
            seed=seed,
            render_mode=render_mode,
            check_finite=check_finite,
            **pool_kwargs,
            **options,
        )
    else:
        vectorization = _take(options, "vectorization", "dummy")
        options.pop("num_threads", None)  # envpool option; harmless here
        env_fn = _gymnasium_env_fn(env_id, atari, training, render_mode, max_episode_steps, options)
        if vectorization == "dummy":
            venv = DummyVecEnv([env_fn] * n_envs)
        elif vectorization == "subprocess":
            venv = SubprocVecEnv([env_fn] * n_envs)
        elif vectorization in ("gymnasium", "gymnasium-async"):
            vector_cls = (
                gym.vector.SyncVectorEnv if vectorization == "gymnasium" else gym.vector.AsyncVectorEnv
            )
            venv = GymnasiumVectorVecEnv(
                vector_cls([env_fn] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            )
        else:
            raise ValueError(
                f"vectorization must be one of {', '.join(VECTORIZATIONS)}, got {vectorization!r}"
            )
        if check_finite and isinstance(venv.observation_space, gym.spaces.Box):
            venv = FiniteObservationCheck(venv, env_id)
    if seed is not None:
        venv.seed(seed)
    return venv


def _gymnasium_env_fn(
    env_id: str,
    atari: bool,
    training: bool,
    render_mode: str | None,
    max_episode_steps: int | None,
    options: dict[str, Any],
) -> Callable[[], gym.Env]:
    """A picklable-enough factory for one gymnasium env with SB3's Monitor (Atari: full preprocessing)."""
    if atari:
        atari_options = {
            name: options.pop(name)
            for name in ("sticky_actions", "frame_stack", "noop_max")
            if name in options
        }

        def make_atari() -> gym.Env:
            return make_gymnasium_atari(
                env_id,
                training=training,
                max_episode_steps=max_episode_steps,
                render_mode=render_mode,
                **atari_options,
                **options,
            )

        return make_atari
    for name in ("sticky_actions", "frame_stack", "noop_max"):
        if name in options:
            raise ValueError(f"{name} applies to Atari games only, not {env_id}; remove it")

    def make_single() -> gym.Env:
        if is_minatar(env_id):
            import_minatar()  # the entry point's module, imported quietly (registered without it)
        extra: dict[str, Any] = {} if render_mode is None else {"render_mode": render_mode}
        if max_episode_steps is not None:
            extra["max_episode_steps"] = max_episode_steps
        return Monitor(gym.make(env_id, **extra, **options))

    return make_single
