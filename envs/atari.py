"""Atari preprocessing for the gymnasium backend, matching envpool's Atari pipeline.

Order (as in OpenAI baselines / SB3's ``AtariWrapper`` / envpool): no-op reset (up to 30) -> frame skip 4 with
max-pooling of the last two frames -> 84x84 grayscale (area-averaging resize, as OpenCV's INTER_AREA that
envpool uses, written with numpy gathers so that OpenCV is not needed) -> time limit (27,000 agent steps =
108k frames) -> terminal on life loss (training) -> FIRE on reset -> :class:`GameMonitor` (SB3 ``Monitor``
statistics of whole games: unclipped score over all lives, length in agent steps) -> reward clipping to the
sign (training) -> frame stack 4, channel-first ``(4, 84, 84)`` uint8 like envpool.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor

from acktr.envs.registry import resolve_env_id

DEFAULT_MAX_EPISODE_STEPS = 27_000  # agent steps (108k emulator frames), envpool's and the zoo's limit


def area_resize_weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse area-interpolation weights for shrinking an axis of length ``source`` to ``target``.

    Output pixel ``i`` averages the source interval ``[i * s, (i + 1) * s)``, ``s = source / target``; each
    source pixel weighs its overlap with that interval divided by ``s`` (weights of one output sum to 1).

    Returns:
        indices (taps, target) int64 and weights (taps, target) float32 with
        ``out[i] = sum_k weights[k, i] * x[indices[k, i]]``; ``taps = ceil(s) + 1``.
    """
    scale = source / target
    edges = np.arange(target + 1) * scale
    taps = int(np.ceil(scale)) + 1
    first = np.floor(edges[:-1]).astype(np.int64)  # (target,)
    indices = np.minimum(first[None, :] + np.arange(taps)[:, None], source - 1)  # (taps, target)
    overlap = np.minimum(edges[1:][None, :], indices + 1) - np.maximum(edges[:-1][None, :], indices)
    weights = np.clip(overlap, 0.0, None) / scale
    weights[1:][indices[1:] == indices[:-1]] = 0.0  # clamped duplicates at the far edge count once
    return indices, weights.astype(np.float32)


