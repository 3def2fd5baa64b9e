"""Torch-native batched classic-control environments (CPU or CUDA), with same-step auto-reset.

Every environment holds its state as a ``(state_dim, num_envs)`` tensor on its device (component-major, so
each physical quantity is one contiguous row) and advances all copies with one set of tensor ops.
:meth:`TorchVecEnv.step` takes an action tensor and returns a :class:`TorchStep` of tensors on the same
device; on accelerators nothing leaves the device and nothing synchronises (no ``.item()``, no boolean
indexing), so a rollout can stay on the GPU (on CPU, resets sample only for the finished copies). Finished
copies are reset in the same step (SB3 semantics); the observation they reached is ``TorchStep.final_obs``.

The dynamics follow gymnasium's reference implementations (CartPole-v1, Acrobot-v1, MountainCar-v0,
MountainCarContinuous-v0, Pendulum-v1) step for step; ``tests/test_envs_torch.py`` checks them against
gymnasium from identical states and actions. ``reset(seed=s)`` draws copy ``i``'s initial state exactly as
gymnasium's ``env.reset(seed=s + i)`` does (SB3's ``VecEnv.seed`` convention), so the first episode matches
the gymnasium backend; later resets use a torch generator on the device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor


class TorchStep(NamedTuple):
    """Result of one batched step; all tensors are on the env's device, leading dim ``num_envs``."""

    obs: Tensor  # (N, obs_dim) observation after auto-reset (the reset observation where done)
    reward: Tensor  # (N,) reward of this step
    terminated: Tensor  # (N,) bool, the MDP reached a terminal state
    truncated: Tensor  # (N,) bool, the time limit was reached (may coincide with terminated)
    final_obs: Tensor  # (N, obs_dim) observation reached by this step, before any reset
    episode_return: Tensor  # (N,) undiscounted return of the episode that ended here (valid where done)
    episode_length: Tensor  # (N,) int64 length of the episode that ended here (valid where done)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _transposed_float32(state: Tensor) -> Tensor:
    """``state`` (D, N) as a float32 (N, D) copy that never shares memory with ``state``.

    Copied through a (N, 1, D) permuted view: torch's copy kernel takes about half the time of
    ``state.T.contiguous()`` on CPU that way (13 vs 29 us for D = 4, N = 4096). ``clone``, not
    ``contiguous``: with N = 1 the transposed view already counts as contiguous, and a view would change when
    the step writes reset states into ``state``.
    """
    rows, batch = state.shape
    permuted = state.to(torch.float32).unsqueeze(2).permute(1, 2, 0)
    return permuted.clone(memory_format=torch.contiguous_format).view(batch, rows)


