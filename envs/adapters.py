"""SB3 ``VecEnv`` adapters over the batched backends (torch-native envs and envpool).

Both present SB3 semantics: finished copies are reset in the same ``step`` call, the observation they
reached is ``infos[i]["terminal_observation"]``, ``infos[i]["TimeLimit.truncated"]`` is True when the episode
ended by the time limit only, and ``infos[i]["episode"] = {"r", "l", "t"}`` (what SB3's ``Monitor`` writes)
reports the unclipped score and length of every finished episode (for Atari: of every finished game,
summed over all lives).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from acktr.envs.registry import envpool_registration
from acktr.envs.torch_envs import TorchVecEnv


def check_finite_observations(env_id: str, obs: np.ndarray, what: str = "observation") -> None:
    """Raise a one-line ValueError if a float observation batch holds NaN or inf."""
    if obs.dtype.kind == "f" and not np.isfinite(obs).all():
        bad = int(np.flatnonzero(~np.isfinite(obs.reshape(len(obs), -1)).all(axis=1))[0])
        raise ValueError(
            f"{env_id}: env {bad} returned a NaN/inf {what}; check the actions sent to it (a diverged "
            f"policy sends NaN actions) and the environment's dynamics, or pass check_finite=False"
        )


def _episode_info(episode_return: float, episode_length: int, start_time: float) -> dict[str, float | int]:
    """The ``info["episode"]`` dict SB3's Monitor writes (return and elapsed time rounded to 6 digits)."""
    return {
        "r": round(float(episode_return), 6),
        "l": int(episode_length),
        "t": round(time.time() - start_time, 6),
    }


_RUNNING_INFO: dict[str, Any] = {"TimeLimit.truncated": False}  # info of a copy whose episode goes on


class _HeldActions:
    """SB3's async step protocol for synchronous backends: ``step_async`` holds the actions."""

    _actions: np.ndarray | None = None

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def _held_actions(self) -> np.ndarray:
        assert self._actions is not None, "step_async must be called before step_wait"
        return np.asarray(self._actions)


