"""Torch-native envs against gymnasium's reference implementations, and their same-step auto-reset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from acktr.envs import TORCH_ENVS, TorchVecEnv, make_env, make_torch_env

ENV_IDS = list(TORCH_ENVS)


def _gym_state(env: gym.Env) -> np.ndarray:
    """The physical state of a gymnasium classic-control env as a float64 vector."""
    return np.asarray(env.unwrapped.state, dtype=np.float64).reshape(-1)  # type: ignore[attr-defined]


def _set_gym_state(env: gym.Env, state: np.ndarray) -> None:
    if env.spec is not None and env.spec.id == "MountainCar-v0":
        env.unwrapped.state = (float(state[0]), float(state[1]))  # type: ignore[attr-defined]
    else:
        env.unwrapped.state = np.array(state, dtype=np.float64)  # type: ignore[attr-defined]


def _random_action(env_id: str, rng: np.random.Generator) -> np.ndarray:
    if env_id == "Pendulum-v1":
        return rng.uniform(-2.5, 2.5, size=(1,)).astype(np.float32)  # beyond the bounds: exercises the clip
    if env_id == "MountainCarContinuous-v0":
        return rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
    return np.array(rng.integers(0, TORCH_ENVS[env_id].single_action_space.n))  # type: ignore[attr-defined]


def _batched(env_id: str, action: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(action).reshape(1, -1) if action.ndim else torch.as_tensor(action).reshape(1)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_one_step_matches_gymnasium_from_identical_states(env_id: str) -> None:
    """From the same state and action, obs/reward/terminated match gymnasium for 300 varied states."""
    rng = np.random.default_rng(0)
    reference = gym.make(env_id).unwrapped
    torch_env = make_torch_env(env_id, n_envs=1, device="cpu", dtype=torch.float64)
    reference.reset(seed=1)
    torch_env.reset(seed=1)
    terminations = 0
    for step in range(300):
        if step % 25 == 0:  # visit states far from the start distribution too
            reference.reset(seed=int(rng.integers(1 << 30)))
            for _ in range(int(rng.integers(0, 60))):
                _, _, terminated, _, _ = reference.step(_random_action(env_id, rng))
                if terminated:
                    reference.reset()
        state = _gym_state(reference)
        torch_env.set_state(state[None])
        action = _random_action(env_id, rng)
        obs, reward, terminated, _, _ = reference.step(action)
        result = torch_env.step(_batched(env_id, action))
        np.testing.assert_allclose(result.final_obs[0].numpy(), obs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(result.reward[0]), float(reward), rtol=1e-6, atol=1e-6)
        assert bool(result.terminated[0]) == bool(terminated)
        terminations += bool(terminated)
        if terminated:
            reference.reset(seed=int(rng.integers(1 << 30)))
    if env_id == "CartPole-v1":
        assert terminations > 0  # the comparison covered terminal steps too


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_first_episode_matches_gymnasium(env_id: str) -> None:
    """reset(seed=s) starts copy i like gymnasium's reset(seed=s+i); float64 runs stay in lockstep."""
    n_envs, seed = 3, 11
    torch_env = make_torch_env(env_id, n_envs=n_envs, device="cpu", dtype=torch.float64)
    references = [gym.make(env_id) for _ in range(n_envs)]
    torch_obs = torch_env.reset(seed=seed).numpy()
    gym_obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(references)])
    np.testing.assert_allclose(torch_obs, gym_obs, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(3)
    finished = np.zeros(n_envs, dtype=bool)
    limit = TORCH_ENVS[env_id].default_max_episode_steps
    for _ in range(limit):
        actions = [_random_action(env_id, rng) for _ in range(n_envs)]
        result = torch_env.step(torch.as_tensor(np.stack(actions)))
        for i, env in enumerate(references):
            if finished[i]:
                continue
            obs, reward, terminated, truncated, _ = env.step(actions[i])
            np.testing.assert_allclose(result.final_obs[i].numpy(), obs, rtol=1e-4, atol=1e-4)
            assert abs(float(result.reward[i]) - float(reward)) < 1e-4
            assert bool(result.terminated[i]) == terminated
            assert bool(result.truncated[i]) == truncated
            finished[i] = terminated or truncated
        if finished.all():
            break
    assert finished.all()


def test_auto_reset_statistics_and_time_limit() -> None:
    """Done copies restart in the same step; returns/lengths are those of the finished episode."""
    env = make_torch_env("CartPole", n_envs=64, device="cpu", max_episode_steps=30)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    running_return = torch.zeros(64)
    running_length = torch.zeros(64, dtype=torch.int64)
    saw_terminated = saw_truncated = False
    for _ in range(120):
        actions = torch.randint(0, 2, (64,), generator=generator)
        result = env.step(actions)
        running_return += result.reward
        running_length += 1
        done = result.terminated | result.truncated
        assert torch.equal(result.truncated, running_length >= 30)
        assert torch.allclose(result.episode_return[done], running_return[done])
        assert torch.equal(result.episode_length[done], running_length[done])
        # restarted copies are near the start distribution; the others continue from final_obs
        assert (result.obs[done].abs() <= 0.05).all()
        assert torch.equal(result.obs[~done], result.final_obs[~done])
        saw_terminated |= bool(result.terminated.any())
        saw_truncated |= bool((result.truncated & ~result.terminated).any())
        running_return[done] = 0.0
        running_length[done] = 0
    assert saw_terminated and saw_truncated


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0"])
def test_final_obs_survives_the_reset_with_one_copy(env_id: str) -> None:
    """n_envs=1, float32: final_obs is the state the episode reached, not the reset state written after it."""
    env = make_torch_env(env_id, n_envs=1, device="cpu", max_episode_steps=3)
    env.reset(seed=0)
    reference = gym.make(env_id, max_episode_steps=3)
    reference.reset(seed=0)
    action = np.array([1.0], dtype=np.float32) if env_id == "MountainCarContinuous-v0" else np.array(1)
    for _ in range(3):
        result = env.step(_batched(env_id, action))
        obs, *_ = reference.step(action)
    assert bool(result.truncated[0])
    np.testing.assert_allclose(result.final_obs[0].numpy(), obs, rtol=1e-5, atol=1e-6)
    assert not torch.equal(result.final_obs, result.obs)


def test_adapter_presents_sb3_semantics() -> None:
    """The VecEnv adapter: terminal_observation, TimeLimit.truncated and Monitor-style episode info."""
    venv = make_env("CartPole", n_envs=4, seed=0, backend="torch", device="cpu", max_episode_steps=5)
    obs = venv.reset()
    assert obs.shape == (4, 4) and obs.dtype == np.float32
    for step in range(1, 6):
        obs, rewards, dones, infos = venv.step(np.ones(4, dtype=np.int64))
        assert rewards.dtype == np.float32
        if step < 5:
            assert not dones.any()
    assert dones.all()  # 5 pushes to one side cannot topple the pole: every copy is truncated
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["episode"]["r"] == 5.0 and info["episode"]["l"] == 5
        assert venv.observation_space.contains(info["terminal_observation"])
        assert abs(info["terminal_observation"][1]) > 0.5  # the cart was pushed: not a reset state
    assert (np.abs(obs) <= 0.05).all()  # already reset in the same step


def test_seeded_first_episode_is_the_same_on_torch_and_gymnasium_backends() -> None:
    """make_env(seed=s): the same first episode (observations to float tolerance) on both backends."""
    venvs = [make_env("Acrobot", n_envs=2, seed=5, backend=b, device="cpu") for b in ("torch", "gymnasium")]
    first = [venv.reset() for venv in venvs]
    np.testing.assert_allclose(first[0], first[1], atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = rng.integers(0, 3, size=2)
        steps = [venv.step(actions) for venv in venvs]
        np.testing.assert_allclose(steps[0][0], steps[1][0], atol=1e-4)
        np.testing.assert_array_equal(steps[0][1], steps[1][1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cuda_matches_cpu(env_id: str) -> None:
    """The same seeded run on CUDA and CPU (float64) gives the same observations, on the device."""
    runs: list[list[torch.Tensor]] = []
    for device in ("cpu", "cuda"):
        env: TorchVecEnv = make_torch_env(env_id, n_envs=16, device=device, dtype=torch.float64)
        env.set_state(env.reset(seed=0).new_zeros(16, env.state_dim) + 0.01)
        generator = torch.Generator().manual_seed(0)
        observations = []
        for _ in range(50):
            if isinstance(env.single_action_space, gym.spaces.Discrete):
                actions = torch.randint(0, int(env.single_action_space.n), (16,), generator=generator)
            else:
                actions = torch.rand(16, 1, generator=generator) * 2 - 1
            result = env.step(actions.to(device))
            assert result.final_obs.device.type == device
            observations.append(result.final_obs.cpu())
        runs.append(observations)
    for cpu_obs, cuda_obs in zip(*runs, strict=True):
        torch.testing.assert_close(cpu_obs, cuda_obs, atol=1e-5, rtol=1e-5)
