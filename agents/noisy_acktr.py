"""NoisyACKTR: ACKTR acting with policy weights sampled from the K-FAC posterior (noisy K-FAC exploration).

Noisy natural gradient (Zhang, Sun, Duvenaud & Grosse 2018) reads a Gaussian over the weights off the
curvature, ``Cov(vec W) = (λ/N)(A ⊗ G + γI)⁻¹`` around the mean weights ``M`` (DESIGN §5). Here that Gaussian
drives exploration, as parameter-space noise does (Plappert et al. 2018), but shaped by the Fisher:

- each environment ``e`` holds white noise ``E_e`` and acts with ``M + ΔW_e``,
  ``ΔW_e = s (F̂ + γI)^{-1/2} E_e``,
  mapped through the posterior of the policy layers before every rollout
  (:meth:`acktr.curvature.KFAC.weight_perturbations`, reusing the decompositions the preconditioner holds)
  and fixed for the whole segment. ``noise_resample="rollout"`` draws a new ``E_e`` every rollout;
  ``"episode"`` keeps it until env ``e``'s episode ends (redrawn at the first rollout boundary after the
  end), as parameter-space noise holds its perturbation for an episode: temporally consistent behaviour
  over a whole episode is what deep exploration needs;
- the update evaluates every rollout row at its own environment's sample and applies the gradient to ``M``
  (reparameterisation: ``∂L/∂M = ∂L/∂W̃``), with the optional prior term ``prior_precision · M``;
- the noise scale ``s`` (``noise_scale``, which absorbs ``sqrt(λ/N)``) is adapted once per rollout so that the
  measured ``KL(π_M ‖ π_{M+ΔW})`` on the rollout's states approaches ``noise_target_kl``
  (:func:`adapt_noise_scale`); logged as ``explore/noise_scale`` and ``explore/kl_perturbation``;
- ``predict`` (deterministic or not), evaluation and the value bootstraps use the mean weights.

Only the layers the action distribution depends on are perturbed (critic-only layers keep their mean, so the
value estimates are not noisier); parameters without a K-FAC block (``log_std``) are not perturbed.
Distributed runs (later): the mean stays synchronised like any parameter, and each rank draws its own noise
(the sampler takes a per-rank generator).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv

from acktr.agents.acktr import ACKTR, critic_only_parameter_names
from acktr.agents.fisher import mean_kl, snapshot

# s changes by at most this factor per rollout (the measured KL of one rollout is a noisy estimate)
NOISE_ADAPT_MAX_FACTOR = 1.5
NOISE_SCALE_BOUNDS = (1e-6, 1e2)
NOISE_RESAMPLE_CHOICES = ("rollout", "episode")


def _rows_of(noise: dict[str, th.Tensor]) -> int:
    return next(iter(noise.values())).shape[0] if noise else 0


def adapt_noise_scale(
    scale: float,
    measured_kl: float,
    target_kl: float,
    *,
    max_factor: float = NOISE_ADAPT_MAX_FACTOR,
    bounds: tuple[float, float] = NOISE_SCALE_BOUNDS,
) -> float:
    """The next noise scale: ``s · clip(sqrt(target / measured), 1/α, α)``, kept within ``bounds``.

    For small perturbations the KL is quadratic in the scale (``KL ≈ ½ s² tr(F̂ (F̂ + γI)⁻¹)``), so
    ``sqrt(target / measured)`` is the factor that would hit the target under that model; ``α = max_factor``
    bounds the change per rollout as parameter-space noise's fixed factor does. A measured KL of 0 (e.g. no
    curvature yet) grows ``s`` by ``α``; a NaN leaves it unchanged.
    """
    if measured_kl != measured_kl:  # NaN says nothing about the scale
        return scale
    if measured_kl <= 0.0:
        factor = max_factor
    else:
        factor = min(max(math.sqrt(target_kl / measured_kl), 1.0 / max_factor), max_factor)
    low, high = bounds
    return min(max(scale * factor, low), high)


class _EnvMajorBatch:
    """``get()`` yields the whole rollout once, unshuffled and env-major (rows
    ``e·n_steps … (e+1)·n_steps − 1`` are environment ``e``), so each row can be evaluated at its own
    environment's weight sample. One full batch is all ACKTR's update takes."""

    buffer_size: int
    n_envs: int
    full: bool
    generator_ready: bool

    def _flatten_observations(self) -> None:
        raise NotImplementedError

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        total = self.buffer_size * self.n_envs
        if batch_size not in (None, total):
            raise ValueError(
                f"{type(self).__name__} yields the whole rollout as one batch, got batch_size={batch_size}"
            )
        assert self.full, "the rollout buffer is not full"
        if not self.generator_ready:
            self._flatten_observations()
            for name in _ROLLOUT_ARRAYS:
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])  # type: ignore[attr-defined]
            self.generator_ready = True
        yield self._get_samples(np.arange(total))  # type: ignore[attr-defined]


_ROLLOUT_ARRAYS = ("actions", "values", "log_probs", "advantages", "returns")


class EnvMajorRolloutBuffer(_EnvMajorBatch, RolloutBuffer):
    """A :class:`RolloutBuffer` read as one env-major batch (see :class:`_EnvMajorBatch`)."""

    def _flatten_observations(self) -> None:
        self.observations = self.swap_and_flatten(self.observations)


class EnvMajorDictRolloutBuffer(_EnvMajorBatch, DictRolloutBuffer):
    """A :class:`DictRolloutBuffer` (Dict observations) read as one env-major batch."""

    def _flatten_observations(self) -> None:
        for key, observations in self.observations.items():
            self.observations[key] = self.swap_and_flatten(observations)


ENV_MAJOR_BUFFERS = (EnvMajorRolloutBuffer, EnvMajorDictRolloutBuffer)


class NoisyACKTR(ACKTR):
    """ACKTR exploring with weights sampled from its own K-FAC posterior (see the module docstring).

    Takes every :class:`ACKTR` keyword, plus:

    :param noise_target_kl: the mean ``KL(π_mean ‖ π_perturbed)`` over a rollout's states that the noise scale
        is adapted to (per rollout, :func:`adapt_noise_scale`). Default 0.01 nats per state. A schedule of the
        remaining progress (1 → 0; ``"lin_0.5"`` in the zoo or ``-p``) anneals the exploration noise, so that
        late rollouts act closer to the mean policy.
    :param noise_scale: the initial scale ``s`` of the samples ``ΔW ~ N(0, s² (F̂ + γI)⁻¹)`` (γ the damping).
        Before the first statistics the Fisher is 0 and the samples are ``N(0, s²/γ)``, so start small.
    :param noise_resample: when an environment's white noise ``E_e`` is redrawn: ``"rollout"`` (every
        rollout, the default) or ``"episode"`` (at the first rollout boundary after the env's episode ended;
        ``ΔW_e`` still follows the current curvature and scale every rollout).
    :param prior_precision: the prior term of noisy natural gradient: ``prior_precision · M`` is added to the
        gradient of the perturbed (actor) parameters (weight decay towards 0; the theory's value is
        ``λ/(N η_prior)``). Default 0: an RL policy is not fitted to a fixed data set, and the KL-targeted
        noise, not the prior, sets the exploration.

    Restrictions: ``use_sde`` (gSDE is another kind of exploration noise) is refused. Since every row is
    evaluated at its environment's sample, K-FAC statistics are taken on the whole rollout
    (``kfac_kwargs["statistics_fraction"]`` must be 1 or ``"auto"``) and the training pass runs over the whole
    rollout at once (``micro_batch_size`` must be None, ``"auto"`` or at least ``n_steps * n_envs``).
    Dict observations use an env-major :class:`DictRolloutBuffer`.
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        *,
        noise_target_kl: float | Callable[[float], float] = 0.01,
        noise_scale: float = 0.01,
        noise_resample: str = "rollout",
        prior_precision: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if noise_resample not in NOISE_RESAMPLE_CHOICES:
            raise ValueError(
                f"NoisyACKTR: noise_resample must be one of {NOISE_RESAMPLE_CHOICES}, got {noise_resample!r}"
            )
        numbers = [("noise_scale", noise_scale)]
        if not callable(noise_target_kl):
            numbers.append(("noise_target_kl", noise_target_kl))
        for name, value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"NoisyACKTR: {name} must be a number > 0, got {value!r}")
        if isinstance(prior_precision, bool) or not isinstance(prior_precision, (int, float)):
            raise TypeError(f"NoisyACKTR: prior_precision must be a number, got {prior_precision!r}")
        if not prior_precision >= 0:
            raise ValueError(f"NoisyACKTR: prior_precision must be >= 0, got {prior_precision!r}")
        if kwargs.get("use_sde"):
            raise ValueError(
                "NoisyACKTR explores with weight noise; use_sde=True adds gSDE action noise (use ACKTR)"
            )
        if kwargs.get("rollout_buffer_class") not in (None, *ENV_MAJOR_BUFFERS):
            raise ValueError(
                "NoisyACKTR needs its env-major rollout buffer (rows grouped by environment); leave "
                "rollout_buffer_class unset"
            )
        kwargs.pop("rollout_buffer_class", None)  # chosen by the observation space in _setup_model
        setup = kwargs.pop("_init_setup_model", True)
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        self.noise_target_kl = noise_target_kl if callable(noise_target_kl) else float(noise_target_kl)
        self.noise_scale = float(noise_scale)
        self.noise_resample = noise_resample
        self.prior_precision = float(prior_precision)
        self.kl_perturbation = float("nan")
        if self.env is not None:
            # refuse a chunk size that would split the env groups now, not at the first update
            self._micro_batch_rows(None, self.n_steps * self.env.num_envs)
        if setup:
            self._setup_model()

    def _setup_model(self) -> None:
        dict_observations = isinstance(self.observation_space, spaces.Dict)
        self.rollout_buffer_class = EnvMajorDictRolloutBuffer if dict_observations else EnvMajorRolloutBuffer
        super()._setup_model()
        # the layers the action distribution depends on: critic-only layers keep their mean weights
        critic_only = set(critic_only_parameter_names(self.policy))
        names = {id(param): name for name, param in self.policy.named_parameters()}
        self._noisy_layers = [
            block.name
            for block in self.kfac.blocks
            if not all(names[id(param)] in critic_only for param in block.parameters())
        ]
        self._perturbations: dict[str, th.Tensor] | None = None
        self._white_noise: dict[str, th.Tensor] | None = None

    def _excluded_save_params(self) -> list[str]:
        # the current samples are redrawn at the next rollout; the scale and the curvature are saved
        return [*super()._excluded_save_params(), "_perturbations", "_white_noise", "_noisy_layers"]

    def _update_factors_every(self, value: Any) -> Any:
        """``"auto"`` is 1: the noise's curvature and its KL target were measured with statistics on every
        update."""
        return 1 if value == "auto" else value

    def _statistics_fraction(self, value: Any) -> Any:
        """Statistics on the whole rollout ("auto" is 1): each row is evaluated at its env's sample."""
        if value == "auto":
            return 1.0
        if value != 1:
            raise ValueError(
                "NoisyACKTR evaluates every rollout row at its environment's weight sample: "
                f"kfac_kwargs['statistics_fraction'] must be 1 or 'auto', got {value!r}"
            )
        return value

    def _micro_batch_rows(self, observations: Any, rows: int) -> int:
        """The whole rollout in one training pass: the samples are hooked onto K groups of the full env-major
        batch, so a chunk of it would be split into the wrong groups."""
        setting = self.micro_batch_size
        if setting not in (None, "auto") and int(setting) < rows:
            raise ValueError(
                "NoisyACKTR evaluates each env's rows at that env's weight sample over the whole rollout: "
                f"micro_batch_size must be None, 'auto' or >= n_steps * n_envs = {rows}, got {setting!r}"
            )
        return rows

    # ----------------------------------------------------------------- sampling
    def sample_perturbations(self, n_envs: int) -> dict[str, th.Tensor]:
        """``n_envs`` independent draws ``ΔW ~ N(0, s² (F̂ + γI)⁻¹)`` for the actor layers (block name ->
        ``(n_envs, d_out, d_in')``)."""
        return self.kfac.sample_weight_perturbations(
            n_envs, scale=self.noise_scale, layers=self._noisy_layers
        )

    def _rollout_perturbations(self, n_envs: int) -> dict[str, th.Tensor]:
        """This rollout's ``ΔW_e``: the held white noise (redrawn per ``noise_resample``) mapped through the
        current posterior and scale."""
        noise = self._white_noise
        if self.noise_resample == "rollout" or noise is None or _rows_of(noise) != n_envs:
            noise = self.kfac.sample_weight_noise(n_envs, layers=self._noisy_layers)
        else:
            ended = th.as_tensor(self._episodes_ended(n_envs))
            if bool(ended.any()):
                fresh = self.kfac.sample_weight_noise(int(ended.sum()), layers=self._noisy_layers)
                for name, tensor in noise.items():
                    tensor[ended.to(tensor.device)] = fresh[name]
        self._white_noise = noise
        return self.kfac.weight_perturbations(noise, scale=self.noise_scale)

    def _episodes_ended(self, n_envs: int) -> np.ndarray:
        """``(n_envs,)`` bool: whether each env's episode ended during the last rollout (its buffer marks an
        episode start after the first step, or its last step ended one)."""
        starts = np.asarray(self.rollout_buffer.episode_starts)
        if starts.shape != (self.rollout_buffer.buffer_size, n_envs):  # not a full rollout's layout
            return np.ones(n_envs, dtype=bool)
        last = np.asarray(self._last_episode_starts, dtype=bool).reshape(n_envs)
        return starts[1:].astype(bool).any(axis=0) | last

    @contextlib.contextmanager
    def _acting_with_samples(self) -> Iterator[None]:
        """While collecting: ``policy(obs)`` (SB3's acting forward, one row per env) runs env ``e`` at
        ``M + ΔW_e``; predict, value bootstraps and callbacks' evaluations keep the mean weights."""
        policy, perturbations = self.policy, self._perturbations
        assert perturbations is not None
        mean_forward = policy.forward

        def acting_forward(obs: Any, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
            with self.kfac.perturbed_weights(perturbations):
                return mean_forward(obs, deterministic)

        policy.forward = acting_forward  # type: ignore[method-assign]
        try:
            yield
        finally:
            del policy.forward

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        # one sample per environment, fixed over the segment (its white noise held per noise_resample)
        self._perturbations = self._rollout_perturbations(env.num_envs)
        with self._acting_with_samples():
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    # ----------------------------------------------------------------- update
    @th.no_grad()
    def measure_perturbation_kl(self, observations: th.Tensor) -> float:
        """Mean ``KL(π_M ‖ π_{M+ΔW_e})`` over env-major rollout ``observations`` (row group e at sample e)."""
        assert self._perturbations is not None
        mean = snapshot(self.policy.get_distribution(observations))
        with self.kfac.perturbed_weights(self._perturbations):
            perturbed = self.policy.get_distribution(observations)
        return float(mean_kl(mean, perturbed))

    @contextlib.contextmanager
    def _prior_term(self) -> Iterator[None]:
        """Adds ``prior_precision · M`` to the gradients of the perturbed parameters during the update."""
        if self.prior_precision == 0.0:
            yield
            return
        by_name = {block.name: block for block in self.kfac.blocks}
        params = [param for name in self._noisy_layers for param in by_name[name].parameters()]
        precision = self.prior_precision
        handles = [
            param.register_hook(lambda grad, param=param: grad + precision * param.detach())
            for param in params
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def train(self) -> None:
        """ACKTR's update with every rollout row evaluated at its environment's sample (gradients applied to
        the mean weights), then the noise scale adapted to the KL the samples caused."""
        if self._perturbations is None:  # e.g. train() called without a rollout after load()
            super().train()
            return
        observations = next(iter(self.rollout_buffer.get())).observations
        self._micro_batch_rows(observations, self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs)
        self.kl_perturbation = self.measure_perturbation_kl(observations)
        self.logger.record("explore/noise_scale", self.noise_scale)
        self.logger.record("explore/kl_perturbation", self.kl_perturbation)
        self.logger.record("explore/target_kl", self.current_noise_target_kl())
        with self.kfac.perturbed_weights(self._perturbations), self._prior_term():
            super().train()
        self.noise_scale = adapt_noise_scale(
            self.noise_scale, self.kl_perturbation, self.current_noise_target_kl()
        )

    def current_noise_target_kl(self) -> float:
        """``noise_target_kl`` now: the number, or the schedule at the current progress (1 → 0)."""
        target = self.noise_target_kl
        return float(target(self._current_progress_remaining)) if callable(target) else float(target)
