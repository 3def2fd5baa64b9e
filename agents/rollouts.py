"""Device-resident rollouts for the torch-native envs (:mod:`acktr.envs.torch_envs`).

SB3's ``collect_rollouts`` talks to every env through numpy: each step copies the observations to the host,
builds one info dict per copy, loops over the copies for time-limit bootstrapping and episode statistics, and
copies everything back into a numpy ``RolloutBuffer``. For a :class:`~acktr.envs.torch_envs.TorchVecEnv`
behind :class:`~acktr.envs.adapters.TorchVecEnvAdapter` none of that is needed: :func:`collect_tensor_rollout`
steps the env with the policy's action tensor and writes observations, actions, rewards and episode starts
straight into a :class:`TensorRolloutBuffer` on the env's device. Time-limit bootstrapping, the non-finite
check, episode statistics and callbacks keep SB3's semantics; info dicts exist only for the copies whose
episode ended in that step (every other entry of ``infos`` is one shared empty mapping). Host transfers: one
per step (the ``done`` mask with the three finite checks), one more on steps where an episode ended (the
finished copies' statistics), and the last observation once per rollout; free on a CPU.

:func:`tensor_rollouts_apply` decides when the fast path is taken: a torch env, seen directly or through
:class:`~acktr.guards.VecCheckFinite` only (any other wrapper, e.g. ``VecNormalize``, changes what the agent
sees, so the generic path runs), and a policy without a dict observation space.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from types import MappingProxyType
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.vec_env import VecEnv

from acktr.envs.adapters import TorchVecEnvAdapter
from acktr.errors import NonFiniteEnvError
from acktr.guards import VecCheckFinite

_NO_INFO: Any = MappingProxyType({})  # the info of a copy whose episode goes on (read-only, shared)


class TensorRolloutBuffer(RolloutBuffer):
    """SB3's ``RolloutBuffer`` with its arrays as torch tensors on ``device`` (same fields, same shapes:
    observations (T, N, *obs_shape), actions (T, N, action_dim), the rest (T, N)); ``get`` yields
    ``RolloutBufferSamples`` gathered from them on the device, in SB3's shuffled order."""

    def reset(self) -> None:
        device = self.device
        shape = (self.buffer_size, self.n_envs)
        self.observations = th.zeros((*shape, *self.obs_shape), dtype=th.float32, device=device)  # type: ignore[assignment]
        self.actions = th.zeros((*shape, self.action_dim), dtype=th.float32, device=device)  # type: ignore[assignment]
        for name in ("rewards", "returns", "episode_starts", "values", "log_probs", "advantages"):
            setattr(self, name, th.zeros(shape, dtype=th.float32, device=device))
        self.generator_ready = False
        self.pos = 0
        self.full = False

    def add_tensors(
        self,
        obs: th.Tensor,
        action: th.Tensor,
        reward: th.Tensor,
        episode_start: th.Tensor,
        value: th.Tensor,
        log_prob: th.Tensor,
    ) -> None:
        """One step of all copies: obs (N, *obs_shape), action (N,) or (N, action_dim), the rest (N,) or
        (N, 1); any device or dtype (converted)."""
        self.observations[self.pos] = obs.reshape(self.n_envs, *self.obs_shape)  # type: ignore[index]
        self.actions[self.pos] = action.reshape(self.n_envs, self.action_dim)  # type: ignore[index]
        self.rewards[self.pos] = reward.reshape(self.n_envs)  # type: ignore[index]
        self.episode_starts[self.pos] = episode_start.reshape(self.n_envs)  # type: ignore[index]
        self.values[self.pos] = value.reshape(self.n_envs)  # type: ignore[index]
        self.log_probs[self.pos] = log_prob.reshape(self.n_envs)  # type: ignore[index]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("TensorRolloutBuffer is filled with add_tensors() by collect_tensor_rollout()")

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: Any) -> None:  # type: ignore[override]
        """GAE(λ) as SB3 computes it: last_values (N, 1) or (N,), dones (N,) of the last step."""
        last_values = last_values.reshape(self.n_envs).float()
        next_non_terminal_last = 1.0 - th.as_tensor(dones, device=self.device).reshape(self.n_envs).float()
        last_gae = th.zeros(self.n_envs, device=self.device)
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal, next_values = next_non_terminal_last, last_values
            else:
                next_non_terminal = 1.0 - self.episode_starts[step + 1]  # type: ignore[index]
                next_values = self.values[step + 1]  # type: ignore[index]
            delta = (
                self.rewards[step]  # type: ignore[index]
                + self.gamma * next_values * next_non_terminal
                - self.values[step]  # type: ignore[index]
            )
            last_gae = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae
            self.advantages[step] = last_gae  # type: ignore[index]
        self.returns = self.advantages + self.values  # type: ignore[assignment,operator]

    def get(self, batch_size: int | None = None) -> Generator[RolloutBufferSamples, None, None]:  # type: ignore[override]
        assert self.full, "the rollout is not complete"
        total = self.buffer_size * self.n_envs
        flat = {  # env-major rows, as SB3's swap_and_flatten lays them out
            name: getattr(self, name).transpose(0, 1).reshape(total, *getattr(self, name).shape[2:])
            for name in ("observations", "actions", "values", "log_probs", "advantages", "returns")
        }
        if batch_size is None:
            batch_size = total
        # SB3's order, from numpy's global generator as SB3 draws it, so both paths see the same batches
        order = th.as_tensor(np.random.permutation(total), device=self.device)
        for start in range(0, total, batch_size):
            index = order[start : start + batch_size]
            rows = {name: tensor[index] for name, tensor in flat.items()}
            yield RolloutBufferSamples(
                observations=rows["observations"],
                actions=rows["actions"],
                old_values=rows["values"],
                old_log_prob=rows["log_probs"],
                advantages=rows["advantages"],
                returns=rows["returns"],
            )


