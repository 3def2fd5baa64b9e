"""NPG: the natural policy gradient with a K-FAC Fisher, TRPO's step size and line search (DESIGN §4).

A Stable-Baselines3 ``OnPolicyAlgorithm`` and a drop-in for sb3-contrib's ``TRPO``: rollouts, buffers,
callbacks, logging and save/load are inherited; this module adds the constructor and ``train()``. TRPO solves
``F x = g`` with conjugate gradients (``cg_max_steps`` Fisher-vector products, each a double backward through
the actor); NPG uses the K-FAC approximation ``F̂`` of the actor's Fisher from one sampled-Fisher backward, and
applies ``F̂⁻¹`` in closed form (:class:`acktr.curvature.KFAC`), so the update costs a few backward passes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
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
from torch import nn
from torch.nn import functional as F

from acktr.agents.acktr import critic_only_parameter_names
from acktr.agents.fisher import exact_log_std_fisher, mean_kl, sampled_log_prob, snapshot
from acktr.agents.rollouts import TensorRolloutMixin, explained_variance_of
from acktr.curvature import KFAC
from acktr.errors import RolloutSizeError

SelfNPG = TypeVar("SelfNPG", bound="NPG")

CRITIC_OPTIMIZERS = ("kfac", "adam")
CRITIC_STEP_RULES = ("whitened", "natural")
# TRPO keywords that only configure its conjugate-gradient solve: accepted (TRPO code runs), unused.
CG_ONLY_KEYWORDS = ("cg_max_steps", "cg_damping")
# Range of calibrate_step's rescaling of the model step: down to 1/100 (the model's KL 10⁴× too small) and up
# to 3× (the KL model 9× too large; beyond that a quadratic extrapolation is not trusted).
CALIBRATION_RANGE = (0.01, 3.0)
# The K-FAC critic's statistics and refresh periods, in minibatch steps (factors averaged with decay 0.95):
# the critic takes n_critic_updates x (batch / batch_size) steps per rollout, and refreshing its curvature
# on each made the update dearer than TRPO's whole update (measured on CartPole's zoo settings).
CRITIC_UPDATE_FACTORS_EVERY = 5
CRITIC_UPDATE_INVERSES_EVERY = 10
_warned_cg_keywords: set[str] = set()


# ------------------------------------------------------------------------------------------------ the maths


def natural_step_size(natural_grad_dot: float, target_kl: float) -> float:
    """Step length ``α = sqrt(2δ / gᵀF̂⁻¹g)`` along the natural direction ``Δ = F̂⁻¹g``.

    The quadratic model of the KL of the step ``αΔ`` is ``½ α² ΔᵀF̂Δ = ½ α² gᵀF̂⁻¹g``; this α makes it
    exactly δ (Schulman et al. 2015, appendix C; TRPO's maximal step).

    :param natural_grad_dot: ``gᵀF̂⁻¹g`` (a scalar ≥ 0; it is > 0 whenever g ≠ 0 and F̂ is damped).
    :param target_kl: δ > 0.
    :return: α ≥ 0; 0 when ``gᵀF̂⁻¹g`` is 0 or not finite (no direction to step along).
    """
    if target_kl <= 0:
        raise ValueError(f"natural_step_size: target_kl must be > 0, got {target_kl!r}")
    if not math.isfinite(natural_grad_dot) or natural_grad_dot <= 0.0:
        return 0.0
    return math.sqrt(2.0 * target_kl / natural_grad_dot)


def calibrated_step_scale(measured_kl: float, target_kl: float, *, smallest: float, largest: float) -> float:
    """The factor ``c`` that brings a trial step's measured KL to the target under the quadratic model.

    A step ``αΔ`` whose model KL was δ but whose measured KL is ``κ`` has curvature ``κ/δ`` times the model's
    along ``Δ``; ``c = sqrt(δ / κ)`` makes ``cαΔ``'s KL δ (to second order). Clipped to
    ``[smallest, largest]``.

    :param measured_kl: ``κ`` ≥ 0, the measured mean KL of the trial step.
    :param target_kl: δ > 0.
    :return: c; 1 when κ is 0 or not finite (no information: keep the model's step).
    """
    if not math.isfinite(measured_kl) or measured_kl <= 0.0:
        return 1.0
    return min(largest, max(smallest, math.sqrt(target_kl / measured_kl)))


def blockwise_step_lengths(gains: list[float], curvatures: list[float], target_kl: float) -> list[float]:
    """Step lengths ``aᵢ`` along Fisher-orthogonal block directions ``dᵢ`` that maximise the linear gain
    ``Σ aᵢ pᵢ`` subject to the quadratic KL ``½ Σ aᵢ² cᵢ = δ``.

    The Lagrange conditions give ``aᵢ = κ pᵢ / cᵢ`` with ``κ = sqrt(2δ / Σ pᵢ²/cᵢ)``. With K-FAC's own
    curvature along ``dᵢ = F̂ᵢ⁻¹gᵢ`` (``cᵢ = dᵢᵀF̂ᵢdᵢ = pᵢ``) every block gets the one natural step
    ``sqrt(2δ / Σ pᵢ)``; with curvatures measured along each block's direction, a block whose model was too
    flat (measured KL above the model's) is shortened without shortening the others. A Gaussian policy's
    mean and ``log_std`` are such blocks: the Gaussian Fisher has no mean × log σ cross term.

    :param gains: ``pᵢ = gᵢᵀdᵢ`` ≥ 0 per block.
    :param curvatures: ``cᵢ = dᵢᵀFdᵢ`` > 0 per block (same length as ``gains``).
    :param target_kl: δ > 0.
    :return: ``aᵢ`` per block; 0 for a block with no gain or a curvature that is not positive and finite.
    """
    if target_kl <= 0:
        raise ValueError(f"blockwise_step_lengths: target_kl must be > 0, got {target_kl!r}")
    if len(gains) != len(curvatures):
        raise ValueError(f"blockwise_step_lengths: {len(gains)} gains but {len(curvatures)} curvatures")
    usable = [
        math.isfinite(gain) and gain > 0.0 and math.isfinite(curvature) and curvature > 0.0
        for gain, curvature in zip(gains, curvatures, strict=True)
    ]
    total = sum(
        gain * gain / curvature for gain, curvature, ok in zip(gains, curvatures, usable, strict=True) if ok
    )
    if total <= 0.0 or not math.isfinite(total):
        return [0.0] * len(gains)
    multiplier = math.sqrt(2.0 * target_kl / total)
    return [
        multiplier * gain / curvature if ok else 0.0
        for gain, curvature, ok in zip(gains, curvatures, usable, strict=True)
    ]


def _dot(left: list[th.Tensor], right: list[th.Tensor]) -> th.Tensor:
    return sum(((a * b).sum() for a, b in zip(left, right, strict=True)), th.zeros((), device=left[0].device))


def preconditioned_conjugate_gradient(
    matrix_product: Callable[[list[th.Tensor]], list[th.Tensor]],
    precondition: Callable[[list[th.Tensor]], list[th.Tensor]],
    right_hand_side: list[th.Tensor],
    steps: int,
) -> tuple[list[th.Tensor], float]:
    """Approximately solve ``M x = b`` (``M`` symmetric positive definite) by conjugate gradients
    preconditioned with ``P⁻¹ ≈ M⁻¹``, starting from ``x₀ = P⁻¹ b``.

    With K-FAC as ``P`` and the damped Fisher-vector product as ``M`` this refines the K-FAC natural
    gradient toward the exact one: each step costs one product with ``M`` and one with ``P⁻¹``; after ``n``
    steps (``n`` the number of unknowns) the solve is exact in exact arithmetic, and the better ``P`` the
    faster it gets close (Nocedal & Wright, algorithm 5.3). ``steps=0`` returns ``P⁻¹ b``.

    Args:
        matrix_product: ``v ↦ M v`` on a list of tensors (one per parameter, any shapes).
        precondition: ``r ↦ P⁻¹ r`` on the same lists.
        right_hand_side: ``b``.
        steps: CG iterations ≥ 0.

    Returns:
        ``x`` (same shapes as ``b``) and the relative residual ``‖b − M x‖ / ‖b‖`` after the last iteration
        (NaN when ``steps`` is 0: not measured).
    """
    solution = precondition(right_hand_side)
    if steps <= 0:
        return solution, float("nan")
    product = matrix_product(solution)
    residual = [b - m for b, m in zip(right_hand_side, product, strict=True)]
    preconditioned = precondition(residual)
    direction = [z.clone() for z in preconditioned]
    residual_dot = _dot(residual, preconditioned)
    tiny = th.finfo(residual_dot.dtype).tiny
    for _ in range(steps):
        product = matrix_product(direction)
        curvature = _dot(direction, product)
        if not bool(curvature > tiny):  # converged (or M not positive along it): keep what we have
            break
        alpha = residual_dot / curvature
        solution = [x + alpha * d for x, d in zip(solution, direction, strict=True)]
        residual = [r - alpha * m for r, m in zip(residual, product, strict=True)]
        preconditioned = precondition(residual)
        new_residual_dot = _dot(residual, preconditioned)
        beta = new_residual_dot / residual_dot.clamp_min(tiny)
        direction = [z + beta * d for z, d in zip(preconditioned, direction, strict=True)]
        residual_dot = new_residual_dot
    norm = float(_dot(right_hand_side, right_hand_side).sqrt())
    return solution, float(_dot(residual, residual).sqrt()) / norm if norm > 0 else 0.0


def backtracking_coefficients(shrinking_factor: float, max_iter: int) -> list[float]:
    """The fractions of the full step a backtracking line search tries, in order: ``β⁰, β¹, …, β^(n−1)``.

    :param shrinking_factor: β in (0, 1).
    :param max_iter: n ≥ 1 tries.
    :return: list of n floats, the first 1.0.
    """
    return [shrinking_factor**index for index in range(max_iter)]


def line_search_accepts(kl: float, target_kl: float, new_objective: float, old_objective: float) -> bool:
    """The acceptance rule of a line-search try: ``KL(π_old ‖ π_new) ≤ δ`` and the surrogate improved.

    :param kl: measured mean KL of the tried parameters (on the policy-step batch).
    :param target_kl: δ.
    :param new_objective: surrogate ``mean(Â · π_new/π_old)`` at the tried parameters.
    :param old_objective: the surrogate before the step (``mean(Â)`` of the normalised advantages, ~0).
    :return: True to accept. A NaN KL or objective never passes.
    """
    return kl <= target_kl and new_objective > old_objective


# --------------------------------------------------------------------------------------------- helpers


def _warn_cg_keyword(name: str) -> None:
    """One warning per process and keyword: TRPO's conjugate-gradient settings mean nothing to NPG."""
    if name in _warned_cg_keywords:
        return
    _warned_cg_keywords.add(name)
    warnings.warn(
        f"NPG: {name} is a setting of TRPO's conjugate-gradient solve; NPG applies the K-FAC inverse in "
        f"closed form and ignores it (use damping= for the Fisher's damping)",
        UserWarning,
        stacklevel=3,
    )


class _ParameterView(nn.Module):
    """A module that holds some of another module's layers and loose parameters (shared, not copied).

    A ``KFAC`` over it covers exactly those layers and treats exactly those loose parameters as uncovered,
    so its trust-region parameter counts and diagonal statistics concern only the actor (or the critic). It is
    never called: the layers' hooks fire when the policy itself runs forward.
    """

    def __init__(self, policy: nn.Module, parameter_names: Iterable[str]) -> None:
        super().__init__()
        wanted = set(parameter_names)
        covered: set[str] = set()
        for name, module in policy.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and f"{name}.weight" in wanted:
                self.add_module(name.replace(".", "__"), module)
                covered.update(f"{name}.{own}" for own, _ in module.named_parameters(recurse=False))
        for name, param in policy.named_parameters():
            if name in wanted and name not in covered:
                self.register_parameter(name.replace(".", "__"), param)


def _rows(values: Any, step: int) -> Any:
    """Every ``step``-th row of a tensor or a dict of tensors (TRPO's ``sub_sampling_factor``)."""
    if step == 1 or values is None:
        return values
    if isinstance(values, dict):
        return {key: value[::step] for key, value in values.items()}
    return values[::step]


class NPGOptimizer(th.optim.Optimizer):
    """``policy.optimizer`` of NPG: the critic's optimizer, holding both curvature states.

    SB3 writes the scheduled learning rate into ``param_groups`` and saves and restores
    ``policy.optimizer.state_dict()`` with the model; keeping the actor's K-FAC, the critic's K-FAC (or Adam)
    here therefore makes ``save``/``load`` carry all of NPG's optimizer state.

    :param critic_parameters: the critic-only parameters (stepped by :meth:`step`).
    :param lr: the critic's learning rate η (SB3's schedule overwrites ``param_groups[0]["lr"]``).
    :param actor_kfac: the K-FAC preconditioner of the actor (used by ``NPG.train``, not by :meth:`step`).
    :param critic_kfac: the critic's K-FAC (Gauss-Newton) preconditioner, or None for Adam.
    :param adam_kwargs: Adam's keywords when ``critic_kfac`` is None.
    """

    def __init__(
        self,
        critic_parameters: list[nn.Parameter],
        lr: float,
        actor_kfac: KFAC,
        critic_kfac: KFAC | None,
        adam_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(critic_parameters, {"lr": lr})
        self.actor_kfac = actor_kfac
        self.critic_kfac = critic_kfac
        self.adam = (
            None if critic_kfac is not None else th.optim.Adam(self.param_groups, **(adam_kwargs or {}))
        )
        self.last_critic_info: Any = None

    @th.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One critic step on ``.grad``: K-FAC-preconditioned SGD (``θ ← θ − η·ν·F̂⁻¹g``) or Adam."""
        if self.adam is not None:
            self.adam.step()
            return
        assert self.critic_kfac is not None
        lr = self.param_groups[0]["lr"]
        self.last_critic_info = self.critic_kfac.precondition(lr=lr)
        for param in self.param_groups[0]["params"]:
            if param.grad is not None:
                param.add_(param.grad, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state (param groups; Adam's moments) plus both K-FAC states."""
        state = self.adam.state_dict() if self.adam is not None else super().state_dict()
        state["actor_kfac"] = self.actor_kfac.state_dict()
        state["critic_kfac"] = None if self.critic_kfac is None else self.critic_kfac.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        actor_state = state_dict.pop("actor_kfac", None)
        critic_state = state_dict.pop("critic_kfac", None)
        if self.adam is not None:
            self.adam.load_state_dict(state_dict)
        else:
            super().load_state_dict(state_dict)
        if actor_state is not None:
            self.actor_kfac.load_state_dict(actor_state)
        if critic_state is not None and self.critic_kfac is not None:
            self.critic_kfac.load_state_dict(critic_state)


# ------------------------------------------------------------------------------------------------ the agent


class NPG(TensorRolloutMixin, OnPolicyAlgorithm):
    """Natural policy gradient with a K-FAC Fisher — a drop-in replacement for sb3-contrib's ``TRPO``.

    Each update, on the rollout (every ``sub_sampling_factor``-th row of it, as TRPO):

    1. **Policy step.** One forward pass of the actor; inside ``actor_kfac.collect_statistics()`` the sampled
       Fisher loss ``−mean log π(ã|s)`` (ã drawn from π itself) is back-propagated, giving the K-FAC factors
       of the actor's layers (shared trunk and action net) and the diagonal Fisher of ``log_std``
       (``uncovered_curvature="diagonal"``). The gradient g of the surrogate ``mean(Â · π/π_old)`` is then
       preconditioned, ``Δ = F̂⁻¹g``, and the step ``α = sqrt(2δ / gᵀF̂⁻¹g)`` (δ = ``target_kl``) makes the
       quadratic KL model equal δ. With ``line_search=True`` (default, as TRPO) the fractions ``βⁱ`` of the
       step are tried (β = ``line_search_shrinking_factor``, ``line_search_max_iter`` tries) and the first
       whose measured KL ≤ δ and whose surrogate improved is kept; if none is, the policy is left unchanged.
       Without the line search the full step is taken (its KL is still measured and logged). With
       ``calibrate_step=True`` (default) the model step's KL is measured first and the step rescaled so that
       its measured KL would be δ (``sqrt(δ / KL)``, between 0.01× and 3×) before the line search starts:
       K-FAC's block-diagonal Kronecker curvature can be far off along its own direction (measured on
       Hopper's 256-256 tanh policy: the true KL 30–70× the model's), and then every try of a line search
       from the model's step fails or ends many shrinks short. Logged: ``train/kl_model_ratio``.
       With ``split_std_step=True`` (default) a Gaussian policy's ``log_std`` is its own block of the step:
       the mean's parameters and ``log_std`` are each tried alone at the model step, and the step lengths
       along the two directions maximise the surrogate's linear gain under the measured quadratic KL
       (:func:`blockwise_step_lengths`; the Gaussian Fisher has no mean × log σ cross term). Without it, the
       one calibration factor set by the mean's too-flat K-FAC model also shrinks ``log_std``'s step, whose
       diagonal Fisher is exact, and the policy's standard deviation barely moves (measured on Hopper).
       Logged: ``train/std_step_size``, ``train/kl_model_ratio_std``.
    2. **Critic.** ``n_critic_updates`` epochs over minibatches of ``batch_size`` of the value loss
       ``mean((R − V)²)`` on the critic-only parameters (TRPO drops the gradients of parameters shared with
       the actor; so does NPG). ``critic_optimizer="kfac"`` (default): each minibatch step is preconditioned
       by the critic's own K-FAC Gauss-Newton matrix (the critic as a unit-variance Gaussian, statistics from
       the same minibatch) inside a trust region ``critic_kl_clip``; ``critic_step_rule="whitened"`` (default)
       reads ``learning_rate`` as a per-parameter step in Fisher-whitened units, so TRPO's Adam learning rates
       carry over; ``"natural"`` reads it as the step along ``F̂⁻¹g`` itself. ``critic_optimizer="adam"``:
       Adam at ``learning_rate``, exactly TRPO's critic.

    Accepts every keyword of sb3-contrib's ``TRPO`` with TRPO's meaning (``learning_rate`` is the critic's,
    ``target_kl`` is δ, ``batch_size`` the critic's minibatch, ``sub_sampling_factor`` thins the policy step's
    batch, gSDE, ...), except ``cg_max_steps`` and ``cg_damping``: they configure TRPO's conjugate-gradient
    solve, which NPG does not run, and are ignored with a one-time warning. Same spaces and policies as TRPO.

    NPG's own keywords:

    :param line_search: backtracking line search on the measured KL and surrogate (TRPO always runs one).
    :param calibrate_step: rescale the model step to the measured KL before the line search (see 1.).
    :param split_std_step: give a Gaussian policy's ``log_std`` its own calibrated step length (see 1.;
        with ``calibrate_step`` and without ``fisher_cg_steps``).
    :param fisher_cg_steps: conjugate-gradient iterations that refine the K-FAC direction toward the exact
        damped solve ``(F + λI)⁻¹g``, with K-FAC as the preconditioner and exact Fisher-vector products (the
        Hessian of the measured KL, one double backward each, as TRPO), started from ``F̂⁻¹g``; the step
        size then uses the exact quadratic ``xᵀ(F + λI)x``. 0 (default): the K-FAC direction alone. Each
        iteration costs about one of TRPO's ``cg_max_steps``; logged: ``train/cg_residual`` (relative
        residual of the solve). Measured on Hopper with the zoo's 256-256 policy, 10 iterations learned far
        slower than K-FAC's own direction (the exact Fisher from one batch is rank-deficient for a policy
        that large, and its damped solve blows up the null-space part of g; README, NPG).
    :param damping: Tikhonov damping λ of the actor's K-FAC factors (and of ``log_std``'s diagonal Fisher).
    :param factor_decay: running-average decay of the actor's factors across updates (0: this batch only).
    :param critic_optimizer: ``"kfac"`` or ``"adam"`` (see 2. above).
    :param critic_step_rule: ``"whitened"`` or ``"natural"`` (K-FAC critic only).
    :param critic_kl_clip: trust region of each K-FAC critic step, in the Gaussian critic's KL (None: none).
    :param critic_damping: damping of the critic's K-FAC factors.
    :param kfac_kwargs: further ``acktr.curvature.KFAC`` keywords for the actor's K-FAC (e.g. ``curvature``).
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
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int | None = None,
        cg_damping: float | None = None,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float = 0.01,
        sub_sampling_factor: int = 1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        line_search: bool = True,
        calibrate_step: bool = True,
        split_std_step: bool = True,
        fisher_cg_steps: int = 0,
        damping: float = 0.01,
        factor_decay: float = 0.0,
        critic_optimizer: str = "kfac",
        critic_step_rule: str = "whitened",
        critic_kl_clip: float | None = 0.01,
        critic_damping: float = 0.01,
        kfac_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # as TRPO: no entropy bonus
            vf_coef=0.0,  # the critic is trained separately
            max_grad_norm=0.0,
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
        for name, value in (("cg_max_steps", cg_max_steps), ("cg_damping", cg_damping)):
            if value is not None:
                _warn_cg_keyword(name)
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.normalize_advantage = normalize_advantage
        if self.env is not None:
            buffer_size = self.env.num_envs * self.n_steps
            if normalize_advantage and buffer_size <= 1:
                raise RolloutSizeError(
                    f"NPG: n_steps * n_envs must be > 1 to normalise advantages (n_steps={self.n_steps}, "
                    f"n_envs={self.env.num_envs}); raise n_steps or pass normalize_advantage=False"
                )
            if buffer_size % batch_size > 0:
                warnings.warn(
                    f"NPG: batch_size={batch_size} does not divide n_steps * n_envs = {buffer_size}; every "
                    f"critic epoch ends with a truncated minibatch of {buffer_size % batch_size}",
                    UserWarning,
                    stacklevel=2,
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"NPG: batch_size must be an int >= 1, got {batch_size!r}")
        if not 0.0 < line_search_shrinking_factor < 1.0:
            raise ValueError(
                f"NPG: line_search_shrinking_factor must be in (0, 1), got {line_search_shrinking_factor!r}"
            )
        for name, count, minimum in (
            ("line_search_max_iter", line_search_max_iter, 1),
            ("n_critic_updates", n_critic_updates, 0),
            ("sub_sampling_factor", sub_sampling_factor, 1),
            ("fisher_cg_steps", fisher_cg_steps, 0),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < minimum:
                raise ValueError(f"NPG: {name} must be an int >= {minimum}, got {count!r}")
        if not (isinstance(target_kl, (int, float)) and math.isfinite(target_kl) and target_kl > 0):
            raise ValueError(f"NPG: target_kl must be a positive number, got {target_kl!r}")
        if critic_optimizer not in CRITIC_OPTIMIZERS:
            raise ValueError(
                f"NPG: critic_optimizer must be one of {', '.join(CRITIC_OPTIMIZERS)}, "
                f"got {critic_optimizer!r}"
            )
        if critic_step_rule not in CRITIC_STEP_RULES:
            raise ValueError(
                f"NPG: critic_step_rule must be one of {', '.join(CRITIC_STEP_RULES)}, "
                f"got {critic_step_rule!r}"
            )
        self.batch_size = batch_size
        self.line_search_shrinking_factor = float(line_search_shrinking_factor)
        self.line_search_max_iter = line_search_max_iter
        self.target_kl = float(target_kl)
        self.n_critic_updates = n_critic_updates
        self.sub_sampling_factor = sub_sampling_factor
        self.line_search = bool(line_search)
        self.calibrate_step = bool(calibrate_step)
        self.split_std_step = bool(split_std_step)
        self.fisher_cg_steps = fisher_cg_steps
        self.damping = damping
        self.factor_decay = factor_decay
        self.critic_optimizer = critic_optimizer
        self.critic_step_rule = critic_step_rule
        self.critic_kl_clip = critic_kl_clip
        self.critic_damping = critic_damping
        self.kfac_kwargs = dict(kfac_kwargs or {})
        for key in ("modules", "kl_clip", "lr", "uncovered_curvature", "step_rule"):
            if key in self.kfac_kwargs:
                raise ValueError(f"NPG: kfac_kwargs[{key!r}] is set by NPG itself; leave it out")
        for key in ("damping", "factor_decay"):
            if key in self.kfac_kwargs:
                raise ValueError(f"NPG: kfac_kwargs[{key!r}]: pass it as NPG's own keyword, NPG({key}=...)")
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        critic_names = critic_only_parameter_names(self.policy)
        if not critic_names:
            raise ValueError(
                "NPG: the policy has no critic-only parameters (NPG trains the critic separately)"
            )
        by_name = dict(self.policy.named_parameters())
        actor_names = [name for name, p in by_name.items() if p.requires_grad and name not in critic_names]
        critic_parameters = [by_name[name] for name in critic_names]
        actor_kfac = KFAC(
            _ParameterView(self.policy, actor_names),
            lr=1.0,
            kl_clip=None,  # the step size comes from target_kl (natural_step_size)
            damping=self.damping,
            factor_decay=self.factor_decay,
            **{
                "cold_iter": 0,
                "update_inverses_every": 1,  # one step per rollout: always fresh decompositions
                "curvature": "eigen",
                **self.kfac_kwargs,
            },
            step_rule="natural",
            uncovered_curvature="diagonal",
            warn_unsupported=False,
        )
        log_std_fisher = exact_log_std_fisher(self.policy)
        if log_std_fisher is not None and "log_std" in actor_names:
            # NPG's curvature is this batch's alone (factor_decay 0): the sampled diagonal would be one
            # χ²₁ draw per dimension, off by 2-10x on any one update; the Gaussian's is known exactly
            actor_kfac.diagonal_fisher(by_name["log_std"]).set_exact(log_std_fisher)
        critic_kfac = None
        if self.critic_optimizer == "kfac":
            initial_lr = float(self.lr_schedule(1.0))
            critic_kfac = KFAC(
                _ParameterView(self.policy, critic_names),
                lr=initial_lr,
                reference_lr=initial_lr,
                kl_clip=self.critic_kl_clip,
                damping=self.critic_damping,
                factor_decay=0.95,
                cold_iter=0,
                update_factors_every=CRITIC_UPDATE_FACTORS_EVERY,
                update_inverses_every=CRITIC_UPDATE_INVERSES_EVERY,
                curvature="eigen",
                step_rule=self.critic_step_rule,
                warn_unsupported=False,
            )
        # SB3's policy optimizer (Adam over every parameter) is replaced; its state is never used.
        self.policy.optimizer = NPGOptimizer(
            critic_parameters,
            lr=float(self.lr_schedule(1.0)),
            actor_kfac=actor_kfac,
            critic_kfac=critic_kfac,
            adam_kwargs=self.policy.optimizer_kwargs,
        )
        self._actor_parameter_names = actor_names

    def _std_block_index(self) -> int | None:
        """Index of the Gaussian's ``log_std`` among the actor's parameters when it takes its own step length
        (``split_std_step``), else None."""
        if not getattr(self, "split_std_step", False):  # models saved before the option: one block
            return None
        names = self._actor_parameter_names
        return names.index("log_std") if "log_std" in names else None

    @property
    def npg_optimizer(self) -> NPGOptimizer:
        optimizer = self.policy.optimizer
        assert isinstance(optimizer, NPGOptimizer)
        return optimizer

    @property
    def kfac(self) -> KFAC:
        """The actor's ``acktr.curvature.KFAC`` (saved with the model)."""
        return self.npg_optimizer.actor_kfac

    @property
    def critic_kfac(self) -> KFAC | None:
        """The critic's ``acktr.curvature.KFAC`` (None with ``critic_optimizer="adam"``)."""
        return self.npg_optimizer.critic_kfac

    # ---------------------------------------------------------------------------------------------- update
    def _policy_step(
        self, observations: Any, actions: th.Tensor, old_log_prob: th.Tensor, advantages: th.Tensor
    ) -> dict[str, float]:
        """The natural-gradient policy step on one batch; returns what it logs."""
        kfac = self.kfac
        actor_parameters = [
            p for name, p in self.policy.named_parameters() if name in self._actor_parameter_names
        ]
        with kfac.collect_statistics():
            distribution = self.policy.get_distribution(observations)
            fisher_loss = -sampled_log_prob(distribution).mean()
            kfac.statistics_backward(fisher_loss, retain_graph=True)  # no weight gradients
        old_distribution = snapshot(distribution)
        log_prob = distribution.log_prob(actions)
        objective = (advantages * th.exp(log_prob - old_log_prob)).mean()
        self.policy.zero_grad(set_to_none=True)
        (-objective).backward()
        cg_steps = getattr(self, "fisher_cg_steps", 0)
        gradient = (  # g itself, kept only for the CG refinement (precondition overwrites .grad)
            [p.grad.detach().clone() if p.grad is not None else th.zeros_like(p) for p in actor_parameters]
            if cg_steps > 0
            else []
        )
        std_index = self._std_block_index() if cg_steps == 0 else None
        std_gradient = None
        if std_index is not None and actor_parameters[std_index].grad is not None:
            std_gradient = actor_parameters[std_index].grad.detach().clone()  # type: ignore[union-attr]
        info = kfac.precondition(lr=1.0)  # .grad ← F̂⁻¹ g of the loss −objective (refreshes the curvature)
        natural_grad_dot = float(info.natural_grad_dot)
        directions: list[th.Tensor | None] = [
            p.grad.detach().clone() if p.grad is not None else None for p in actor_parameters
        ]
        cg_residual = float("nan")
        if cg_steps > 0:
            refined, natural_grad_dot, cg_residual = self._refined_direction(
                observations, old_distribution, actor_parameters, gradient, cg_steps
            )
            directions = list(refined)
        step_size = natural_step_size(natural_grad_dot, self.target_kl)
        # Blocks of parameters with one step length each: the Gaussian's log_std apart from the mean's
        # parameters when split_std_step (their Fisher has no cross term), else one block.
        block_of = [0] * len(actor_parameters)
        gains = [natural_grad_dot]
        std_direction = directions[std_index] if std_index is not None else None
        if std_index is not None and std_gradient is not None and std_direction is not None:
            std_gain = float((std_gradient * std_direction).sum())  # g_σᵀ F̂_σ⁻¹ g_σ
            block_of[std_index] = 1
            gains = [max(natural_grad_dot - std_gain, 0.0), std_gain]
        lengths = [step_size] * len(gains)
        originals = [p.detach().clone() for p in actor_parameters]
        self.policy.zero_grad(set_to_none=True)
        old_objective = float(objective.detach())

        def place(fraction: float, block_lengths: list[float]) -> tuple[float, float]:
            with th.no_grad():
                for param, original, direction, block in zip(
                    actor_parameters, originals, directions, block_of, strict=True
                ):
                    if direction is not None:
                        param.copy_(original - (fraction * block_lengths[block]) * direction)
                new_distribution = self.policy.get_distribution(observations)
                new_objective = (
                    advantages * th.exp(new_distribution.log_prob(actions) - old_log_prob)
                ).mean()
                return float(mean_kl(old_distribution, new_distribution)), float(new_objective)

        # without the line search the full step is taken whatever its KL (it is still measured and logged)
        fractions = (
            backtracking_coefficients(self.line_search_shrinking_factor, self.line_search_max_iter)
            if self.line_search
            else [1.0]
        )
        model_ratios = [float("nan")] * len(gains)
        if getattr(self, "calibrate_step", False) and step_size > 0.0:
            # each block alone at the model's step: its measured KL over the model's ½α²pᵢ is how much
            # steeper the true KL is along that block's direction than K-FAC's model of it
            curvatures = []
            for block, gain in enumerate(gains):
                alone = [step_size if other == block else 0.0 for other in range(len(gains))]
                trial_kl, _ = place(1.0, alone)
                model_kl = 0.5 * step_size**2 * gain
                ratio = trial_kl / model_kl if model_kl > 0.0 else float("nan")
                model_ratios[block] = ratio
                if not math.isfinite(ratio) or ratio <= 0.0:
                    ratio = 1.0  # no information: keep the model's curvature
                # the step length moves by sqrt(1/ratio), kept within CALIBRATION_RANGE of the model's step
                ratio = min(CALIBRATION_RANGE[0] ** -2, max(CALIBRATION_RANGE[1] ** -2, ratio))
                curvatures.append(gain * ratio)
            lengths = blockwise_step_lengths(gains, curvatures, self.target_kl)
        accepted, kl, new_objective, fraction, shrinks = False, 0.0, old_objective, 0.0, len(fractions)
        for tried, candidate in enumerate(fractions if any(length > 0.0 for length in lengths) else []):
            kl, new_objective = place(candidate, lengths)
            if (
                line_search_accepts(kl, self.target_kl, new_objective, old_objective)
                if self.line_search
                else math.isfinite(kl) and math.isfinite(new_objective)
            ):
                accepted, fraction, shrinks = True, candidate, tried
                break
        if not accepted:  # TRPO's fallback: keep the old policy
            with th.no_grad():
                for param, original in zip(actor_parameters, originals, strict=True):
                    param.copy_(original)
            kl, new_objective = 0.0, old_objective
        return {
            "policy_objective": new_objective,
            "kl": kl,
            "step_size": fraction * lengths[0],
            "full_step_size": lengths[0],
            "std_step_size": fraction * lengths[1] if len(lengths) > 1 else float("nan"),
            "natural_grad_dot": natural_grad_dot,
            "line_search_steps": float(shrinks),
            "line_search_success": float(accepted),
            "kl_model_ratio": model_ratios[0],
            "kl_model_ratio_std": model_ratios[1] if len(model_ratios) > 1 else float("nan"),
            "cg_residual": cg_residual,
            "eigh_failures": float(info.eigh_failures),
        }

    def _refined_direction(
        self,
        observations: Any,
        old_distribution: Any,
        actor_parameters: list[nn.Parameter],
        gradient: list[th.Tensor],
        steps: int,
    ) -> tuple[list[th.Tensor], float, float]:
        """``x ≈ (F + λI)⁻¹ g`` by K-FAC-preconditioned CG (``fisher_cg_steps``); returns x, ``xᵀ(F + λI)x``
        and the solve's relative residual. F is the Hessian of ``KL(π_old ‖ π)`` at the current parameters
        (the Fisher of the policy-step batch), applied by double backward."""
        kfac = self.kfac
        damping = float(kfac.damping)
        with th.enable_grad():
            kl = mean_kl(old_distribution, self.policy.get_distribution(observations))
            kl_gradient = th.autograd.grad(kl, actor_parameters, create_graph=True, allow_unused=True)

        def fisher_product(vector: list[th.Tensor]) -> list[th.Tensor]:
            with th.enable_grad():
                pairs = zip(kl_gradient, vector, strict=True)
                inner = sum(
                    ((g * v.detach()).sum() for g, v in pairs if g is not None),
                    th.zeros((), device=vector[0].device),
                )
                products = th.autograd.grad(inner, actor_parameters, retain_graph=True, allow_unused=True)
            return [
                (h.detach() if h is not None else th.zeros_like(v)) + damping * v
                for h, v in zip(products, vector, strict=True)
            ]

        def kfac_inverse(vector: list[th.Tensor]) -> list[th.Tensor]:
            for param, value in zip(actor_parameters, vector, strict=True):
                param.grad = value.clone()
            kfac.precondition(lr=1.0, advance=False)  # no refresh: the curvature of this update
            return [param.grad.detach().clone() for param in actor_parameters]  # type: ignore[union-attr]

        solution, residual = preconditioned_conjugate_gradient(fisher_product, kfac_inverse, gradient, steps)
        quadratic = float(_dot(solution, fisher_product(solution)))
        self.policy.zero_grad(set_to_none=True)
        return solution, quadratic, residual

    def _critic_epochs(self) -> list[float]:
        """``n_critic_updates`` epochs of minibatch steps on the value loss; returns the minibatch losses."""
        optimizer = self.npg_optimizer
        critic_kfac = optimizer.critic_kfac
        actor_names = set(self._actor_parameter_names)
        actor_parameters = [p for name, p in self.policy.named_parameters() if name in actor_names]
        losses: list[float] = []
        for _ in range(self.n_critic_updates):
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                self.policy.zero_grad(set_to_none=True)
                if critic_kfac is not None and critic_kfac.collects_next():
                    with critic_kfac.collect_statistics():
                        values = self.policy.predict_values(rollout_data.observations).flatten()
                        # the critic as a unit-variance Gaussian: targets sampled around its own prediction
                        sampled_targets = (values + th.randn_like(values)).detach()
                        critic_kfac.statistics_backward(
                            (values - sampled_targets).pow(2).mean(), retain_graph=True
                        )
                else:
                    if critic_kfac is not None:
                        with critic_kfac.collect_statistics():  # inactive: advances the statistics schedule
                            pass
                    values = self.policy.predict_values(rollout_data.observations).flatten()
                value_loss = F.mse_loss(rollout_data.returns, values)
                value_loss.backward()
                for param in actor_parameters:  # as TRPO: the critic never moves what the actor uses
                    param.grad = None
                optimizer.step()
                losses.append(value_loss.item())
        return losses

    def train(self) -> None:
        """One NPG update: a natural-gradient policy step, then the critic's epochs."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        start = time.perf_counter()
        policy_logs: dict[str, float] = {}
        for rollout_data in self.rollout_buffer.get(batch_size=None):  # one batch: the whole rollout
            step = self.sub_sampling_factor
            actions = rollout_data.actions[::step]
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()
            advantages = rollout_data.advantages[::step]
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            policy_logs = self._policy_step(
                _rows(rollout_data.observations, step), actions, rollout_data.old_log_prob[::step], advantages
            )
        policy_ms = 1e3 * (time.perf_counter() - start)
        value_losses = self._critic_epochs()
        critic_ms = 1e3 * (time.perf_counter() - start) - policy_ms

        self._n_updates += 1
        explained_var = explained_variance_of(self.rollout_buffer)
        self.logger.record("train/policy_objective", policy_logs["policy_objective"])
        self.logger.record("train/value_loss", sum(value_losses) / max(len(value_losses), 1))
        self.logger.record("train/kl", policy_logs["kl"])
        self.logger.record("train/kl_divergence_loss", policy_logs["kl"])  # TRPO's name for it
        self.logger.record("train/target_kl", self.target_kl)
        self.logger.record("train/step_size", policy_logs["step_size"])
        self.logger.record("train/natural_grad_dot", policy_logs["natural_grad_dot"])
        self.logger.record("train/line_search_steps", policy_logs["line_search_steps"])
        self.logger.record("train/is_line_search_success", policy_logs["line_search_success"])
        for key in ("kl_model_ratio", "kl_model_ratio_std", "std_step_size"):
            if math.isfinite(policy_logs.get(key, float("nan"))):
                self.logger.record(f"train/{key}", policy_logs[key])
        if math.isfinite(policy_logs.get("cg_residual", float("nan"))):
            self.logger.record("train/cg_residual", policy_logs["cg_residual"])
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/eigh_failures", policy_logs["eigh_failures"])
        critic_info = self.npg_optimizer.last_critic_info
        if critic_info is not None:  # the K-FAC critic's trust-region scale ν of its last minibatch step
            self.logger.record("train/critic_step_scale", float(critic_info.step_scale))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("time/policy_step_ms", policy_ms)
        self.logger.record("time/critic_ms", critic_ms)
        self.last_update_ms = {"policy_step": policy_ms, "critic": critic_ms}

    def learn(
        self: SelfNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "NPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