class TorchVecEnv(ABC):
    """Batch of ``num_envs`` copies of one environment as tensors.

    Subclasses define the state layout and implement :meth:`_dynamics`, :meth:`_observe` and the two
    initial-state samplers. The base class handles time limits, episode statistics and auto-reset.
    """

    env_id: ClassVar[str]
    default_max_episode_steps: ClassVar[int]
    state_dim: ClassVar[int]
    single_observation_space: gym.spaces.Box
    single_action_space: gym.spaces.Space

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_episode_steps: int | None = None,
        seed: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_episode_steps = max_episode_steps or self.default_max_episode_steps
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed is not None else int(np.random.default_rng().integers(2**63)))
        self.state = torch.zeros(self.state_dim, num_envs, device=self.device, dtype=dtype)  # (D, N)
        self.elapsed_steps = torch.zeros(num_envs, device=self.device, dtype=torch.int64)
        self.episode_return = torch.zeros(num_envs, device=self.device, dtype=dtype)
        # 0-dim tensor operands dispatch faster than Python numbers (see CartPoleTorch)
        self._one_step = torch.ones((), device=self.device, dtype=torch.int64)
        self._step_limit = torch.tensor(self.max_episode_steps, device=self.device, dtype=torch.int64)
        self._zero_step = torch.zeros((), device=self.device, dtype=torch.int64)
        self._zero_return = torch.zeros((), device=self.device, dtype=dtype)

    # --- subclass interface -------------------------------------------------------------------------

    @abstractmethod
    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Advance ``state`` (D, N) under ``actions``: (next_state (D, N), reward (N,), terminated (N,))."""

    @abstractmethod
    def _observe(self, state: Tensor) -> Tensor:
        """Observation (N, obs_dim) float32 of ``state`` (D, N)."""

    @abstractmethod
    def _sample_initial_state(self, num: int) -> Tensor:
        """``num`` initial states (D, num) drawn with :attr:`generator` on the device."""

    @abstractmethod
    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """One initial state drawn exactly as gymnasium's ``reset`` draws it from ``rng``."""

    # --- public API ---------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Tensor:
        """Reset every copy; with ``seed``, copy ``i`` starts where gymnasium's ``reset(seed=seed + i)`` does.

        Returns:
            observations, shape (N, obs_dim).
        """
        if seed is None:
            self.state = self._sample_initial_state(self.num_envs)
        else:
            self.generator.manual_seed(seed)
            states = np.stack(
                [self._gymnasium_initial_state(np.random.default_rng(seed + i)) for i in range(self.num_envs)]
            )
            self.state = torch.as_tensor(states.T.copy(), device=self.device, dtype=self.dtype)
        self.elapsed_steps.zero_()
        self.episode_return.zero_()
        return self._observe(self.state)

    def set_state(self, state: Tensor | np.ndarray) -> None:
        """Overwrite the physical state with ``state`` (N, D), e.g. to replay a gymnasium trajectory."""
        batch = torch.as_tensor(state, device=self.device, dtype=self.dtype).reshape(
            self.num_envs, self.state_dim
        )
        self.state = batch.T.contiguous()

    def get_state(self) -> Tensor:
        """The physical state as (N, D) (a copy)."""
        return self.state.T.clone()

    def step(self, actions: Tensor) -> TorchStep:
        """Advance all copies one step; finished copies restart in the same step (see :class:`TorchStep`).

        Args:
            actions: (N,) integer actions for discrete envs, (N, action_dim) or (N,) floats for Box envs.
        """
        actions = torch.as_tensor(actions, device=self.device)
        next_state, reward, terminated = self._dynamics(self.state, actions)
        episode_length = self.elapsed_steps + self._one_step
        truncated = episode_length >= self._step_limit
        done = terminated | truncated
        episode_return = self.episode_return + reward
        final_obs = self._observe(next_state)
        self.episode_return = torch.where(done, self._zero_return, episode_return)
        self.elapsed_steps = torch.where(done, self._zero_step, episode_length)
        if self.device.type == "cpu":
            # CPU: no device sync to fear, so sample initial states only for the copies that finished
            done_ids = done.nonzero().squeeze(1)
            self.state = next_state
            if len(done_ids) == 0:
                return TorchStep(
                    final_obs, reward, terminated, truncated, final_obs, episode_return, episode_length
                )
            initial = self._sample_initial_state(len(done_ids))
            next_state.index_copy_(1, done_ids, initial)
            obs = final_obs.clone().index_copy_(0, done_ids, self._observe(initial))
        else:
            # accelerators: sample for every copy and select, so that no shape depends on data (no sync)
            self.state = torch.where(done, self._sample_initial_state(self.num_envs), next_state)
            obs = torch.where(done.unsqueeze(1), self._observe(self.state), final_obs)
        return TorchStep(obs, reward, terminated, truncated, final_obs, episode_return, episode_length)

    def _uniform(self, num: int, low: Tensor | float, high: Tensor | float, width: int) -> Tensor:
        """Uniform samples (width, num) in [low, high) from :attr:`generator`."""
        if isinstance(low, float) and isinstance(high, float):  # one op instead of three
            samples = torch.empty(width, num, device=self.device, dtype=self.dtype)
            return samples.uniform_(low, high, generator=self.generator)
        unit = torch.rand(width, num, generator=self.generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * unit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device}, dtype={self.dtype})"


