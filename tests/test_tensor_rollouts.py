"""Device-resident rollouts for the torch envs: the same rollout, buffer and updates as SB3's numpy path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from acktr import ACKTR, NPG
from acktr.agents.rollouts import TensorRolloutBuffer, explained_variance_of, tensor_rollouts_apply
from acktr.envs.adapters import TorchVecEnvAdapter
from acktr.envs.make import make_torch_env
from acktr.errors import NonFiniteEnvError
from acktr.guards import VecCheckFinite


class PassThrough(VecEnvWrapper):
    """A wrapper that changes nothing but hides the torch env: the generic SB3 path runs."""

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        return self.venv.step_wait()


class RecordSteps(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float, int, bool]] = []
        self.calls = 0

    def _on_step(self) -> bool:
        self.calls += 1
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            assert bool(done) == ("episode" in info)
            if "episode" in info:
                episode = info["episode"]
                self.episodes.append(
                    (self.num_timesteps, episode["r"], episode["l"], info["TimeLimit.truncated"])
                )
        return True


def make_env(env_id: str, *, hide: bool, max_steps: int) -> VecEnv:
    torch_env = make_torch_env(env_id, n_envs=6, seed=3, device="cpu", max_episode_steps=max_steps)
    env: VecEnv = VecCheckFinite(TorchVecEnvAdapter(torch_env), env_id)
    env.seed(3)
    return PassThrough(env) if hide else env


@pytest.mark.parametrize("algo", ["acktr", "npg"])
@pytest.mark.parametrize(("env_id", "max_steps"), [("CartPole-v1", 9), ("Pendulum-v1", 7)])
def test_tensor_rollouts_equal_the_generic_path(env_id: str, max_steps: int, algo: str) -> None:
    """Same seeds: the tensor path and SB3's numpy path (the env hidden behind a pass-through wrapper)
    collect the same rollouts — truncated episodes bootstrapped with γ·V(terminal observation) — report the
    same episodes to callbacks and ``ep_info_buffer``, and end at the same parameters."""
    runs = []
    for hide in (False, True):
        th.manual_seed(0)
        env = make_env(env_id, hide=hide, max_steps=max_steps)
        if algo == "acktr":
            model = ACKTR("MlpPolicy", env, n_steps=5, cold_iter=1, seed=0, device="cpu", gae_lambda=0.9)
        else:
            model = NPG("MlpPolicy", env, n_steps=5, batch_size=8, seed=0, device="cpu", gae_lambda=0.9)
        assert tensor_rollouts_apply(model, env) is not hide
        callback = RecordSteps()
        buffers: list[dict[str, np.ndarray]] = []
        original_train = model.train

        def train(model: ACKTR = model, original: Any = original_train, buffers: list[Any] = buffers) -> None:
            buffer = model.rollout_buffer
            buffers.append(
                {
                    name: np.asarray(th.as_tensor(getattr(buffer, name)).numpy()).copy()
                    for name in ("observations", "actions", "rewards", "episode_starts", "values", "returns")
                }
            )
            original()

        model.train = train  # type: ignore[method-assign,assignment]
        model.learn(6 * 5 * 6, callback=callback)
        expected_buffer = TensorRolloutBuffer if not hide else RolloutBuffer
        assert type(model.rollout_buffer) is expected_buffer
        runs.append((model, callback, buffers))
    (fast, fast_callback, fast_buffers), (generic, generic_callback, generic_buffers) = runs
    assert len(fast_buffers) == 6
    assert fast_callback.calls == generic_callback.calls == 6 * 5
    # NPG's K-FAC critic amplifies float rounding (GAE in torch vs numpy: ~1e-7) about tenfold per update,
    # so its runs are compared over their first 3 rollouts (a missed bootstrap changes a reward by γ·V)
    rollouts = 6 if algo == "acktr" else 3
    last_step = rollouts * 6 * 5

    def early(episodes: list[Any]) -> list[Any]:
        return [(step, round(r, 3), length, cut) for step, r, length, cut in episodes if step <= last_step]

    assert early(fast_callback.episodes) == early(generic_callback.episodes)
    assert any(truncated for *_, truncated in fast_callback.episodes)  # bootstrapping was exercised
    assert len(fast.ep_info_buffer) == len(generic.ep_info_buffer)
    learned = 1e-5 if algo == "acktr" else 2e-3
    for index in range(rollouts):
        for name, value in generic_buffers[index].items():
            rtol, atol = (learned, learned) if name in ("values", "returns", "rewards") else (1e-5, 1e-6)
            np.testing.assert_allclose(
                fast_buffers[index][name], value, rtol=rtol, atol=atol, err_msg=f"{name} of rollout {index}"
            )
    if algo == "npg":
        return
    for name, value in generic.policy.state_dict().items():
        th.testing.assert_close(fast.policy.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast._last_obs, generic._last_obs, rtol=1e-6)


def test_tensor_buffer_minibatches_cover_the_rollout_and_explained_variance_matches_sb3() -> None:
    env = make_env("CartPole-v1", hide=False, max_steps=500)
    model = ACKTR("MlpPolicy", env, n_steps=4, seed=0, device="cpu")
    model.learn(6 * 4 * 2)
    buffer = model.rollout_buffer
    assert isinstance(buffer, TensorRolloutBuffer)
    batches = list(buffer.get(batch_size=5))
    assert [len(batch.observations) for batch in batches] == [5, 5, 5, 5, 4]
    seen = th.cat([batch.returns for batch in batches]).sort().values
    assert th.equal(seen, buffer.returns.flatten().sort().values)  # a permutation: every row once
    from stable_baselines3.common.utils import explained_variance

    expected = explained_variance(buffer.values.flatten().numpy(), buffer.returns.flatten().numpy())
    assert explained_variance_of(buffer) == pytest.approx(float(expected), rel=1e-5)


def test_tensor_rollouts_raise_the_one_line_error_on_a_nan_observation() -> None:
    env = make_env("CartPole-v1", hide=False, max_steps=500)
    model = ACKTR("MlpPolicy", env, n_steps=4, seed=0, device="cpu")
    torch_env = env.venv.torch_env  # type: ignore[attr-defined]
    dynamics = torch_env._dynamics

    def broken(state: th.Tensor, actions: th.Tensor) -> Any:
        next_state, reward, terminated = dynamics(state, actions)
        next_state = next_state.clone()
        next_state[0, 2] = float("nan")
        return next_state, reward, terminated

    torch_env._dynamics = broken
    with pytest.raises(
        NonFiniteEnvError, match=r"CartPole-v1: env 2 returned a NaN observation at env step 6"
    ):
        model.learn(24)


def test_custom_buffers_and_other_wrappers_keep_the_generic_path() -> None:
    from stable_baselines3.common.vec_env import VecNormalize

    from acktr import NoisyACKTR

    env = make_env("CartPole-v1", hide=False, max_steps=500)
    assert not tensor_rollouts_apply(NoisyACKTR("MlpPolicy", env, n_steps=4, device="cpu"), env)
    normalized = VecNormalize(make_env("CartPole-v1", hide=False, max_steps=500))
    model = ACKTR("MlpPolicy", normalized, n_steps=4, device="cpu")
    assert not tensor_rollouts_apply(model, normalized)
    model.learn(48)
    assert type(model.rollout_buffer) is RolloutBuffer


@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_tensor_rollouts_stay_on_the_gpu() -> None:
    torch_env = make_torch_env("CartPole-v1", n_envs=64, seed=0, device="cuda")
    env = VecCheckFinite(TorchVecEnvAdapter(torch_env), "CartPole-v1")
    model = ACKTR("MlpPolicy", env, n_steps=5, seed=0, device="cuda")
    model.learn(64 * 5 * 3)
    buffer = model.rollout_buffer
    assert isinstance(buffer, TensorRolloutBuffer) and buffer.observations.device.type == "cuda"
    assert len(model.ep_info_buffer) > 0