def area_resize(
    frame: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Shrink a (H, W) uint8 frame with :func:`area_resize_weights` tables; elementwise (no BLAS threads)."""
    row_index, row_weight = rows
    col_index, col_weight = cols
    image = frame.astype(np.float32)
    tall = sum(row_weight[k][:, None] * image[row_index[k]] for k in range(len(row_index)))  # (h, W)
    small = sum(col_weight[k][None, :] * tall[:, col_index[k]] for k in range(len(col_index)))  # (h, w)
    return np.rint(small).astype(np.uint8)


class AtariFrames(gym.Wrapper):
    """No-op reset, frame skip with max-pooling over the last two frames, grayscale area-resized to ``size``.

    Observations: (size, size) uint8. Rewards are summed over the skipped frames.
    """

    def __init__(self, env: gym.Env, frame_skip: int = 4, noop_max: int = 30, size: int = 84) -> None:
        super().__init__(env)
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        self.ale = env.unwrapped.ale  # type: ignore[attr-defined]
        height, width = self.ale.getScreenDims()
        self.buffers = np.zeros((2, height, width), dtype=np.uint8)
        self.rows = area_resize_weights(height, size)
        self.cols = area_resize_weights(width, size)
        self.observation_space = gym.spaces.Box(0, 255, (size, size), dtype=np.uint8)

    def _observation(self) -> np.ndarray:
        return area_resize(np.maximum(self.buffers[0], self.buffers[1]), self.rows, self.cols)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        total_reward = 0.0
        terminated = truncated = False
        info: dict[str, Any] = {}
        for t in range(self.frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                self.ale.getScreenGrayscale(self.buffers[0])
                self.buffers[1] = self.buffers[0]
                break
            if t >= self.frame_skip - 2:
                self.ale.getScreenGrayscale(self.buffers[self.frame_skip - 1 - t])
        return self._observation(), total_reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(**kwargs)
        if self.noop_max > 0:
            noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1))
            for _ in range(noops):
                _, _, terminated, truncated, info = self.env.step(0)
                if terminated or truncated:
                    _, info = self.env.reset()
        self.ale.getScreenGrayscale(self.buffers[0])
        self.buffers[1] = self.buffers[0]
        return self._observation(), info


class EpisodicLife(gym.Wrapper):
    """End the episode (terminated=True) on a life loss, but restart the emulator only at real game over.

    The pseudo-reset after a lost life takes one NOOP step and marks ``info["life_reset"] = True`` so the
    frame stacker keeps its frames (envpool continues the stack across lives too).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        info["game_over"] = self.game_over
        lives = self._ale_lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the NOOP itself ended the game: start a new one
                obs, info = self.env.reset(**kwargs)
            else:
                info = {**info, "life_reset": True}
        self.game_over = False
        self.lives = self._ale_lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE after every reset (games such as Breakout wait for it)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, _ = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class GameTimeLimit(gym.Wrapper):
    """Truncate a game after ``max_episode_steps`` agent steps (NOOP/FIRE steps inside resets do not count).

    Truncation ends the game: the next reset starts a new one even when lives remain.
    """

    def __init__(self, env: gym.Env, max_episode_steps: int, episodic_life: EpisodicLife | None) -> None:
        super().__init__(env)
        self.max_episode_steps = max_episode_steps
        self.episodic_life = episodic_life
        self.elapsed_steps = 0

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.elapsed_steps += 1
        if self.elapsed_steps >= self.max_episode_steps:
            truncated = True
            info["game_over"] = True
            if self.episodic_life is not None:
                self.episodic_life.game_over = True
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        if not info.get("life_reset"):
            self.elapsed_steps = 0
        return obs, info


class GameMonitor(Monitor):
    """SB3 ``Monitor`` whose episodes are whole games: ``info["episode"]`` appears at real game over only.

    It sits outside the life-loss and FIRE wrappers (their internal NOOP/FIRE steps are not agent steps, so
    the length counts agent steps, as envpool's) and inside reward clipping (the score is unclipped).
    """

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(**kwargs)  # a life-loss reset continues the game: keep its rewards

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.rewards.append(float(reward))
        self.total_steps += 1
        if info.get("game_over", terminated or truncated):
            score, length, elapsed = sum(self.rewards), len(self.rewards), time.time() - self.t_start
            info["episode"] = {"r": round(score, 6), "l": length, "t": round(elapsed, 6)}
            self.episode_returns.append(score)
            self.episode_lengths.append(length)
            self.episode_times.append(elapsed)
            self.rewards = []
        return obs, reward, terminated, truncated, info


class ClipRewardSign(gym.RewardWrapper):
    """Training reward = sign(reward) in {-1, 0, 1}."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(float(reward)))


class ChannelFirstFrameStack(gym.Wrapper):
    """Stack the last ``num_frames`` (84, 84) frames into ``(num_frames, 84, 84)``.

    A real reset fills the stack with the first frame (envpool does the same); a life-loss pseudo-reset
    (``info["life_reset"]``) keeps the older frames.
    """

    def __init__(self, env: gym.Env, num_frames: int) -> None:
        super().__init__(env)
        frame_space = env.observation_space
        assert isinstance(frame_space, gym.spaces.Box) and frame_space.shape is not None
        self.frames: deque[np.ndarray] = deque(maxlen=num_frames)
        self.observation_space = gym.spaces.Box(0, 255, (num_frames, *frame_space.shape), dtype=np.uint8)

    def _stacked(self) -> np.ndarray:
        return np.stack(self.frames, axis=0)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(frame)
        return self._stacked(), reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        frame, info = self.env.reset(**kwargs)
        if info.get("life_reset") and len(self.frames) == self.frames.maxlen:
            self.frames.append(frame)
        else:
            for _ in range(self.frames.maxlen or 1):
                self.frames.append(frame)
        return self._stacked(), info


def make_gymnasium_atari(
    env_id: str,
    training: bool = True,
    sticky_actions: bool = False,
    frame_stack: int = 4,
    noop_max: int = 30,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> gym.Env:
    """One preprocessed Atari env (module docstring); ``training=False`` keeps lives and raw rewards."""
    env = gym.make(
        resolve_env_id(env_id),
        obs_type="grayscale",
        frameskip=1,
        repeat_action_probability=0.25 if sticky_actions else 0.0,
        full_action_space=False,
        max_num_frames_per_episode=0,  # no emulator limit: GameTimeLimit counts agent steps like envpool
        render_mode=render_mode,
        **env_kwargs,
    )
    env = AtariFrames(env, frame_skip=4, noop_max=noop_max, size=84)
    episodic_life = EpisodicLife(env) if training else None
    env = episodic_life or env
    if "FIRE" in env.unwrapped.get_action_meanings():  # type: ignore[attr-defined]
        env = FireReset(env)
    env = GameTimeLimit(env, max_episode_steps or DEFAULT_MAX_EPISODE_STEPS, episodic_life)
    env = GameMonitor(env)
    if training:
        env = ClipRewardSign(env)
    return ChannelFirstFrameStack(env, frame_stack)