class CartPoleTorch(TorchVecEnv):
    """CartPole-v1: state (x, x_dot, theta, theta_dot); Euler integration with tau = 0.02."""

    env_id = "CartPole-v1"
    default_max_episode_steps = 500
    state_dim = 4
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    _high = np.array([x_threshold * 2, np.inf, theta_threshold * 2, np.inf], dtype=np.float32)
    single_observation_space = gym.spaces.Box(-_high, _high, dtype=np.float32)
    single_action_space = gym.spaces.Discrete(2)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        total_mass = self.masspole + self.masscart
        polemass_length = self.masspole * self.length
        # 0-dim tensors: an op with a tensor operand dispatches about twice as fast as one with a Python
        # float (which torch wraps into a fresh tensor and converts on every call); at these batch sizes
        # dispatch is most of the cost.
        self._coefficients = {
            name: torch.tensor(value, device=self.device, dtype=self.dtype)
            for name, value in {
                "force_per_mass": 2 * self.force_mag / total_mass,  # action {0, 1} -> force / total mass
                "minus_half_force_per_mass": -self.force_mag / total_mass,
                "gravity": self.gravity,
                "four_thirds_length": self.length * 4.0 / 3.0,
                "x_threshold": self.x_threshold,
                "theta_threshold": self.theta_threshold,
            }.items()
        }
        # multipliers of addcmul (``value=``) are plain numbers
        self._polemass_length_per_mass = polemass_length / total_mass
        self._cos2_coefficient = -self.length * self.masspole / total_mass

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # gymnasium's arithmetic, written with few ops and tensor constants: at these sizes every torch op
        # costs mostly its dispatch overhead.
        c = self._coefficients
        x, x_dot, theta, theta_dot = state.unbind(0)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        # temp = (force + polemass_length * theta_dot^2 * sin(theta)) / total_mass, force = -+force_mag
        temp = torch.addcmul(
            c["minus_half_force_per_mass"], actions.reshape(-1).to(state.dtype), c["force_per_mass"]
        )
        temp.addcmul_(theta_dot * theta_dot, sintheta, value=self._polemass_length_per_mass)
        # thetaacc = (g sin - cos temp) / (length (4/3 - masspole cos^2 / total_mass))
        numerator = sintheta.mul_(c["gravity"]).addcmul_(
            costheta, temp, value=-1.0
        )  # sin is not needed after
        denominator = torch.addcmul(c["four_thirds_length"], costheta, costheta, value=self._cos2_coefficient)
        thetaacc = numerator.div_(denominator)
        # xacc = temp - polemass_length * thetaacc * cos / total_mass
        xacc = temp.addcmul_(thetaacc, costheta, value=-self._polemass_length_per_mass)
        # state + tau * (x_dot, xacc, theta_dot, thetaacc), with one multiply-add over all four rows
        next_state = torch.add(state, torch.stack((x_dot, xacc, theta_dot, thetaacc)), alpha=self.tau)
        terminated = (next_state[0].abs() > c["x_threshold"]).logical_or_(
            next_state[2].abs() > c["theta_threshold"]
        )
        reward = torch.ones_like(x)  # v1 pays 1 also on the terminating step
        return next_state, reward, terminated

    def _observe(self, state: Tensor) -> Tensor:
        return _transposed_float32(state)

    def _sample_initial_state(self, num: int) -> Tensor:
        return self._uniform(num, -0.05, 0.05, 4)

    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(low=-0.05, high=0.05, size=(4,))