def torch_env_of(env: VecEnv | None) -> tuple[TorchVecEnvAdapter, VecCheckFinite | None] | None:
    """(adapter, finite-check wrapper or None) when ``env`` is a torch env seen directly or through
    :class:`VecCheckFinite` only; else None."""
    check = None
    if isinstance(env, VecCheckFinite):
        check, env = env, env.venv
    if type(env) is TorchVecEnvAdapter:
        return env, check
    return None


def tensor_rollouts_apply(algorithm: OnPolicyAlgorithm, env: VecEnv) -> bool:
    """Whether :func:`collect_tensor_rollout` serves ``algorithm`` on ``env`` (see the module docstring):
    a torch env, a non-dict observation space and SB3's default buffer (a custom ``rollout_buffer_class``
    keeps the generic path)."""
    return (
        torch_env_of(env) is not None
        and not isinstance(algorithm.observation_space, spaces.Dict)
        and type(getattr(algorithm, "rollout_buffer", None)) in (RolloutBuffer, TensorRolloutBuffer)
    )


def explained_variance_of(buffer: RolloutBuffer) -> float:
    """SB3's ``explained_variance(values, returns)`` of a numpy or a tensor rollout buffer."""
    values, returns = buffer.values, buffer.returns
    if isinstance(values, th.Tensor):
        variance = th.var(returns.flatten(), unbiased=False)  # type: ignore[union-attr]
        if float(variance) == 0.0:
            return float("nan")
        return float(1.0 - th.var(returns.flatten() - values.flatten(), unbiased=False) / variance)  # type: ignore[operator]
    from stable_baselines3.common.utils import explained_variance

    return float(explained_variance(values.flatten(), returns.flatten()))


class TensorRolloutMixin:
    """For an ``OnPolicyAlgorithm`` subclass: ``collect_rollouts`` takes the device-resident path whenever
    :func:`tensor_rollouts_apply`, and SB3's otherwise. ``self.rollout_buffer`` is the buffer last filled."""

    def collect_rollouts(  # type: ignore[misc]
        self: Any, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        numpy_buffer = self.__dict__.get("_numpy_rollout_buffer")
        if tensor_rollouts_apply(self, env):
            if numpy_buffer is None:
                self._numpy_rollout_buffer = self.rollout_buffer
                self._tensor_rollout_buffer = TensorRolloutBuffer(
                    self.n_steps,
                    self.observation_space,
                    self.action_space,
                    device=self.device,
                    gamma=self.gamma,
                    gae_lambda=self.gae_lambda,
                    n_envs=self.n_envs,
                )
            self.rollout_buffer = self._tensor_rollout_buffer
            return collect_tensor_rollout(self, env, callback, self.rollout_buffer, n_rollout_steps)
        if numpy_buffer is not None and isinstance(rollout_buffer, TensorRolloutBuffer):
            self.rollout_buffer = rollout_buffer = numpy_buffer  # e.g. set_env() to a non-torch env
        return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)  # type: ignore[misc]

    def _excluded_save_params(self: Any) -> list[str]:
        return [*super()._excluded_save_params(), "_numpy_rollout_buffer", "_tensor_rollout_buffer"]  # type: ignore[misc]


def _raise_non_finite(check: VecCheckFinite, what: str, tensor: th.Tensor, verb: str) -> None:
    """:class:`VecCheckFinite`'s one-line error for a tensor known to hold a NaN/inf."""
    check._check(what, tensor.detach().cpu().numpy(), verb)
    raise NonFiniteEnvError(f"{check.env_id}: a non-finite {what} at env step {check.env_steps:,}")