class _BatchedVecEnv(_HeldActions, VecEnv):
    """Shared plumbing for backends that step every copy at once (no per-copy Python env objects)."""

    env_id: str
    backend_name: str

    def _backend_attr(self, attr_name: str) -> Any:
        raise AttributeError(attr_name)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            value: Any = getattr(self, "_render_mode", None)
        elif attr_name == "spec":
            value = gym.spec(self.env_id)
        elif attr_name in ("observation_space", "action_space"):
            value = getattr(self, attr_name)
        else:
            value = self._backend_attr(attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(
            f"{self.backend_name} backend: its copies share one batched simulator, so "
            f"set_attr({attr_name!r}) "
            f"is not supported; use backend='gymnasium' for per-copy attributes"
        )

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        raise AttributeError(
            f"{self.backend_name} backend: its copies share one batched simulator, so "
            f"env_method({method_name!r}) "
            f"is not supported; use backend='gymnasium' for per-copy methods"
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        # The adapter writes Monitor's info["episode"] itself, so SB3's evaluate_policy may rely on it.
        wrapped = issubclass(wrapper_class, Monitor)
        return [wrapped for _ in self._get_indices(indices)]


class TorchVecEnvAdapter(_BatchedVecEnv):
    """SB3 ``VecEnv`` over a :class:`~acktr.envs.torch_envs.TorchVecEnv` (numpy in, numpy out).

    The tensor fast path stays available as :attr:`torch_env`.
    """

    backend_name = "torch"

    def __init__(self, torch_env: TorchVecEnv, check_finite: bool = True) -> None:
        self.torch_env = torch_env
        self.env_id = torch_env.env_id
        self.check_finite = check_finite
        self._render_mode = None
        self._start_time = time.time()
        super().__init__(
            torch_env.num_envs, torch_env.single_observation_space, torch_env.single_action_space
        )

    def _backend_attr(self, attr_name: str) -> Any:
        return getattr(self.torch_env, attr_name)

    def reset(self) -> VecEnvObs:
        seed = self._seeds[0]
        obs = self.torch_env.reset(seed=seed).cpu().numpy()
        self._reset_seeds()
        self._reset_options()
        if self.check_finite:
            check_finite_observations(self.env_id, obs)
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        actions = torch.as_tensor(self._held_actions(), device=self.torch_env.device)
        result = self.torch_env.step(actions)
        obs = result.obs.cpu().numpy()
        rewards = result.reward.to(torch.float32).cpu().numpy()
        terminated = result.terminated.cpu().numpy()
        truncated = result.truncated.cpu().numpy()
        dones = terminated | truncated
        # thousands of copies: build the infos in bulk (dict.copy via map, one tolist per field)
        infos: list[dict[str, Any]] = list(map(dict.copy, repeat(_RUNNING_INFO, self.num_envs)))
        done_ids = np.flatnonzero(dones)
        if len(done_ids):
            final_obs = result.final_obs.cpu().numpy()[done_ids]
            returns = result.episode_return.cpu().numpy()[done_ids].tolist()
            lengths = result.episode_length.cpu().numpy()[done_ids].tolist()
            time_limit = (truncated & ~terminated)[done_ids].tolist()
            elapsed = round(time.time() - self._start_time, 6)
            for i, by_time_limit, terminal_obs, episode_return, episode_length in zip(
                done_ids.tolist(), time_limit, final_obs, returns, lengths, strict=True
            ):
                infos[i] = {
                    "TimeLimit.truncated": by_time_limit,
                    "terminal_observation": terminal_obs,
                    "episode": {"r": round(episode_return, 6), "l": episode_length, "t": elapsed},
                }
            if self.check_finite:
                check_finite_observations(self.env_id, final_obs, "terminal observation")
        if self.check_finite:
            check_finite_observations(self.env_id, obs)
        return obs, rewards, dones, infos

    def close(self) -> None:
        pass


class EnvpoolVecEnv(_BatchedVecEnv):
    """SB3 ``VecEnv`` over an envpool gymnasium pool.

    envpool resets a finished copy on its *next* step (the action is ignored). Right after a step in which
    copies finished, we step just those copies once more (``env_id=`` subset) to obtain their reset
    observations, so the caller sees SB3's same-step reset. For Atari trained with terminal-on-life-loss,
    that reset continues the game; the game score is the sum of envpool's unclipped ``info["reward"]`` until
    ``info["terminated"]`` (real game over) or the time limit.
    """

    backend_name = "envpool"

    def __init__(
        self,
        env_id: str,
        task_id: str,
        num_envs: int,
        atari: bool,
        seed: int | None = None,
        render_mode: str | None = None,
        check_finite: bool = True,
        **pool_kwargs: Any,
    ) -> None:
        # envpool's registry with this family's tasks (an Atari run does not load every envpool family)
        self._envpool = envpool_registration("atari" if atari else None)
        self.env_id = env_id
        self.task_id = task_id
        self.atari = atari
        self.check_finite = check_finite
        self._render_mode = render_mode
        self._pool_kwargs = pool_kwargs
        self._pool_seed = seed if seed is not None else int(np.random.default_rng().integers(2**31))
        self.pool = self._make_pool(num_envs, self._pool_seed)
        self._start_time = time.time()
        self._episode_return = np.zeros(num_envs, dtype=np.float64)
        self._episode_length = np.zeros(num_envs, dtype=np.int64)
        action_space = self.pool.action_space
        self._discrete = isinstance(action_space, gym.spaces.Discrete)
        super().__init__(num_envs, self.pool.observation_space, action_space)

    def _make_pool(self, num_envs: int, seed: int) -> Any:
        extra = {"render_mode": self._render_mode} if self._render_mode is not None else {}
        return self._envpool.make(
            self.task_id, env_type="gymnasium", num_envs=num_envs, seed=seed, **extra, **self._pool_kwargs
        )

    def _backend_attr(self, attr_name: str) -> Any:
        if attr_name == "config":
            return self.pool.config
        raise AttributeError(f"envpool backend has no attribute {attr_name!r}")

    def reset(self) -> VecEnvObs:
        seed = self._seeds[0]
        if seed is not None and seed != self._pool_seed:
            # envpool fixes seeds at construction: rebuild the pool with the requested one
            self.pool.close()
            self._pool_seed = seed
            self.pool = self._make_pool(self.num_envs, seed)
        self._reset_seeds()
        self._reset_options()
        obs, _ = self.pool.reset()
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        if self.check_finite:
            check_finite_observations(self.env_id, obs)
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        actions = self._held_actions()
        if self._discrete:
            actions = actions.astype(np.int32, copy=False).reshape(self.num_envs)
        obs, rewards, terminated, truncated, info = self.pool.step(actions)
        dones = terminated | truncated
        self._episode_return += info["reward"] if self.atari else rewards
        self._episode_length += 1
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        done_ids = np.flatnonzero(dones)
        if len(done_ids):
            if self.check_finite:
                check_finite_observations(self.env_id, obs[done_ids], "terminal observation")
            for i in done_ids:
                infos[i] = {
                    "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                    "terminal_observation": obs[i].copy(),
                }
            # envpool's next-step reset, for the finished copies only (their actions are ignored)
            idle_actions = np.zeros((len(done_ids), *actions.shape[1:]), dtype=actions.dtype)
            reset_obs, *_, reset_info = self.pool.step(idle_actions, env_id=done_ids.astype(np.int32))
            obs[reset_info["env_id"]] = reset_obs
            game_over = (info["terminated"].astype(bool) | truncated) if self.atari else dones
            for i in np.flatnonzero(game_over):
                infos[i]["episode"] = _episode_info(
                    self._episode_return[i], self._episode_length[i], self._start_time
                )
                self._episode_return[i] = 0.0
                self._episode_length[i] = 0
        if self.check_finite:
            check_finite_observations(self.env_id, obs)
        return obs, rewards.astype(np.float32), dones, infos

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self._render_mode != "rgb_array":
            raise ValueError(f"{self.env_id}: pass render_mode='rgb_array' to make_env to render frames")
        return list(self.pool.render(env_ids=np.arange(self.num_envs)))

    def close(self) -> None:
        self.pool.close()


def unbatch_info(info: dict[str, Any], index: int) -> dict[str, Any]:
    """Env ``index``'s entries of a gymnasium vector-env info dict (values batched, ``"_key"`` masks)."""
    single: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        mask = info.get(f"_{key}")
        if mask is not None and not mask[index]:
            continue
        if isinstance(value, dict):
            single[key] = unbatch_info(value, index)
        else:
            item = value[index]
            single[key] = item.item() if isinstance(item, np.generic) else item
    return single


class GymnasiumVectorVecEnv(_HeldActions, VecEnv):
    """SB3 ``VecEnv`` over a gymnasium ``VectorEnv`` built with ``AutoresetMode.SAME_STEP``.

    gymnasium's same-step mode already resets finished copies in the step; their last observation is in
    ``info["final_obs"]`` and their last info (with Monitor's ``"episode"``) in ``info["final_info"]``. This
    adapter turns that batched info into SB3's list of per-copy dicts with ``terminal_observation`` and
    ``TimeLimit.truncated``.
    """

    def __init__(self, vector_env: gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv) -> None:
        self.vector_env = vector_env
        super().__init__(
            vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space
        )
        self.render_mode = vector_env.render_mode

    def reset(self) -> VecEnvObs:
        # SB3's seeds are seed + i, and gymnasium seeds copy i with seed + i; one options dict for every copy
        obs, _ = self.vector_env.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.vector_env.step(self._held_actions())
        dones = terminated | truncated
        infos: list[dict[str, Any]] = []
        final_obs_mask = info.get("_final_obs")
        final_infos = info.get("final_info", {})
        for i in range(self.num_envs):
            if dones[i]:
                single = unbatch_info(final_infos, i)
                if final_obs_mask is not None and final_obs_mask[i]:
                    single["terminal_observation"] = info["final_obs"][i]
            else:
                single = unbatch_info(info, i) if info else {}
            single["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos.append(single)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.vector_env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            raise ValueError("pass render_mode='rgb_array' to make_env to render frames")
        return list(self.vector_env.call("render"))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        values = self.vector_env.get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        selected = set(self._get_indices(indices))
        current = self.vector_env.get_attr(attr_name)
        self.vector_env.set_attr(
            attr_name, [value if i in selected else current[i] for i in range(self.num_envs)]
        )

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        results = self.vector_env.call(method_name, *method_args, **method_kwargs)
        return [results[i] for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        envs = getattr(self.vector_env, "envs", None)
        if envs is not None:  # SyncVectorEnv: look at the wrapper chains
            return [is_wrapped(envs[i], wrapper_class) for i in self._get_indices(indices)]
        # AsyncVectorEnv: the copies live in worker processes; each is wrapped in (a subclass of) Monitor
        return [issubclass(wrapper_class, Monitor) for _ in self._get_indices(indices)]


class FiniteObservationCheck(VecEnvWrapper):
    """Fail with a one-line error as soon as a float observation (or terminal observation) is NaN/inf."""

    def __init__(self, venv: VecEnv, env_id: str) -> None:
        super().__init__(venv)
        self.env_id = env_id

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        assert isinstance(obs, np.ndarray)
        check_finite_observations(self.env_id, obs)
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert isinstance(obs, np.ndarray)
        check_finite_observations(self.env_id, obs)
        for i in np.flatnonzero(dones):
            terminal = infos[i].get("terminal_observation")
            if isinstance(terminal, np.ndarray):
                check_finite_observations(self.env_id, terminal[None], "terminal observation")
        return obs, rewards, dones, infos