class AcrobotTorch(TorchVecEnv):
    """Acrobot-v1 ("book" dynamics, no torque noise): state (theta1, theta2, dtheta1, dtheta2), RK4."""

    env_id = "Acrobot-v1"
    default_max_episode_steps = 500
    state_dim = 4
    dt = 0.2
    link_length_1, link_mass_1, link_mass_2 = 1.0, 1.0, 1.0
    link_com_pos_1, link_com_pos_2, link_moi = 0.5, 0.5, 1.0
    max_vel_1, max_vel_2 = 4 * math.pi, 9 * math.pi
    _high = np.array([1.0, 1.0, 1.0, 1.0, max_vel_1, max_vel_2], dtype=np.float32)
    single_observation_space = gym.spaces.Box(-_high, _high, dtype=np.float32)
    single_action_space = gym.spaces.Discrete(3)

    def _derivatives(self, s: Tensor, torque: Tensor) -> Tensor:
        """Time derivative (N, 4) of the state (N, 4) under ``torque`` (N,)."""
        m1, m2, l1 = self.link_mass_1, self.link_mass_2, self.link_length_1
        lc1, lc2, moi = self.link_com_pos_1, self.link_com_pos_2, self.link_moi
        g = 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(0)
        cos_theta2, sin_theta2 = torch.cos(theta2), torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + 2 * moi
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + moi
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin_theta2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin_theta2 - phi2) / (
            m2 * lc2**2 + moi - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=0)

    @staticmethod
    def _wrap(x: Tensor, low: float, high: float) -> Tensor:
        # one period each way is enough: |dtheta| <= 9 pi bounds one RK4 step (dt 0.2) below 2 periods
        period = high - low
        for _ in range(2):
            x = torch.where(x > high, x - period, x)
            x = torch.where(x < low, x + period, x)
        return x

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        torque = actions.reshape(-1).to(state.dtype) - 1.0  # actions {0, 1, 2} -> torques {-1, 0, +1}
        half = self.dt / 2.0
        k1 = self._derivatives(state, torque)
        k2 = self._derivatives(state + half * k1, torque)
        k3 = self._derivatives(state + half * k2, torque)
        k4 = self._derivatives(state + self.dt * k3, torque)
        ns = state + self.dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        next_state = torch.stack(
            (
                self._wrap(ns[0], -math.pi, math.pi),
                self._wrap(ns[1], -math.pi, math.pi),
                ns[2].clamp(-self.max_vel_1, self.max_vel_1),
                ns[3].clamp(-self.max_vel_2, self.max_vel_2),
            ),
            dim=0,
        )
        theta1, theta2 = next_state[0], next_state[1]
        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(state.dtype)
        return next_state, reward, terminated

    def _observe(self, state: Tensor) -> Tensor:
        theta1, theta2, dtheta1, dtheta2 = state.unbind(0)
        obs = (torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1, dtheta2)
        return torch.stack(obs, dim=1).to(torch.float32)

    def _sample_initial_state(self, num: int) -> Tensor:
        return self._uniform(num, -0.1, 0.1, 4)

    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(low=-0.1, high=0.1, size=(4,))