def collect_tensor_rollout(
    algorithm: OnPolicyAlgorithm,
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: TensorRolloutBuffer,
    n_rollout_steps: int,
) -> bool:
    """``OnPolicyAlgorithm.collect_rollouts`` for a torch env, on its device (see the module docstring).

    Same contract as SB3's: fills ``rollout_buffer`` with ``n_rollout_steps`` steps of every copy, advances
    ``num_timesteps``, calls ``callback.on_step()`` after each env step (False stops the rollout and is
    returned), bootstraps truncated episodes with ``γ·V(terminal observation)``, feeds ``ep_info_buffer``.
    """
    found = torch_env_of(env)
    assert found is not None, "collect_tensor_rollout needs a torch env (see tensor_rollouts_apply)"
    adapter, check = found
    torch_env = adapter.torch_env
    policy, device = algorithm.policy, algorithm.device
    assert algorithm._last_obs is not None, "No previous observation was provided"
    policy.set_training_mode(False)
    rollout_buffer.reset()
    if algorithm.use_sde:
        policy.reset_noise(env.num_envs)
    box = isinstance(algorithm.action_space, spaces.Box)
    if box:
        low = th.as_tensor(algorithm.action_space.low, device=device)  # type: ignore[attr-defined]
        high = th.as_tensor(algorithm.action_space.high, device=device)  # type: ignore[attr-defined]
    obs = th.as_tensor(algorithm._last_obs, device=device, dtype=th.float32)  # type: ignore[arg-type]
    episode_starts = th.as_tensor(algorithm._last_episode_starts, device=device, dtype=th.float32)
    dones = np.zeros(env.num_envs, dtype=bool)
    callback.on_rollout_start()
    for n_steps in range(n_rollout_steps):
        if algorithm.use_sde and algorithm.sde_sample_freq > 0 and n_steps % algorithm.sde_sample_freq == 0:
            policy.reset_noise(env.num_envs)
        with th.no_grad():
            actions, values, log_probs = policy(obs)
        clipped_actions = actions
        if box:
            if policy.squash_output:
                clipped_actions = low + 0.5 * (actions + 1.0) * (high - low)
            else:
                clipped_actions = th.clamp(actions, low, high)
        step = torch_env.step(clipped_actions.to(torch_env.device))
        new_obs = step.obs.to(device, th.float32)
        rewards = step.reward.to(device, th.float32)
        done_mask = step.terminated | step.truncated
        n_envs = env.num_envs
        if check is None:
            dones = done_mask.cpu().numpy()  # the step's one host transfer (a view on a CPU)
        else:  # the finite checks ride along in the same transfer
            finite = [th.isfinite(tensor).all() for tensor in (clipped_actions, new_obs, rewards)]
            host = th.cat([done_mask.to(device), th.stack(finite)]).cpu().numpy()
            dones, finite_on_host = host[:n_envs], host[n_envs:]
            if not finite_on_host[0]:
                _raise_non_finite(check, "action", clipped_actions, "")
            check.env_steps += n_envs
            for ok, what, tensor in zip(
                finite_on_host[1:], ("observation", "reward"), (new_obs, rewards), strict=True
            ):
                if not ok:
                    _raise_non_finite(check, what, tensor, "returned")
        algorithm.num_timesteps += n_envs
        infos: list[Any] = [_NO_INFO] * n_envs
        done_ids = np.flatnonzero(dones)
        if len(done_ids):
            done_rows = th.as_tensor(done_ids, device=device)
            final_obs = step.final_obs.to(device, th.float32)[done_rows]
            # one transfer for the finished copies' statistics (and their terminal observations' check)
            columns = [
                (step.truncated & ~step.terminated).to(device, th.float64)[done_rows],
                step.episode_return.to(device, th.float64)[done_rows],
                step.episode_length.to(device, th.float64)[done_rows],
                th.isfinite(final_obs).all(dim=1).to(th.float64),
            ]
            by_time_column, return_column, length_column, finite_column = th.stack(columns).cpu().numpy()
            if check is not None and not finite_column.all():
                _raise_non_finite(check, "terminal observation", final_obs, "returned")
            by_time = by_time_column.astype(bool)
            returns = return_column.tolist()
            lengths = length_column.astype(np.int64).tolist()
            elapsed = round(time.time() - adapter._start_time, 6)
            for row, (index, timed_out) in enumerate(zip(done_ids.tolist(), by_time.tolist(), strict=True)):
                episode = {"r": round(returns[row], 6), "l": lengths[row], "t": elapsed}
                infos[index] = {"TimeLimit.truncated": timed_out, "episode": episode}
            if by_time.any():  # time-limit bootstrapping (SB3 issue #633), in one batched forward
                with th.no_grad():
                    terminal_values = policy.predict_values(final_obs[th.as_tensor(by_time, device=device)])
                rows = th.as_tensor(done_ids[by_time], device=device)
                rewards = rewards.index_add(0, rows, algorithm.gamma * terminal_values.flatten())
        callback.update_locals(locals())
        if not callback.on_step():
            return False
        if len(done_ids):  # after the callback, as SB3 does
            assert algorithm.ep_info_buffer is not None
            algorithm.ep_info_buffer.extend(infos[index]["episode"] for index in done_ids.tolist())
        rollout_buffer.add_tensors(obs, actions, rewards, episode_starts, values, log_probs)
        obs, episode_starts = new_obs, done_mask.to(device, th.float32)

    with th.no_grad():
        last_values = policy.predict_values(obs)
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=episode_starts)
    algorithm._last_obs = obs.cpu().numpy()  # type: ignore[assignment]
    algorithm._last_episode_starts = dones
    callback.update_locals(locals())
    callback.on_rollout_end()
    return True


__all__ = [
    "TensorRolloutBuffer",
    "TensorRolloutMixin",
    "collect_tensor_rollout",
    "explained_variance_of",
    "tensor_rollouts_apply",
    "torch_env_of",
]
