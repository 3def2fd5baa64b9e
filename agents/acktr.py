"""ACKTR (Wu et al. 2017): A2C whose step is the K-FAC natural gradient inside a KL trust region.

A Stable-Baselines3 ``OnPolicyAlgorithm``: rollouts, buffers, callbacks, logging and save/load are inherited;
this module adds the constructor and ``train()``. See DESIGN §3 for the maths and defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule
from torch.nn import functional as F

from acktr.agents.fisher import (
    check_fisher_reduction,
    evaluate_with_distribution,
    mean_kl,
    release_training_graph,
    sampled_fisher_loss,
    snapshot,
)
from acktr.agents.optim import KFACOptimizer
from acktr.agents.rollouts import TensorRolloutMixin, explained_variance_of
from acktr.curvature.preconditioner import STEP_RULES, PreconditionInfo
from acktr.errors import RolloutSizeError

SelfACKTR = TypeVar("SelfACKTR", bound="ACKTR")

# ACKTR's published learning rate (step_rule "natural"): 0.25, decayed linearly to 0 over training. The
# constructor's defaults are A2C's (a drop-in); the zoo holds the published settings.
PUBLISHED_LEARNING_RATE = LinearSchedule(start=0.25, end=0.0, end_fraction=1.0)

# KL-adaptive learning rate (baselines' acktr_cont): η is divided by 1.5 when the measured KL of a step
# exceeds twice the target and multiplied by 1.5 when it is below half of it, within these bounds.
KL_ADAPT_FACTOR = 1.5
LR_MULTIPLIER_BOUNDS = (1e-3, 1e3)
# The measured-KL guard: at most this many shrinks of one step, each aiming at this fraction of kl_clip.
KL_GUARD_TRIES = 4
KL_GUARD_AIM = 0.9
AUTO_KL_GUARD = 2.0  # kl_guard="auto" for continuous actions
AUTO_MICRO_BATCH = 160  # micro_batch_size="auto": at most this many rows per chunk for image observations
# ... and fewer for large images: a chunk's observations as float32 stay within this many bytes
AUTO_MICRO_BATCH_BYTES = 9 * 2**20  # 83 Atari rows (4 × 84 × 84), so 16 × 5 stays one chunk
TRUST_REGIONS = ("joint", "split")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"ACKTR: {name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"ACKTR: {name} must be finite, got {value!r}")
    return float(value)


def _positive_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if _number(name, value) <= 0:
        raise ValueError(f"ACKTR: {name} must be a positive number or None, got {value!r}")
    return float(value)


def _kl_guard_value(name: str, value: Any) -> float | str | None:
    if value is None or value == "auto":
        return value
    if _number(name, value) < 1:
        raise ValueError(f"ACKTR: {name} must be 'auto', a number >= 1 or None, got {value!r}")
    return float(value)


def _micro_batch_value(name: str, value: Any) -> int | str | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ACKTR: {name} must be a positive int, 'auto' or None, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if _number(name, value) <= 0:
        raise ValueError(f"ACKTR: {name} must be > 0, got {value!r}")
    return float(value)


def _non_negative(name: str, value: Any) -> float:
    if _number(name, value) < 0:
        raise ValueError(f"ACKTR: {name} must be >= 0, got {value!r}")
    return float(value)


def _unit_interval(name: str, value: Any) -> float:
    if not 0.0 <= _number(name, value) < 1.0:
        raise ValueError(f"ACKTR: {name} must be in [0, 1), got {value!r}")
    return float(value)


def _count(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"ACKTR: {name} must be an int >= {minimum}, got {value!r}")
        return value

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"ACKTR: {name} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


class CurvatureSetting:
    """An ACKTR hyperparameter that the K-FAC optimizer also uses: one name, validated, live.

    The value is stored in the instance ``__dict__`` under its own name (so SB3's ``save``/``load`` keep it
    as they keep every attribute); assigning it on a built model validates it and hands it to the optimizer
    and preconditioner at once, so it takes effect from the next update, or raises when it cannot change.
    """

    def __init__(self, validate: Callable[[str, Any], Any]) -> None:
        self.validate = validate
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        try:
            return instance.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, instance: Any, value: Any) -> None:
        value = self.validate(self.name, value)
        instance._apply_curvature_setting(self.name, value)  # raises if a built model cannot take it
        instance.__dict__[self.name] = value


def critic_only_parameter_names(policy: ActorCriticPolicy) -> list[str]:
    """Names of the trainable parameters that only the value head depends on.

    Decided by the autograd graph of one forward pass on a sampled observation: a parameter is critic-only
    when ``V(s)`` depends on it and the action distribution (``log π(a|s)`` at the mode) does not.
    This covers custom ``mlp_extractor``s and feature extractors without relying on attribute names; a shared
    trunk is always left to the actor. The policy's training mode is restored (eval mode during the pass, so
    batch-norm statistics are not touched).
    """
    params = dict((name, p) for name, p in policy.named_parameters() if p.requires_grad)
    names = list(params)
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        with th.enable_grad():
            # a copy of the space and the distribution's mode: no random generator is advanced
            observation, _ = policy.obs_to_tensor(copy.deepcopy(policy.observation_space).sample())
            distribution = policy.get_distribution(observation)
            log_prob = distribution.log_prob(distribution.mode().detach()).sum()
            actor_grads = th.autograd.grad(log_prob, list(params.values()), allow_unused=True)
            values = policy.predict_values(observation).sum()
            critic_grads = th.autograd.grad(values, list(params.values()), allow_unused=True)
    finally:
        policy.set_training_mode(was_training)
    return [
        name
        for name, actor_grad, critic_grad in zip(names, actor_grads, critic_grads, strict=True)
        if actor_grad is None and critic_grad is not None
    ]


# ACKTR keywords that are K-FAC settings (kept out of kfac_kwargs so each has exactly one name).
CURVATURE_SETTINGS: tuple[str, ...] = (
    "kl_clip",
    "vf_kl_clip",
    "damping",
    "factor_decay",
    "momentum",
    "cold_iter",
    "vf_fisher_coef",
    "update_inverses_every",
    "target_kl",
    "step_rule",
    "kl_guard",
    "trust_region",
)
# ACKTR's K-FAC configuration unless kfac_kwargs says otherwise (measured: zoo/benchmarks/update.md). For
# layers no wider than rank + 16 "lowrank" is exact K-FAC; row_fraction only concerns convolutions;
# statistics_fraction "auto" is AUTO_STATISTICS_FRACTION for policies with convolutions (where the statistics
# dominate the update's cost; no loss of sample efficiency measured on MinAtar) and otherwise all of the
# rollout up to AUTO_STATISTICS_ROWS rows (a quarter of LunarLander's 1,024-row rollout, 256 rows, cost
# sample efficiency in 4 of 5 seeds, so every zoo rollout keeps all its rows; beyond that an MLP's narrow
# factors gain little per extra row, while the statistics pass keeps costing per row). Factors 2048 or more
# wide (the Nature CNN's 3137-wide A) are sketches, not dense matrices: 16×5 update 2.10× → 1.69× A2C's,
# its added memory 1.72× → 1.25×, no loss of sample efficiency measured on MinAtar with the threshold
# lowered to sketch its 1025-wide factor. update_factors_every "auto" is AUTO_FACTORS_EVERY for MLP policies
# with Discrete actions and rollouts of at most AUTO_FACTORS_EVERY_ROWS rows (the statistics pass, the refresh
# and the KL measurement on every 4th update: MLP update 2.45× → 1.90× A2C's at 8×5; steps to threshold
# CartPole 80.9k → 72.5k, Acrobot 20.1k → 25.7k, within noise) and 1 otherwise: on LunarLander's 1,024-row
# rollouts it lost (4/5 seeds at a median 560k → 3/5 at 908k), Box actions rely on the KL guard, which
# measures on statistics updates only, and convolutional policies already take their statistics on a subset.
DEFAULT_KFAC_OPTIONS: dict[str, Any] = {
    "curvature": "lowrank",
    "statistics_fraction": "auto",
    "update_factors_every": "auto",
    "row_fraction": 0.25,
    "sketch_min_dim": 2048,
    "uncovered_curvature": "diagonal",  # a Gaussian's log_std: its own Fisher, not the identity
}
AUTO_STATISTICS_FRACTION = 0.125
AUTO_STATISTICS_ROWS = 1024
AUTO_FACTORS_EVERY = 4
AUTO_FACTORS_EVERY_ROWS = 512
# What models saved before those defaults used.
EXACT_KFAC_OPTIONS: dict[str, Any] = {
    "curvature": "eigen",
    "statistics_fraction": 1.0,
    "row_fraction": 1.0,
    "update_factors_every": 1,
    "uncovered_curvature": "identity",
}
# kfac_kwargs options that may change on a built model (they take effect at the next update).
LIVE_KFAC_OPTIONS: tuple[str, ...] = (
    "curvature",
    "inverse_method",
    "update_factors_every",
    "statistics_fraction",
    "row_fraction",
    "stagger_refresh",
    "uncovered_curvature",
)
_MISSING = object()


class _PhaseClock:
    """Accumulates the wall time since the previous ``lap`` under a phase name (milliseconds)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + 1e3 * (now - self.last)
        self.last = now