class MountainCarTorch(TorchVecEnv):
    """MountainCar-v0: state (position, velocity), actions {0: left, 1: none, 2: right}, reward -1 a step."""

    env_id = "MountainCar-v0"
    default_max_episode_steps = 200
    state_dim = 2
    min_position, max_position, max_speed, goal_position, goal_velocity = -1.2, 0.6, 0.07, 0.5, 0.0
    force, gravity = 0.001, 0.0025
    single_observation_space = gym.spaces.Box(
        np.array([min_position, -max_speed], dtype=np.float32),
        np.array([max_position, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = gym.spaces.Discrete(3)

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        position, velocity = state.unbind(0)
        push = actions.reshape(-1).to(state.dtype) - 1.0
        velocity = velocity + push * self.force + torch.cos(3 * position) * (-self.gravity)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        return torch.stack((position, velocity), dim=0), -torch.ones_like(position), terminated

    def _observe(self, state: Tensor) -> Tensor:
        return _transposed_float32(state)

    def _sample_initial_state(self, num: int) -> Tensor:
        position = self._uniform(num, -0.6, -0.4, 1)
        return torch.cat((position, torch.zeros_like(position)), dim=0)

    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(low=-0.6, high=-0.4), 0.0])


class MountainCarContinuousTorch(TorchVecEnv):
    """MountainCarContinuous-v0: force in [-1, 1]; +100 on reaching the goal, -0.1 * action^2 every step.

    gymnasium stores this env's state as float32 after every step; we round the same way so float64 runs
    reproduce it exactly.
    """

    env_id = "MountainCarContinuous-v0"
    default_max_episode_steps = 999
    state_dim = 2
    min_position, max_position, max_speed, goal_position, goal_velocity = -1.2, 0.6, 0.07, 0.45, 0.0
    power = 0.0015
    single_observation_space = gym.spaces.Box(
        np.array([min_position, -max_speed], dtype=np.float32),
        np.array([max_position, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        position, velocity = state.unbind(0)
        action = actions.reshape(self.num_envs, -1)[:, 0].to(state.dtype)
        force = action.clamp(-1.0, 1.0)
        velocity = velocity + force * self.power - 0.0025 * torch.cos(3 * position)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = torch.where(terminated, 100.0, 0.0).to(state.dtype) - action.square() * 0.1
        next_state = torch.stack((position, velocity), dim=0).to(torch.float32).to(state.dtype)
        return next_state, reward, terminated

    def _observe(self, state: Tensor) -> Tensor:
        return _transposed_float32(state)

    def _sample_initial_state(self, num: int) -> Tensor:
        position = self._uniform(num, -0.6, -0.4, 1)
        return torch.cat((position, torch.zeros_like(position)), dim=0)

    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(low=-0.6, high=-0.4), 0.0])


class PendulumTorch(TorchVecEnv):
    """Pendulum-v1 (g = 10): state (theta, theta_dot); reward -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2)."""

    env_id = "Pendulum-v1"
    default_max_episode_steps = 200
    state_dim = 2
    max_speed, max_torque, dt, g, m, l = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0
    single_observation_space = gym.spaces.Box(
        np.array([-1.0, -1.0, -max_speed], dtype=np.float32),
        np.array([1.0, 1.0, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = gym.spaces.Box(-max_torque, max_torque, shape=(1,), dtype=np.float32)

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        theta, theta_dot = state.unbind(0)
        torque = (
            actions.reshape(self.num_envs, -1)[:, 0].to(state.dtype).clamp(-self.max_torque, self.max_torque)
        )
        normalized = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        costs = normalized.square() + 0.1 * theta_dot.square() + 0.001 * torque.square()
        new_theta_dot = (
            theta_dot
            + (3 * self.g / (2 * self.l) * torch.sin(theta) + 3.0 / (self.m * self.l**2) * torque) * self.dt
        )
        new_theta_dot = new_theta_dot.clamp(-self.max_speed, self.max_speed)
        new_theta = theta + new_theta_dot * self.dt
        terminated = torch.zeros_like(theta, dtype=torch.bool)
        return torch.stack((new_theta, new_theta_dot), dim=0), -costs, terminated

    def _observe(self, state: Tensor) -> Tensor:
        theta, theta_dot = state.unbind(0)
        return torch.stack((torch.cos(theta), torch.sin(theta), theta_dot), dim=1).to(torch.float32)

    def _sample_initial_state(self, num: int) -> Tensor:
        high = torch.tensor([[math.pi], [1.0]], device=self.device, dtype=self.dtype)
        return self._uniform(num, -high, high, 2)

    def _gymnasium_initial_state(self, rng: np.random.Generator) -> np.ndarray:
        high = np.array([np.pi, 1.0])
        return rng.uniform(low=-high, high=high)


TORCH_ENVS: dict[str, type[TorchVecEnv]] = {
    cls.env_id: cls
    for cls in (CartPoleTorch, AcrobotTorch, MountainCarTorch, MountainCarContinuousTorch, PendulumTorch)
}
