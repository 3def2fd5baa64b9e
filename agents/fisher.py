"""Sampled-Fisher losses for SB3 action distributions, and the one-forward evaluation they need.

K-FAC estimates the Fisher ``F = E_{s, a~π(·|s)}[∇log π(a|s) ∇log π(a|s)ᵀ]`` from the gradients of a
loss whose targets are **sampled from the model's own predictive distribution** (the true Fisher; the
rollout actions would give the empirical Fisher once the policy has moved). The functions here build that
loss for every distribution SB3's ``ActorCriticPolicy`` can produce, plus the critic term that treats
``V(s)`` as the mean of a Gaussian (DESIGN §3). The losses are means over the batch, matching
``KFAC(loss_reduction="mean")``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

SUPPORTED_DISTRIBUTIONS: tuple[type[Distribution], ...] = (
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
    DiagGaussianDistribution,  # includes SquashedDiagGaussianDistribution
    StateDependentNoiseDistribution,
)


def sampled_log_prob(distribution: Distribution) -> th.Tensor:
    """Log-likelihood of actions freshly sampled from ``distribution`` itself.

    The samples carry no gradient; the returned log-probabilities do, so the gradient of their negative mean
    is a Monte-Carlo sample of the score whose outer product averages to the policy Fisher.

    - Categorical / MultiCategorical / Bernoulli: sample the (per-dimension) distribution, sum the log-probs
      over action dimensions.
    - DiagGaussian (and its squashed variant) and StateDependentNoise (gSDE): sample the per-state Gaussian
      ``N(μ(s), σ(s)²)`` held in ``distribution.distribution``. For gSDE this is the marginal over the
      exploration matrix (independent per state), not the rollout's shared noise matrix. A tanh squashing,
      if any, contributes a Jacobian term that does not depend on the parameters, so it is left out.

    :param distribution: an SB3 distribution after ``proba_distribution(...)``; batch size B.
    :return: shape (B,), differentiable w.r.t. the distribution's parameters.
    :raises TypeError: for a distribution type without a sampled-Fisher rule.
    """
    if isinstance(distribution, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
        normal = distribution.distribution
        return normal.log_prob(normal.sample()).sum(dim=-1)
    if isinstance(distribution, CategoricalDistribution):
        categorical = distribution.distribution
        return categorical.log_prob(categorical.sample())
    if isinstance(distribution, MultiCategoricalDistribution):
        return th.stack([cat.log_prob(cat.sample()) for cat in distribution.distribution], dim=1).sum(dim=1)
    if isinstance(distribution, BernoulliDistribution):
        bernoulli = distribution.distribution
        return bernoulli.log_prob(bernoulli.sample()).sum(dim=-1)
    supported = ", ".join(cls.__name__ for cls in SUPPORTED_DISTRIBUTIONS)
    raise TypeError(
        f"no sampled-Fisher rule for {type(distribution).__name__}; use a policy whose action distribution "
        f"is one of {supported}"
    )


def sampled_fisher_loss(
    distribution: Distribution, values: th.Tensor, vf_fisher_coef: float = 1.0
) -> th.Tensor:
    """Joint actor-critic loss whose gradients feed the K-FAC statistics (never used for the step itself).

    ``L_F = −mean_b log π(ã_b|s_b) + c · mean_b (V_b − sg(V_b + ε_b))²`` with ã ~ π(·|s), ε ~ N(0, 1),
    c = ``vf_fisher_coef``. The critic term is the form used by OpenAI baselines: its gradient w.r.t. V is
    ``−2cε``, i.e. the Fisher of a unit-variance Gaussian critic scaled by ``4c²``.

    :param distribution: the policy distribution for a batch of B states.
    :param values: critic output, shape (B,) or (B, 1).
    :param vf_fisher_coef: weight c of the critic term (0 leaves the critic out of the Fisher).
    :return: 0-dim tensor.
    """
    policy_fisher_loss = -sampled_log_prob(distribution).mean()
    if vf_fisher_coef == 0.0:
        return policy_fisher_loss
    values = values.flatten()
    sampled_targets = (values + th.randn_like(values)).detach()
    value_fisher_loss = (values - sampled_targets).pow(2).mean()
    return policy_fisher_loss + vf_fisher_coef * value_fisher_loss


def exact_log_std_fisher(policy: ActorCriticPolicy) -> th.Tensor | None:
    """The exact diagonal Fisher of a policy's state-independent ``log_std``, where it has a closed form.

    For ``N(μ(s), diag(σ²))`` with ``σ = exp(log_std)`` the score of ``log σⱼ`` is ``zⱼ² − 1`` (z standard
    normal), so each diagonal entry is ``E[(z² − 1)²] = 2`` whatever the state, and the Fisher has no
    mean × log σ cross term. A tanh squashing is an invertible map of the action and changes no Fisher.
    gSDE's standard deviation depends on the state's features, so it has no such constant: None there, and
    for policies without ``log_std``.

    :return: shape of ``policy.log_std``, all 2, or None.
    """
    log_std = getattr(policy, "log_std", None)
    if not isinstance(log_std, th.nn.Parameter):
        return None
    if not isinstance(getattr(policy, "action_dist", None), DiagGaussianDistribution):
        return None
    return th.full_like(log_std.detach(), 2.0)


def check_fisher_reduction(kfac_kwargs: dict[str, Any]) -> None:
    """The losses here are batch means: ``KFAC(loss_reduction="sum")`` would make every G B² too small."""
    reduction = kfac_kwargs.get("loss_reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"kfac_kwargs['loss_reduction']={reduction!r}: the sampled Fisher loss is a batch mean, so it "
            "must be 'mean' (or left out)"
        )


def evaluate_with_distribution(
    policy: ActorCriticPolicy, obs: PyTorchObs, actions: th.Tensor
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, Distribution]:
    """``ActorCriticPolicy.evaluate_actions`` that also returns the distribution, in ONE forward pass.

    K-FAC records layer inputs during the forward pass, so the training loss and the Fisher loss must come
    from the same forward (a second forward through a shared trunk would record its inputs twice). This
    follows the body of SB3's ``evaluate_actions``; policies that override ``evaluate_actions`` with other
    maths must override this too.

    :return: values (B, 1), log_prob (B,), entropy (B,) or None, distribution.
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    distribution = policy._get_action_dist_from_latent(latent_pi)
    log_prob = distribution.log_prob(actions)
    values = policy.value_net(latent_vf)
    entropy = distribution.entropy()
    return values, log_prob, entropy, distribution