def _rows(observations: Any, index: th.Tensor | slice) -> Any:
    """The rows ``index`` (an index tensor, or a slice: views) of a batch of observations (a tensor or a
    dict of tensors)."""
    if isinstance(index, slice):
        if isinstance(observations, dict):
            return {key: value[index] for key, value in observations.items()}
        return observations[index]
    if isinstance(observations, dict):
        return {key: value.index_select(0, index) for key, value in observations.items()}
    return observations.index_select(0, index)


class ACKTR(TensorRolloutMixin, OnPolicyAlgorithm):
    """Actor Critic using Kronecker-Factored Trust Region — a drop-in replacement for SB3's ``A2C``.

    Each update: one forward pass over the rollout; the sampled Fisher loss (actions resampled from the
    current policy, critic as a Gaussian with sampled target) is back-propagated inside
    ``kfac.collect_statistics()``; then the A2C loss is back-propagated, ``kfac.precondition(lr=η)`` turns the
    gradient of actor *and* critic into ``ν·F̂⁻¹g`` with the trust-region scale ``ν`` of ``step_rule``, and SGD
    with momentum m and step η(1−m) applies it. Parameters without a K-FAC block (e.g. ``log_std``) keep their
    plain gradient, scaled by the same ν.

    **What ``learning_rate`` means** (``step_rule``). With ``step_rule="whitened"`` (the default) η is the
    per-parameter step in Fisher-whitened coordinates, as RMSprop's η is per parameter, so A2C's learning
    rates carry over: the predicted KL of a step is ``min(η² P, kl_clip · (η/η₀)²)`` (P parameters in the
    trust region, η₀ the schedule's initial value), i.e. at A2C's 7e-4 every step is a full trust-region step
    of ``kl_clip``, and a decaying schedule shrinks the trust region. With ``step_rule="natural"`` (the
    paper's) η multiplies ``F̂⁻¹g`` itself: the predicted KL is ``min(η² gᵀF̂⁻¹g, kl_clip)``, so the published
    η = 0.25 is of the order of the trust region and A2C-scale values take steps ~10⁴× smaller in KL (the
    zoo entries use ``step_rule: natural`` with the published learning rates).

    Cold start (OpenAI baselines): the first ``cold_iter`` updates are plain-gradient SGD-with-momentum steps
    of size η on the gradient clipped to ``max_grad_norm``, while the curvature statistics accumulate.
    **``max_grad_norm`` applies only during the cold start**; afterwards the trust region bounds the step.

    Accepts every keyword of SB3's ``A2C`` with A2C's meaning, except:

    - ``use_rms_prop`` / ``rms_prop_eps``: ignored (the step is K-FAC + momentum SGD); ``use_rms_prop=True``
      warns. ``policy_kwargs["optimizer_class"/"optimizer_kwargs"]`` are likewise replaced.
    - ``learning_rate``: see above (default A2C's 7e-4, constant; any SB3 schedule works).
    - ``max_grad_norm``: see the cold start above.

    The defaults of the A2C keywords are A2C's (n_steps 5, ent_coef 0, learning rate 7e-4), so swapping A2C
    for ACKTR with A2C's arguments is a like-for-like comparison; ACKTR's own defaults are momentum 0 and the
    ``"whitened"`` step rule (measured on SB3's identity tasks: the paper's momentum 0.9 averages noisy
    directions to ~1/4 of the trust-region step, and A2C-scale η with the natural rule barely moves the
    policy). The published ACKTR settings (n_steps 20, ent_coef 0.01, lr 0.25 decayed, momentum 0.9,
    ``step_rule="natural"``) are the zoo's ``atari`` and ``default`` blocks (``acktr zoo``).

    :param step_rule: ``"whitened"`` or ``"natural"`` (see above).
    :param kl_clip: δ, the trust-region bound on the predicted KL of a step (None disables it).
    :param vf_kl_clip: None (default, the paper's ACKTR): one trust region over actor and critic, so
        ``Σ⟨Δ, g⟩`` sums over all parameters. A float gives the critic its own trust region, as the original
        continuous-control ACKTR did (value function kl_clip 0.3): the critic-only parameters (those that only
        the value head uses — ``value_net``, the critic MLP, ``vf_features_extractor`` when
        ``share_features_extractor=False``; found by autograd, so never a parameter the actor's distribution
        depends on) are scaled by ``ν_vf = min(1, sqrt(vf_kl_clip / (η² Σ_vf⟨Δ, g⟩)))``, everything else
        (actor, shared trunk, ``log_std``) by ``ν = min(1, sqrt(kl_clip / (η² Σ_rest⟨Δ, g⟩)))``. With large
        returns the value loss otherwise dominates ``Σ⟨Δ, g⟩`` and shrinks the policy step. Logged as
        ``train/vf_step_scale`` (``train/step_scale`` is then the actor's ν).
    :param damping: λ, Tikhonov damping of the Kronecker factors.
    :param factor_decay: ε of the running averages of the factors (``F ← ε F + (1−ε) F_new``; SB2 and
        baselines called it ``stats_decay``).
    :param momentum: m of the SGD step.
    :param cold_iter: number of initial plain-SGD updates; also the number of statistics updates averaged
        plainly before the running average starts.
    :param vf_fisher_coef: weight of the critic term in the sampled Fisher loss.
    :param update_inverses_every: refresh the eigendecompositions every this many updates.
    :param kfac_kwargs: further ``acktr.curvature.KFAC`` arguments, over ACKTR's defaults
        :data:`DEFAULT_KFAC_OPTIONS` (``curvature="lowrank"``, ``statistics_fraction="auto"`` — 1/8 of the
        rollout for policies with convolutions, otherwise all of it up to 1,024 rows —,
        ``row_fraction=0.25``, ``sketch_min_dim=2048``: factors that wide kept as low-rank sketches,
        not dense matrices; ``update_factors_every="auto"`` — the statistics pass, the decomposition refresh
        and the KL measurement on every 4th update for MLP policies with ``Discrete`` actions and rollouts
        of at most 512 rows (without ``target_kl`` or a KL guard), on every update otherwise; all chosen by
        measurement against exact K-FAC, see zoo/benchmarks/update.md; ``uncovered_curvature="diagonal"``:
        parameters outside the layers, such as a Gaussian's ``log_std``, are preconditioned by their own
        running diagonal Fisher — 2 per dimension for SB3's state-independent ``log_std`` — instead of the
        identity). Exact K-FAC on every row, as the paper: ``kfac_kwargs=dict(curvature="eigen",
        statistics_fraction=1.0, row_fraction=1.0, update_factors_every=1, uncovered_curvature="identity")``.
        Others: ``rank``, ``factor_dtype``, ``max_factor_dim``, ``stagger_refresh``, ...
    :param target_kl: None (default): η follows ``learning_rate`` alone. A float turns on the original
        continuous-control ACKTR's KL-adaptive step size: after every update the KL actually taken
        (``train/kl``) is compared with ``target_kl``; above ``2·target_kl`` a multiplier of η is divided by
        1.5, below ``target_kl/2`` it is multiplied by 1.5 (kept within [1e-3, 1e3]). The step uses
        ``η = schedule(progress) · multiplier`` (logged as ``train/learning_rate`` and
        ``train/lr_multiplier``; the multiplier is saved with the model). With ``vf_kl_clip`` the critic keeps
        the scheduled η (acktr_cont adapted the policy's step only). Unlike PPO's ``target_kl`` it never stops
        an update early; ``kl_clip`` still bounds every step's predicted KL.
    :param kl_guard: the trust region, measured: after each step (the cold start's plain-gradient steps
        included) the KL actually taken is measured on the statistics rows (``train/kl``); above
        ``kl_guard · kl_clip`` the step of the actor and shared parameters (not of a separate critic) is
        shrunk toward ``0.9 · kl_clip`` (KL taken as quadratic in the step; at most 4 shrinks) together with
        its momentum. The predicted KL ``⟨Δ, g⟩`` misses what the
        Fisher cannot see — gSDE's noise scale moved by the trunk (SB3 detaches that path), momentum from
        earlier directions, curvature beyond second order. Logged as ``train/kl_guard_scale`` (1 when the
        step was kept) and ``train/kl_before_guard``. None turns it off; it acts only on updates that collect
        statistics (every one unless ``update_factors_every`` > 1) and when ``kl_clip`` is set. ``"auto"``
        (default): 2 for continuous (Box) actions, None for discrete ones — measured on SB3's identity tasks
        with A2C's arguments (5 seeds): the guard lifts Box from 89 to 96 and costs MultiDiscrete 100 → 89
        (the discrete heads' predicted KL is good enough, and their small tasks gain from the full steps).
    :param trust_region: ``"joint"`` (default, the paper): one trust region ``ν`` over the whole step of the
        A2C loss (per parameter group with ``vf_kl_clip``). ``"split"``: the policy part of the loss (policy
        gradient and entropy) and the value part get separate trust regions over the same curvature —
        ``Δ = ν_π F⁻¹g_π + ν_v F⁻¹g_v`` with ``ν_π`` from ``kl_clip`` and ``ν_v`` from ``vf_kl_clip`` (or
        ``kl_clip`` when None) — which is what ``vf_kl_clip`` does for separate networks, extended to a shared
        trunk. Measured on Pong at 2M frames (shared Nature CNN): the value part was 99.8% of the joint
        ``η²⟨Δ, g⟩``, so the joint ``ν`` ≈ 0.1 shrank the policy's step ~10× and the policy's KL per update
        was 3e-5 against ``kl_clip`` 1e-3. Costs a second backward of the value part and a second
        preconditioning. Logged: ``train/step_scale`` (ν_π) and ``train/vf_step_scale`` (ν_v).
    :param micro_batch_size: rows per chunk of the training forward/backward. The gradient is accumulated
        over chunks (the same gradient up to float rounding), so the activations held for the backward are
        one chunk's instead of the whole rollout's: at Atari's 32 × 20 the whole-batch pass held ~0.2 GB more
        (peak RSS of a Breakout update 1,073 → 859 MB). None: the whole batch at once. ``"auto"``
        (default): for image observations (any observation tensor with ≥ 3 dimensions per row)
        :data:`AUTO_MICRO_BATCH` rows, or fewer so that a chunk's observations as float32 stay within
        :data:`AUTO_MICRO_BATCH_BYTES`, in equal chunks (Atari's 4 × 84 × 84 frames: at most 83 rows, so
        32 × 20 runs as 8 chunks of 80 and 16 × 5 as one; peak RSS of a Breakout run −60 MB against
        160-row chunks, the same speed within noise); the whole batch otherwise. It applies when the
        statistics come from a subset of the rollout or are skipped (``statistics_fraction`` < 1 — the
        default for convolutional policies — or ``update_factors_every`` > 1); with statistics on every row
        the training loss shares the statistics' single forward.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    policy: ActorCriticPolicy

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = False,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        *,
        kl_clip: float | None = 1e-3,
        vf_kl_clip: float | None = None,
        damping: float = 1e-2,
        factor_decay: float = 0.99,
        momentum: float = 0.0,
        cold_iter: int = 10,
        vf_fisher_coef: float = 1.0,
        update_inverses_every: int = 10,
        kfac_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        step_rule: str = "whitened",
        kl_guard: float | str | None = "auto",
        micro_batch_size: int | str | None = "auto",
        trust_region: str = "joint",
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if use_rms_prop:
            warnings.warn(
                "ACKTR ignores use_rms_prop=True: its step is K-FAC + SGD with momentum",
                UserWarning,
                stacklevel=2,
            )
        if "optimizer_class" in self.policy_kwargs:
            warnings.warn(
                "ACKTR replaces policy_kwargs['optimizer_class'] with its K-FAC optimizer",
                UserWarning,
                stacklevel=2,
            )
        self.normalize_advantage = normalize_advantage
        if normalize_advantage and self.env is not None and self.env.num_envs * self.n_steps <= 1:
            # the standard deviation of one advantage is NaN, which would end in a non-finite step
            raise RolloutSizeError(
                f"{type(self).__name__}: n_steps * n_envs must be > 1 to normalise advantages "
                f"(n_steps={self.n_steps}, n_envs={self.env.num_envs}); raise n_steps or pass "
                "normalize_advantage=False"
            )
        self.rms_prop_eps = rms_prop_eps
        self.use_rms_prop = use_rms_prop
        self.target_kl = target_kl
        self.step_rule = step_rule
        self.kl_guard = kl_guard
        self.trust_region = trust_region
        self.micro_batch_size = micro_batch_size
        self.lr_multiplier = 1.0
        self.kl_clip = kl_clip
        self.vf_kl_clip = vf_kl_clip
        self.damping = damping
        self.factor_decay = factor_decay
        self.momentum = momentum
        self.cold_iter = cold_iter
        self.vf_fisher_coef = vf_fisher_coef
        self.update_inverses_every = update_inverses_every
        self.kfac_kwargs = dict(kfac_kwargs or {})
        check_fisher_reduction(self.kfac_kwargs)
        overlap = sorted(set(self.kfac_kwargs) & set(CURVATURE_SETTINGS))
        if overlap:
            raise ValueError(
                f"ACKTR: pass {', '.join(overlap)} as ACKTR keyword(s), not inside kfac_kwargs "
                f"(e.g. ACKTR(..., {overlap[0]}=...))"
            )

        if _init_setup_model:
            self._setup_model()

    # The K-FAC hyperparameters: one name each from here to the curvature module, live on a built model.
    kl_clip = CurvatureSetting(_positive_or_none)
    vf_kl_clip = CurvatureSetting(_positive_or_none)
    damping = CurvatureSetting(_positive)
    factor_decay = CurvatureSetting(_unit_interval)
    momentum = CurvatureSetting(_unit_interval)
    cold_iter = CurvatureSetting(_count(0))
    vf_fisher_coef = CurvatureSetting(_non_negative)
    update_inverses_every = CurvatureSetting(_count(1))
    target_kl = CurvatureSetting(_positive_or_none)
    step_rule = CurvatureSetting(_one_of(STEP_RULES))
    kl_guard = CurvatureSetting(_kl_guard_value)
    trust_region = CurvatureSetting(_one_of(TRUST_REGIONS))
    micro_batch_size = CurvatureSetting(_micro_batch_value)  # read by train(); validated the same way

    def _apply_curvature_setting(self, name: str, value: Any) -> None:
        """Hand a changed hyperparameter to the built optimizer/preconditioner (no-op before set-up)."""
        policy = self.__dict__.get("policy")
        optimizer = getattr(policy, "optimizer", None)
        if not isinstance(optimizer, KFACOptimizer):
            return  # not built yet: _setup_model reads the attributes
        if name in ("kl_clip", "damping", "factor_decay", "update_inverses_every", "step_rule"):
            setattr(optimizer.kfac, name, value)
        elif name in ("momentum", "cold_iter"):
            setattr(optimizer, name, value)
        elif name == "vf_kl_clip" and getattr(self, "trust_region", "joint") != "split":
            has_group = bool(optimizer.named_trust_region_groups)
            if has_group != (value is not None):
                raise ValueError(
                    "ACKTR: vf_kl_clip cannot switch between None and a number on a built model (it decides "
                    "which parameters form the critic's trust region); pass it to the constructor instead"
                )
            if value is not None:
                optimizer.kfac.group_kl_clips = [value]
        # vf_fisher_coef, target_kl, kl_guard, trust_region and micro_batch_size are read by train() at every
        # update (a switch to "split" keeps the critic groups a joint vf_kl_clip formed at set-up)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "kfac_kwargs" and isinstance(self.__dict__.get("policy"), ActorCriticPolicy):
            self._apply_kfac_kwargs(value)
        super().__setattr__(name, value)
        if name == "learning_rate" and "lr_schedule" in self.__dict__:
            self._setup_lr_schedule()  # a new learning rate takes effect at the next update
            if isinstance(getattr(self.policy, "optimizer", None), KFACOptimizer):
                self.kfac.reference_lr = float(self.lr_schedule(1.0))

    def _apply_kfac_kwargs(self, kfac_kwargs: Any) -> None:
        """``model.kfac_kwargs = {...}`` on a built model: apply what can change, refuse the rest."""
        if not isinstance(kfac_kwargs, dict):
            raise TypeError(f"ACKTR: kfac_kwargs must be a dict, got {type(kfac_kwargs).__name__}")
        current = {**DEFAULT_KFAC_OPTIONS, **self.__dict__.get("kfac_kwargs", {})}
        kfac = self.kfac
        for key, value in kfac_kwargs.items():
            if key in LIVE_KFAC_OPTIONS:
                setattr(kfac, key, self._resolve_auto(key, value))
            elif current.get(key, _MISSING) != value:
                raise ValueError(
                    f"ACKTR: kfac_kwargs[{key!r}] cannot change on a built model (only "
                    f"{', '.join(LIVE_KFAC_OPTIONS)} can); build a new model with it"
                )

    def _setup_model(self) -> None:
        # Models saved before the rename stored the factor decay as "stats_decay"; they also predate
        # step_rule and took the paper's natural-gradient steps.
        if "stats_decay" in self.__dict__:
            self.__dict__["factor_decay"] = self.__dict__.pop("stats_decay")
            self.__dict__["step_rule"] = "natural"
            self.__dict__["kfac_kwargs"] = {**EXACT_KFAC_OPTIONS, **self.__dict__.get("kfac_kwargs", {})}
        super()._setup_model()
        # Older saved models predate vf_kl_clip; load() restores attributes before calling _setup_model.
        vf_kl_clip = getattr(self, "vf_kl_clip", None)
        groups: list[tuple[list[str], float | None]] = []
        if vf_kl_clip is not None and getattr(self, "trust_region", "joint") == "joint":
            critic_names = critic_only_parameter_names(self.policy)
            if not critic_names:
                raise ValueError(
                    "vf_kl_clip is set but the policy has no critic-only parameters; use vf_kl_clip=None"
                )
            groups.append((critic_names, vf_kl_clip))
        # The policy's own optimizer (Adam/RMSprop by SB3's defaults) is replaced; its state is never used.
        self.policy.optimizer = KFACOptimizer(
            self.policy,
            lr=self.lr_schedule(1.0),
            momentum=self.momentum,
            cold_iter=self.cold_iter,
            step_rule=self.step_rule,
            kl_clip=self.kl_clip,
            damping=self.damping,
            factor_decay=self.factor_decay,
            update_inverses_every=self.update_inverses_every,
            named_trust_region_groups=groups,
            # step_rule="whitened" measures η against the schedule's initial value
            **self._kfac_options(),
        )
        _ = self.kfac  # create the preconditioner now, on the policy's device

    def _kfac_options(self) -> dict[str, Any]:
        """The ``KFAC`` keywords: ACKTR's defaults, then ``kfac_kwargs``, with ``"auto"`` resolved."""
        options: dict[str, Any] = {"reference_lr": float(self.lr_schedule(1.0)), **DEFAULT_KFAC_OPTIONS}
        options.update(self.kfac_kwargs)
        for key in ("statistics_fraction", "update_factors_every"):
            options[key] = self._resolve_auto(key, options[key])
        return options

    def _resolve_auto(self, key: str, value: Any) -> Any:
        """A ``kfac_kwargs`` value with ``"auto"`` replaced by what it means for this model."""
        if key == "statistics_fraction":
            return self._statistics_fraction(value)
        if key == "update_factors_every":
            return self._update_factors_every(value)
        return value

    def _convolutional(self) -> bool:
        return any(isinstance(module, th.nn.Conv2d) for module in self.policy.modules())

    def _statistics_fraction(self, value: Any) -> Any:
        """``"auto"``: :data:`AUTO_STATISTICS_FRACTION` for a policy with convolutions, else the fraction of
        the rollout that is :data:`AUTO_STATISTICS_ROWS` rows (1 for rollouts no larger)."""
        if value != "auto":
            return value
        if self._convolutional():
            return AUTO_STATISTICS_FRACTION
        return min(1.0, AUTO_STATISTICS_ROWS / (self.n_envs * self.n_steps))

    def _update_factors_every(self, value: Any) -> Any:
        """``"auto"``: :data:`AUTO_FACTORS_EVERY` for a policy without convolutions acting in a ``Discrete``
        space on rollouts of at most :data:`AUTO_FACTORS_EVERY_ROWS` rows, else 1 (see
        :data:`DEFAULT_KFAC_OPTIONS`); also 1 while something reads the measured KL on every update
        (``target_kl``, or a ``kl_guard`` in force), since it is measured on statistics updates only.
        Re-resolved at every update, so a live change of those settings takes effect."""
        if value != "auto":
            return value
        small_discrete_mlp = (
            isinstance(self.action_space, spaces.Discrete)
            and self.n_envs * self.n_steps <= AUTO_FACTORS_EVERY_ROWS
            and not self._convolutional()
        )
        measured_kl_used = getattr(self, "target_kl", None) is not None or self._kl_guard_limit() is not None
        return AUTO_FACTORS_EVERY if small_discrete_mlp and not measured_kl_used else 1

    @property
    def kfac(self) -> Any:
        """The ``acktr.curvature.KFAC`` preconditioner of the policy (its state is saved with the model)."""
        optimizer: KFACOptimizer = self.policy.optimizer  # type: ignore[assignment]
        return optimizer.kfac

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        """SB3's schedule step, times the KL-adaptive multiplier (1 unless ``target_kl`` is set).

        With ``vf_kl_clip`` the critic-only parameters are the optimizer's ``param_groups[1]``; as in
        acktr_cont, whose value function had its own optimizer, the multiplier then adapts the actor's η only.
        """
        scheduled = self.lr_schedule(self._current_progress_remaining)
        actor_lr = scheduled * getattr(self, "lr_multiplier", 1.0)
        self.logger.record("train/learning_rate", actor_lr)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for index, group in enumerate(optimizer.param_groups):
                group["lr"] = actor_lr if index == 0 else scheduled

    def _adapt_learning_rate(self, kl: float) -> None:
        """acktr_cont's rule: move η by a factor 1.5 when the measured KL leaves [target/2, 2·target]."""
        target_kl = self.target_kl
        assert target_kl is not None, "called only when target_kl is set"
        if kl != kl:  # a NaN KL says nothing about η
            return
        if kl > 2.0 * target_kl:
            self.lr_multiplier /= KL_ADAPT_FACTOR
        elif kl < 0.5 * target_kl:
            self.lr_multiplier *= KL_ADAPT_FACTOR
        low, high = LR_MULTIPLIER_BOUNDS
        self.lr_multiplier = min(max(self.lr_multiplier, low), high)

    def _kl_guard_limit(self) -> float | None:
        """The measured KL above which a step is shrunk (``kl_guard · kl_clip``), or None when off."""
        kl_guard, kl_clip = getattr(self, "kl_guard", None), self.kl_clip
        if kl_guard == "auto":
            kl_guard = AUTO_KL_GUARD if isinstance(self.action_space, spaces.Box) else None
        return None if kl_guard is None or kl_clip is None else float(kl_guard) * kl_clip

    def _enforce_kl_guard(
        self,
        optimizer: KFACOptimizer,
        snapshot: list[th.Tensor],
        old_distribution: Any,
        observations: Any,
        kl: float,
        limit: float,
    ) -> tuple[float, float]:
        """Shrink the step just taken until its measured KL is within ``limit`` (:meth:`_kl_guard_limit`);
        returns (final KL, total scale)."""
        kl_clip = self.kl_clip
        assert kl_clip is not None
        total_scale = 1.0
        for _ in range(KL_GUARD_TRIES):
            if not kl > limit:  # also stops on a NaN KL (the non-finite checks deal with those)
                break
            scale = KL_GUARD_AIM * math.sqrt(kl_clip / kl)
            optimizer.rescale_step(snapshot, scale)
            total_scale *= scale
            with th.no_grad():
                kl = mean_kl(old_distribution, self.policy.get_distribution(observations)).item()
        return kl, total_scale

    def _a2c_loss(
        self,
        values: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor | None,
        advantages: th.Tensor,
        returns: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """A2C's loss on a batch: (total, policy, value, entropy terms); values (B, 1) or (B,), rest (B,)."""
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(returns, values.flatten())
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return loss, policy_loss, value_loss, entropy_loss

    def _backward(
        self,
        policy_loss: th.Tensor,
        value_loss: th.Tensor,
        entropy_loss: th.Tensor,
        value_grads: list[th.Tensor | None] | None,
        scale: float = 1.0,
    ) -> None:
        """Backpropagate ``scale`` × A2C's loss into ``.grad``; with ``value_grads`` (the split trust region,
        one entry per trainable parameter) the value part's gradient is accumulated there instead."""
        policy_part = policy_loss + self.ent_coef * entropy_loss
        value_part = self.vf_coef * value_loss
        if value_grads is None:
            (scale * (policy_part + value_part)).backward()
            return
        parameters = self._trainable_parameters()
        grads = th.autograd.grad(scale * value_part, parameters, retain_graph=True, allow_unused=True)
        for index, grad in enumerate(grads):
            if grad is not None:
                previous = value_grads[index]
                value_grads[index] = grad if previous is None else previous + grad
        (scale * policy_part).backward()

    def _trainable_parameters(self) -> list[th.nn.Parameter]:
        return [param for param in self.policy.parameters() if param.requires_grad]

    def _split_step(self, optimizer: KFACOptimizer, value_grads: list[th.Tensor | None]) -> PreconditionInfo:
        """Precondition the policy part (in ``.grad``) and the value part (``value_grads``) each with its own
        trust region, and leave their sum in ``.grad`` (see ``trust_region``)."""
        kfac = optimizer.kfac
        lr, group_lrs = optimizer.param_groups[0]["lr"], optimizer.group_lrs()
        parameters = self._trainable_parameters()
        policy_info = kfac.precondition(lr=lr, group_lrs=group_lrs)
        policy_directions = [param.grad for param in parameters]
        for param, grad in zip(parameters, value_grads, strict=True):
            param.grad = grad
        value_kl_clip = self.kl_clip if self.vf_kl_clip is None else self.vf_kl_clip
        value_info = kfac.precondition(lr=lr, group_lrs=group_lrs, kl_clip=value_kl_clip, advance=False)
        for param, direction in zip(parameters, policy_directions, strict=True):
            if direction is not None:
                param.grad = direction if param.grad is None else param.grad.add_(direction)
        self._vf_step_scale = float(value_info.step_scale)
        return dataclasses.replace(
            policy_info,
            predicted_kl=policy_info.predicted_kl + value_info.predicted_kl,
            natural_grad_dot=policy_info.natural_grad_dot + value_info.natural_grad_dot,
            inverses_updated=policy_info.inverses_updated or value_info.inverses_updated,
            inverse_ms=policy_info.inverse_ms + value_info.inverse_ms,
            precondition_ms=policy_info.precondition_ms + value_info.precondition_ms,
        )

    def _a2c_backward(
        self,
        optimizer: th.optim.Optimizer,
        observations: Any,
        actions: th.Tensor,
        advantages: th.Tensor,
        returns: th.Tensor,
        clock: _PhaseClock,
        value_grads: list[th.Tensor | None] | None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """The gradient of A2C's loss over the whole batch, left in ``.grad``, accumulated over row chunks of
        ``micro_batch_size`` rows (every term is a mean: a chunk's loss is weighted by its share of the rows),
        so the activations held for the backward are one chunk's. Returns the batch's (policy, value, entropy)
        terms, detached."""
        rows = len(actions)
        chunk = self._micro_batch_rows(observations, rows)
        optimizer.zero_grad()
        # None: the whole batch as it is (no slicing, no chunk bookkeeping: ops that small MLP updates notice)
        parts: list[slice | None] = (
            [None] if chunk >= rows else [slice(start, start + chunk) for start in range(0, rows, chunk)]
        )
        chunk_terms: list[tuple[float, th.Tensor, th.Tensor, th.Tensor]] = []
        for part in parts:
            if part is None:
                batch = (observations, actions, advantages, returns)
            else:  # views, no copies
                batch = (_rows(observations, part), actions[part], advantages[part], returns[part])
            values, log_prob, entropy, _ = evaluate_with_distribution(self.policy, batch[0], batch[1])
            share = len(log_prob) / rows
            _, policy_loss, value_loss, entropy_loss = self._a2c_loss(
                values, log_prob, entropy, batch[2], batch[3]
            )
            chunk_terms.append((share, policy_loss.detach(), value_loss.detach(), entropy_loss.detach()))
            clock.lap("forward")
            self._backward(policy_loss, value_loss, entropy_loss, value_grads, scale=share)
            clock.lap("backward")
        if len(chunk_terms) == 1:
            return chunk_terms[0][1:]
        totals = th.stack([th.stack(terms) * share for share, *terms in chunk_terms]).sum(dim=0)
        return totals[0], totals[1], totals[2]

    def _micro_batch_rows(self, observations: Any, rows: int) -> int:
        """Rows per chunk of the training backward: ``micro_batch_size``, "auto" resolved (see its docs)."""
        setting = getattr(self, "micro_batch_size", None)
        if setting == "auto":
            tensors = observations.values() if isinstance(observations, dict) else [observations]
            if any(tensor.dim() >= 4 for tensor in tensors):
                row_bytes = 4 * sum(tensor[0].numel() for tensor in tensors)  # float32 per row, every key
                most = max(1, min(AUTO_MICRO_BATCH, AUTO_MICRO_BATCH_BYTES // row_bytes))
                setting = math.ceil(rows / math.ceil(rows / most))  # equal chunks, no small remainder
            else:
                setting = None
        return rows if setting is None else min(rows, int(setting))

    def train(self) -> None:
        """One ACKTR update on the rollout buffer (a single natural-gradient step over all the data)."""
        self.policy.set_training_mode(True)
        optimizer: KFACOptimizer = self.policy.optimizer  # type: ignore[assignment]
        self._update_learning_rate(optimizer)
        kfac = optimizer.kfac
        cold = optimizer.in_cold_start
        guard_limit = self._kl_guard_limit()
        split = getattr(self, "trust_region", "joint") == "split" and not cold
        if {**DEFAULT_KFAC_OPTIONS, **self.kfac_kwargs}["update_factors_every"] == "auto":
            kfac.update_factors_every = self._update_factors_every("auto")

        phases: dict[str, float] = {}  # wall time of each part of the update (ms; CUDA: launch time)
        clock = _PhaseClock(phases)
        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()
            observations = rollout_data.observations

            collect = kfac.collects_next()  # update_factors_every > 1 skips the statistics pass in between
            subset = kfac.statistics_subset(len(actions), device=actions.device) if collect else None
            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            old_distribution = None
            value_grads: list[th.Tensor | None] | None = None
            if split:
                value_grads = [None] * len(self._trainable_parameters())
            if collect and subset is None:
                # One forward pass feeds both losses; only the Fisher backward runs with the hooks on.
                with kfac.collect_statistics():
                    values, log_prob, entropy, distribution = evaluate_with_distribution(
                        self.policy, observations, actions
                    )
                    clock.lap("forward")
                    fisher_loss = sampled_fisher_loss(distribution, values, self.vf_fisher_coef)
                    kfac.statistics_backward(fisher_loss, retain_graph=True)  # no weight gradients
                clock.lap("fisher_backward")
                old_distribution, kl_observations = snapshot(distribution), observations
                _, policy_loss, value_loss, entropy_loss = self._a2c_loss(
                    values, log_prob, entropy, advantages, rollout_data.returns
                )
                optimizer.zero_grad()
                self._backward(policy_loss, value_loss, entropy_loss, value_grads)
            else:
                if collect:
                    # Statistics from a random subset: its own forward and Fisher backward (both shrink),
                    # then the training pass over the whole batch without hooks. KL measured on the subset.
                    assert subset is not None
                    kl_observations = _rows(observations, subset)
                    with kfac.collect_statistics():
                        sub_values, _, _, sub_distribution = evaluate_with_distribution(
                            self.policy, kl_observations, actions[subset]
                        )
                        fisher_loss = sampled_fisher_loss(sub_distribution, sub_values, self.vf_fisher_coef)
                        kfac.statistics_backward(fisher_loss)
                    old_distribution = snapshot(sub_distribution)
                    clock.lap("fisher_backward")
                else:
                    with kfac.collect_statistics():  # inactive: only advances the statistics schedule
                        pass
                policy_loss, value_loss, entropy_loss = self._a2c_backward(
                    optimizer, observations, actions, advantages, rollout_data.returns, clock, value_grads
                )
            if cold:
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            clock.lap("backward")
            guarded = old_distribution is not None and guard_limit is not None
            step_start = optimizer.step_snapshot() if guarded else None
            if value_grads is not None:
                optimizer.last_info = self._split_step(optimizer, value_grads)
                optimizer.step(preconditioned=True)
            else:
                optimizer.step()  # preconditions with kfac.precondition(lr=η) unless cold
            clock.lap("step")

            kl = None  # measured on the updates that collect statistics (on their subset)
            if old_distribution is not None:
                with th.no_grad():
                    kl = mean_kl(old_distribution, self.policy.get_distribution(kl_observations)).item()
            kl_before_guard, guard_scale = kl, 1.0
            if step_start is not None and kl is not None:
                assert old_distribution is not None and guard_limit is not None
                kl, guard_scale = self._enforce_kl_guard(
                    optimizer, step_start, old_distribution, kl_observations, kl, guard_limit
                )
            clock.lap("kl")

        release_training_graph(self.policy)
        explained_var = explained_variance_of(self.rollout_buffer)
        info = optimizer.last_info
        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        if kl is not None:
            self.logger.record("train/kl", kl)
        if kl_before_guard is not None and guard_limit is not None:
            self.logger.record("train/kl_before_guard", kl_before_guard)
            self.logger.record("train/kl_guard_scale", guard_scale)
        if getattr(self, "target_kl", None) is not None:
            # cold steps are plain-gradient steps of a fixed size: their KL says nothing about η; the KL
            # before the guard says what η would have taken
            if not cold and kl_before_guard is not None:
                self._adapt_learning_rate(kl_before_guard)
            self.logger.record("train/target_kl", float(self.target_kl))  # type: ignore[arg-type]
            self.logger.record("train/lr_multiplier", self.lr_multiplier)
        self.logger.record("train/kl_clip", float("nan") if kfac.kl_clip is None else float(kfac.kl_clip))
        self.logger.record("train/step_scale", 1.0 if info is None else float(info.step_scale.item()))
        if info is not None and not cold:
            # the trust region's quadratic model of the step's KL (policy and critic parts, before momentum):
            # what kl_clip bounds; beside train/kl it shows how far K-FAC's model is from the KL taken
            self.logger.record("train/predicted_kl", float(info.predicted_kl))
        if split:
            self.logger.record("train/vf_step_scale", self._vf_step_scale)
        if getattr(self, "vf_kl_clip", None) is not None:
            self.logger.record("train/vf_kl_clip", float(self.vf_kl_clip))  # type: ignore[arg-type]
            if not split:
                vf_scale = 1.0 if info is None or not info.group_step_scales else info.group_step_scales[0]
                self.logger.record("train/vf_step_scale", float(vf_scale))
        self.logger.record("train/damping", float(kfac.damping))
        self.logger.record("train/eigh_failures", 0 if info is None else int(info.eigh_failures))
        self.logger.record("train/skipped_updates", optimizer.skipped_updates)
        self.logger.record("train/cold_start", int(cold))
        # curvature time: the Fisher backward with its statistics and the preconditioned step
        curvature_ms = phases.get("fisher_backward", 0.0) + (0.0 if cold else phases["step"])
        self.logger.record("time/kfac_ms", curvature_ms)
        for phase, milliseconds in phases.items():
            self.logger.record(f"time/update_{phase}_ms", milliseconds)
        if info is not None:
            self.logger.record("time/inverse_ms", info.inverse_ms)
        self.last_update_ms = phases

    def learn(
        self: SelfACKTR,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "ACKTR",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfACKTR:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
