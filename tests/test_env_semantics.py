"""Episode-boundary semantics on every backend, pinned before the rollout loop is rewritten (issue 11).

Per backend: a time limit sets ``TimeLimit.truncated`` and returns a reset observation that differs from
``info["terminal_observation"]``; a real termination does not set it; and in the rollout buffer the
truncated step's reward is bootstrapped as ``r + γ·V(terminal observation)`` (checked with a constant
critic ``V ≡ c``) while every other step keeps the env's reward.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from acktr import ACKTR
from acktr.envs import make_env

LIMIT = 5  # a time limit short enough that no random episode of these tasks terminates before it
CASES = [
    ("CartPole", "torch"),
    ("CartPole", "gymnasium"),
    ("CartPole", "envpool"),
    ("Pendulum", "torch"),
    ("Pendulum", "gymnasium"),
    ("Pendulum", "envpool"),
    ("HalfCheetah", "envpool"),
    ("HalfCheetah", "gymnasium"),
]


def limited(name: str, backend: str, n_envs: int = 2, limit: int = LIMIT) -> VecEnv:
    return make_env(name, n_envs=n_envs, seed=0, backend=backend, device="cpu", max_episode_steps=limit)


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_a_time_limit_truncates_and_the_next_observation_is_a_reset(name: str, backend: str) -> None:
    venv = limited(name, backend)
    try:
        venv.reset()
        venv.action_space.seed(0)
        for episode in range(2):
            for step in range(1, LIMIT + 1):
                actions = np.stack([venv.action_space.sample() for _ in range(venv.num_envs)])
                obs, _, dones, infos = venv.step(actions)
                if step < LIMIT:
                    assert not dones.any(), (episode, step)
                    continue
                assert dones.all()
                for index, info in enumerate(infos):
                    assert info["TimeLimit.truncated"] is True
                    assert info["episode"]["l"] == LIMIT
                    terminal = np.asarray(info["terminal_observation"], dtype=np.float64)
                    # the returned observation starts the next episode: not the state the limit cut off
                    assert not np.allclose(terminal, obs[index]), (episode, index)
    finally:
        venv.close()


@pytest.mark.parametrize("backend", ["torch", "gymnasium", "envpool"])
def test_a_termination_is_not_a_truncation(backend: str) -> None:
    """Pushing the cart one way drops the pole within a few dozen steps: done, not truncated."""
    venv = limited("CartPole", backend, limit=500)
    try:
        venv.reset()
        first_ends: dict[int, dict[str, Any]] = {}
        for _ in range(100):
            _, _, dones, infos = venv.step(np.ones(venv.num_envs, dtype=np.int64))
            for index in np.flatnonzero(dones):
                first_ends.setdefault(int(index), infos[index])
            if len(first_ends) == venv.num_envs:
                break
        assert len(first_ends) == venv.num_envs
        assert all(info["TimeLimit.truncated"] is False for info in first_ends.values())
        assert all(info["episode"]["l"] < 100 for info in first_ends.values())
    finally:
        venv.close()


class RewardRecorder(VecEnvWrapper):
    """Keeps what the env returned at each step, before the agent touches the rewards."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.steps: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]] = []

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.steps.append((rewards.copy(), dones.copy(), infos))
        return obs, rewards, dones, infos


@pytest.mark.parametrize(
    ("name", "backend", "limit"),
    [(name, backend, LIMIT) for name, backend in CASES] + [("CartPole", "torch", 500)],
)
def test_truncated_steps_are_bootstrapped_with_the_critic_of_the_terminal_observation(
    name: str, backend: str, limit: int
) -> None:
    gamma, critic = 0.9, 3.0
    recorder = RewardRecorder(limited(name, backend, limit=limit))
    n_steps = 3 * LIMIT + 2 if limit == LIMIT else 60  # the last case ends episodes by termination only
    model = ACKTR("MlpPolicy", recorder, n_steps=n_steps, gamma=gamma, seed=0, device="cpu")
    with th.no_grad():  # V ≡ critic whatever the observation
        model.policy.value_net.weight.zero_()
        model.policy.value_net.bias.fill_(critic)
    try:
        model.learn(n_steps * recorder.num_envs)  # one rollout (then one update, after the check's data)
        buffer_rewards = model.rollout_buffer.rewards  # (n_steps, n_envs)
        assert len(recorder.steps) == n_steps
        truncations = 0
        for step, (rewards, dones, infos) in enumerate(recorder.steps):
            for env in range(recorder.num_envs):
                truncated = bool(dones[env]) and infos[env].get("TimeLimit.truncated", False)
                truncations += truncated
                expected = rewards[env] + (gamma * critic if truncated else 0.0)
                assert buffer_rewards[step, env] == pytest.approx(expected, rel=1e-5, abs=1e-5), (step, env)
        if limit == LIMIT:
            assert truncations == 3 * recorder.num_envs
        else:
            assert truncations == 0 and any(dones.any() for _, dones, _ in recorder.steps)
    finally:
        recorder.close()