def snapshot(
    distribution: Distribution,
) -> th.distributions.Distribution | list[th.distributions.Distribution]:
    """The torch distribution(s) behind an SB3 distribution, detached.

    SB3 policies reuse one ``Distribution`` object and overwrite it on every forward, so measuring
    ``KL(π_old ‖ π_new)`` needs the old torch distribution kept aside before the next forward.
    """
    inner = distribution.distribution
    # the parameters were validated when the policy built the distribution: no second check (its host syncs)
    if isinstance(inner, list):
        return [
            th.distributions.Categorical(logits=cat.logits.detach(), validate_args=False)  # type: ignore[attr-defined]
            for cat in inner
        ]
    if isinstance(inner, th.distributions.Normal):
        return th.distributions.Normal(inner.loc.detach(), inner.scale.detach(), validate_args=False)
    if isinstance(inner, th.distributions.Categorical):
        return th.distributions.Categorical(logits=inner.logits.detach(), validate_args=False)
    if isinstance(inner, th.distributions.Bernoulli):
        return th.distributions.Bernoulli(logits=inner.logits.detach(), validate_args=False)
    raise TypeError(f"cannot snapshot {type(inner).__name__} for the KL measurement")


def release_training_graph(policy: ActorCriticPolicy) -> None:
    """Detach the torch distribution SB3 keeps on ``policy.action_dist`` after a training forward.

    SB3 stores the last distribution on the policy; after an update whose last forward built the loss, it
    holds the autograd graph of the whole batch (its activations stay alive until the next rollout) and
    ``copy.deepcopy(policy)`` fails on its non-leaf tensors. The detached copy has the same values.
    """
    action_dist = getattr(policy, "action_dist", None)
    inner = getattr(action_dist, "distribution", None)
    if inner is None:
        return
    with contextlib.suppress(TypeError):  # a distribution snapshot does not know: left as SB3 leaves it
        action_dist.distribution = snapshot(action_dist)  # type: ignore[union-attr,arg-type]


def mean_kl(
    old: th.distributions.Distribution | list[th.distributions.Distribution], new: Distribution
) -> th.Tensor:
    """``mean_b KL(π_old(·|s_b) ‖ π_new(·|s_b))`` summed over action dimensions; 0-dim tensor."""
    inner = new.distribution
    if isinstance(old, list):
        assert isinstance(inner, list), "KL between a MultiCategorical and another distribution"
        return (
            th.stack([th.distributions.kl_divergence(o, n) for o, n in zip(old, inner, strict=True)], dim=1)
            .sum(1)
            .mean()
        )
    assert not isinstance(inner, list), "KL between a MultiCategorical and another distribution"
    kl = th.distributions.kl_divergence(old, inner)
    if kl.dim() > 1:  # Normal / Bernoulli: independent dimensions
        kl = kl.sum(dim=-1)
    return kl.mean()
