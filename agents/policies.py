"""K-FAC policies for SB3's own algorithms: ``A2C(KFACActorCriticPolicy, env)``, ``PPO(...)``.

The networks are exactly SB3's (``ActorCriticPolicy``, ``ActorCriticCnnPolicy``,
``MultiInputActorCriticPolicy``), so ``state_dict`` keys match and weights move both ways between these
classes, SB3's and ``ACKTR``. Two things change:

- ``policy.optimizer`` is a :class:`~acktr.agents.optim.KFACOptimizer` (K-FAC natural gradient, KL trust
  region, SGD with momentum). SB3's ``train()`` calls ``zero_grad()``, ``loss.backward()``,
  ``clip_grad_norm_`` and ``step()`` as usual, and its learning-rate schedule sets η.
- ``evaluate_actions`` — the one forward pass SB3's ``train()`` makes per gradient step — runs inside
  ``kfac.collect_statistics()`` and back-propagates the sampled Fisher loss (with ``torch.autograd.grad``, so
  ``.grad`` is left untouched). The following ``step()`` preconditions with statistics including that batch.

Differences from ``acktr.ACKTR`` proper:

- SB3's default learning rates (A2C 7e-4, PPO 3e-4) are tuned for RMSprop/Adam; K-FAC steps need η of the
  order of 0.01–0.25 (the KL trust region then bounds each step). Pass ``learning_rate`` explicitly.
- ``max_grad_norm`` clipping is applied by SB3 before every step, not only during a cold start. When the trust
  region is active the step does not depend on the gradient's scale, so clipping then changes nothing.
- No cold start by default (``kfac_kwargs=dict(cold_iter=...)`` enables it).
- PPO takes many minibatch steps per rollout: the statistics are refreshed on every minibatch, and the KL
  bound holds per step, not per rollout (PPO's clipping still applies on top).
- ``optimizer_class`` / ``optimizer_kwargs`` (which SB3's ``A2C`` fills with RMSprop by default) are ignored.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from acktr.agents.fisher import check_fisher_reduction, evaluate_with_distribution, sampled_fisher_loss
from acktr.agents.optim import KFACOptimizer

# Defaults of the optimizer inside the K-FAC policies (ACKTR's published settings, no cold start).
DEFAULT_POLICY_KFAC_KWARGS: dict[str, Any] = dict(
    momentum=0.9, kl_clip=1e-3, damping=1e-2, factor_decay=0.99, update_inverses_every=10
)


class _KFACPolicyMixin:
    """Adds the K-FAC optimizer and statistics collection to an SB3 actor-critic policy class."""

    kfac_kwargs: dict[str, Any]
    vf_fisher_coef: float
    optimizer: KFACOptimizer

    def _init_kfac(self, kfac_kwargs: dict[str, Any] | None, vf_fisher_coef: float) -> None:
        # Set before the SB3 constructor runs, because it calls _build().
        self.kfac_kwargs = {**DEFAULT_POLICY_KFAC_KWARGS, **(kfac_kwargs or {})}
        check_fisher_reduction(self.kfac_kwargs)
        self.vf_fisher_coef = vf_fisher_coef

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self.optimizer = KFACOptimizer(self, lr=lr_schedule(1), **self.kfac_kwargs)  # type: ignore[arg-type]

    def evaluate_actions(
        self, obs: PyTorchObs, actions: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """SB3's ``evaluate_actions``; in training mode with grad enabled it also feeds K-FAC's statistics."""
        policy: ActorCriticPolicy = self  # type: ignore[assignment]
        if not (policy.training and th.is_grad_enabled()):
            return ActorCriticPolicy.evaluate_actions(policy, obs, actions)
        with self.optimizer.kfac.collect_statistics():
            values, log_prob, entropy, distribution = evaluate_with_distribution(policy, obs, actions)
            fisher_loss = sampled_fisher_loss(distribution, values, self.vf_fisher_coef)
            trainable = [p for p in policy.parameters() if p.requires_grad]
            th.autograd.grad(fisher_loss, trainable, retain_graph=True, allow_unused=True)
        return values, log_prob, entropy

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(kfac_kwargs=self.kfac_kwargs, vf_fisher_coef=self.vf_fisher_coef)
        return data


class KFACActorCriticPolicy(_KFACPolicyMixin, ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` (MLP) trained with K-FAC by SB3's own A2C/PPO.

    Accepts every ``ActorCriticPolicy`` argument plus:

    :param kfac_kwargs: ``KFACOptimizer``/``KFAC`` settings overriding ``DEFAULT_POLICY_KFAC_KWARGS``
        (``kl_clip``, ``damping``, ``momentum``, ``factor_decay``, ``update_inverses_every``, ``cold_iter``).
    :param vf_fisher_coef: weight of the critic term in the sampled Fisher loss.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        kfac_kwargs: dict[str, Any] | None = None,
        vf_fisher_coef: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self._init_kfac(kfac_kwargs, vf_fisher_coef)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)


class KFACActorCriticCnnPolicy(_KFACPolicyMixin, ActorCriticCnnPolicy):
    """SB3 ``ActorCriticCnnPolicy`` (Nature CNN) trained with K-FAC; extra arguments as the MLP class."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        kfac_kwargs: dict[str, Any] | None = None,
        vf_fisher_coef: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self._init_kfac(kfac_kwargs, vf_fisher_coef)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)


class KFACMultiInputActorCriticPolicy(_KFACPolicyMixin, MultiInputActorCriticPolicy):
    """SB3 ``MultiInputActorCriticPolicy`` (Dict observations) with K-FAC; extra arguments as above."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        kfac_kwargs: dict[str, Any] | None = None,
        vf_fisher_coef: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self._init_kfac(kfac_kwargs, vf_fisher_coef)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)
