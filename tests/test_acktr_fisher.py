"""Sampled-Fisher losses and the KFACOptimizer step, checked against independent computations."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    kl_divergence,
)
from torch import nn

from acktr.agents.fisher import mean_kl, sampled_fisher_loss, sampled_log_prob, snapshot
from acktr.agents.optim import KFACOptimizer

N_SAMPLES = 40_000  # Monte-Carlo tolerance ~ 1/sqrt(N) relative


def score_second_moment(logits: th.Tensor, log_prob: th.Tensor) -> th.Tensor:
    """E[∇log p ∇log pᵀ] w.r.t. the per-example parameter rows of ``logits`` (N, K) -> (K, K)."""
    (scores,) = th.autograd.grad(log_prob.sum(), logits)
    return scores.T @ scores / scores.shape[0]


def test_categorical_fisher_matches_analytic() -> None:
    th.manual_seed(0)
    base = th.tensor([0.3, -1.0, 1.2, 0.0])
    logits = base.expand(N_SAMPLES, -1).clone().requires_grad_(True)
    dist = CategoricalDistribution(4).proba_distribution(logits)
    fisher = score_second_moment(logits, sampled_log_prob(dist))
    probs = th.softmax(base, 0)
    analytic = th.diag(probs) - th.outer(probs, probs)  # Fisher of a softmax w.r.t. its logits
    assert th.allclose(fisher, analytic, atol=0.01)


def test_multicategorical_fisher_is_block_diagonal_softmax() -> None:
    th.manual_seed(1)
    base = th.tensor([0.5, -0.5, 1.0, 0.0, 0.2])  # dims (2, 3)
    logits = base.expand(N_SAMPLES, -1).clone().requires_grad_(True)
    dist = MultiCategoricalDistribution([2, 3]).proba_distribution(logits)
    fisher = score_second_moment(logits, sampled_log_prob(dist))
    analytic = th.zeros(5, 5)
    for start, stop in ((0, 2), (2, 5)):
        probs = th.softmax(base[start:stop], 0)
        analytic[start:stop, start:stop] = th.diag(probs) - th.outer(probs, probs)
    assert th.allclose(fisher, analytic, atol=0.01)


def test_bernoulli_fisher_matches_analytic() -> None:
    th.manual_seed(2)
    base = th.tensor([0.0, 1.5, -2.0])
    logits = base.expand(N_SAMPLES, -1).clone().requires_grad_(True)
    dist = BernoulliDistribution(3).proba_distribution(logits)
    fisher = score_second_moment(logits, sampled_log_prob(dist))
    probs = th.sigmoid(base)
    assert th.allclose(fisher, th.diag(probs * (1 - probs)), atol=0.01)


def test_diag_gaussian_fisher_matches_analytic() -> None:
    th.manual_seed(3)
    mean = th.tensor([0.5, -1.0]).expand(N_SAMPLES, -1).clone().requires_grad_(True)
    log_std = th.tensor([0.0, -0.7], requires_grad=True)
    dist = DiagGaussianDistribution(2).proba_distribution(mean, log_std)
    fisher = score_second_moment(mean, sampled_log_prob(dist))
    # w.r.t. the mean, the Fisher of N(μ, σ²) is 1/σ²
    assert th.allclose(fisher, th.diag(th.exp(-2 * log_std.detach())), rtol=0.05, atol=0.02)


def test_state_dependent_noise_samples_the_per_state_marginal() -> None:
    th.manual_seed(4)
    dist_maker = StateDependentNoiseDistribution(1, full_std=True)
    latent_dim = 3
    latent = th.tensor([0.5, -1.0, 2.0]).expand(N_SAMPLES, -1).clone()
    mean = th.zeros(N_SAMPLES, 1, requires_grad=True)
    _, log_std = dist_maker.proba_distribution_net(latent_dim=latent_dim, log_std_init=-0.5)
    dist_maker.sample_weights(log_std)
    dist = dist_maker.proba_distribution(mean, log_std, latent)
    variance = (latent[0] ** 2 * th.exp(log_std.detach()[:, 0]) ** 2).sum()
    fisher = score_second_moment(mean, sampled_log_prob(dist))
    assert fisher.item() == pytest.approx(1.0 / variance.item(), rel=0.05)


def test_critic_term_gradient_is_baselines_gaussian() -> None:
    th.manual_seed(5)
    values = th.zeros(N_SAMPLES, 1, requires_grad=True)
    dist = CategoricalDistribution(2).proba_distribution(th.zeros(N_SAMPLES, 2))
    loss = sampled_fisher_loss(dist, values, vf_fisher_coef=0.5)
    (grad,) = th.autograd.grad(loss, values)
    per_example = grad * N_SAMPLES  # undo the mean over the batch
    assert per_example.mean().item() == pytest.approx(0.0, abs=0.02)
    assert per_example.pow(2).mean().item() == pytest.approx(4 * 0.5**2, rel=0.05)  # (2cε)², ε ~ N(0, 1)
    no_critic = sampled_fisher_loss(dist, values, vf_fisher_coef=0.0)
    assert not no_critic.requires_grad  # the critic is left out entirely


def test_unknown_distribution_raises() -> None:
    class Custom(CategoricalDistribution):
        pass

    class NotSupported:
        distribution = None

    assert sampled_log_prob(Custom(2).proba_distribution(th.zeros(3, 2))).shape == (3,)
    with pytest.raises(TypeError, match="no sampled-Fisher rule for NotSupported"):
        sampled_log_prob(NotSupported())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["categorical", "multicategorical", "bernoulli", "gaussian"])
def test_mean_kl_matches_sb3_kl_divergence(kind: str) -> None:
    th.manual_seed(6)
    batch = 7

    def make(seed: int):  # type: ignore[no-untyped-def]
        gen = th.Generator().manual_seed(seed)
        if kind == "categorical":
            return CategoricalDistribution(4).proba_distribution(th.randn(batch, 4, generator=gen))
        if kind == "multicategorical":
            return MultiCategoricalDistribution([2, 3]).proba_distribution(th.randn(batch, 5, generator=gen))
        if kind == "bernoulli":
            return BernoulliDistribution(3).proba_distribution(th.randn(batch, 3, generator=gen))
        return DiagGaussianDistribution(2).proba_distribution(
            th.randn(batch, 2, generator=gen), th.randn(2, generator=gen)
        )

    old, new = make(0), make(1)
    expected = kl_divergence(old, new)
    if expected.dim() > 1:
        expected = expected.sum(-1)
    assert mean_kl(snapshot(old), new).item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert mean_kl(snapshot(old), old).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------- KFACOptimizer


def dense_natural_gradient(layer: nn.Linear, x: th.Tensor, damping: float) -> tuple[th.Tensor, th.Tensor]:
    """Independent K-FAC direction for one Linear layer with a sampled softmax Fisher loss.

    Builds A = E[ā āᵀ] and G = E[g gᵀ] from per-example quantities, forms the dense (G ⊗ A + λI) for the
    row-major vec of [W | b] and solves it. Uses the SAME sampled targets as the optimizer run (seeded).
    """
    th.manual_seed(123)
    logits = layer(x)
    dist = th.distributions.Categorical(logits=logits)
    targets = dist.sample()
    per_example_loss = -dist.log_prob(targets)
    (output_grads,) = th.autograd.grad(per_example_loss.sum(), logits)  # per-example g, (B, out)
    inputs = th.cat([x, th.ones(x.shape[0], 1)], dim=1)  # ā, (B, in+1)
    a_factor = inputs.T @ inputs / x.shape[0]
    g_factor = output_grads.T @ output_grads / x.shape[0]
    return a_factor, g_factor


def test_kfac_optimizer_step_matches_dense_kronecker_solve() -> None:
    th.manual_seed(0)
    layer = nn.Linear(3, 4).double()
    x = th.randn(64, 3, dtype=th.float64)
    y = th.randint(0, 4, (64,))
    damping, lr, momentum = 0.05, 0.3, 0.9
    a_factor, g_factor = dense_natural_gradient(layer, x.double(), damping)

    optimizer = KFACOptimizer(layer, lr=lr, momentum=momentum, kl_clip=None, damping=damping, cold_iter=0)
    before = th.cat([layer.weight.detach(), layer.bias.detach()[:, None]], dim=1).clone()
    th.manual_seed(123)
    with optimizer.kfac.collect_statistics():
        logits = layer(x)
        dist = th.distributions.Categorical(logits=logits)
        (-dist.log_prob(dist.sample()).mean()).backward()
    optimizer.zero_grad()
    nn.functional.cross_entropy(layer(x), y).backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    grad = th.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).clone()
    optimizer.step()
    after = th.cat([layer.weight.detach(), layer.bias.detach()[:, None]], dim=1)

    dense = th.kron(g_factor, a_factor) + damping * th.eye(
        g_factor.shape[0] * a_factor.shape[0], dtype=th.float64
    )
    direction = th.linalg.solve(dense, grad.reshape(-1)).reshape(grad.shape)
    # first step: momentum buffer = direction, step size lr(1 - m)
    assert th.allclose(after, before - lr * (1 - momentum) * direction, rtol=1e-6, atol=1e-9)
    assert optimizer.last_info is not None and optimizer.last_info.step_scale.item() == 1.0


def test_kfac_optimizer_cold_iter_then_fresh_momentum() -> None:
    th.manual_seed(0)
    layer = nn.Linear(2, 2)
    optimizer = KFACOptimizer(layer, lr=0.1, momentum=0.5, cold_iter=2, kl_clip=None)
    x = th.randn(16, 2)

    def one_step() -> th.Tensor:
        with optimizer.kfac.collect_statistics():
            out = layer(x)
            dist = th.distributions.Categorical(logits=out)
            (-dist.log_prob(dist.sample()).mean()).backward()
        optimizer.zero_grad()
        layer(x).pow(2).mean().backward()
        assert layer.weight.grad is not None
        grad = layer.weight.grad.clone()
        before = layer.weight.detach().clone()
        optimizer.step()
        return before, grad  # type: ignore[return-value]

    before, grad0 = one_step()
    assert optimizer.last_info is None and optimizer.kfac.steps == 0  # cold: no preconditioning
    assert th.allclose(layer.weight, before - 0.1 * grad0)  # cold lr = η, buffer = g
    before, grad1 = one_step()
    assert th.allclose(layer.weight, before - 0.1 * (0.5 * grad0 + grad1))
    assert optimizer.in_cold_start is False
    one_step()
    assert optimizer.kfac.steps == 1 and optimizer.last_info is not None
    assert optimizer.state_dict()["steps_taken"] == 3


def test_kfac_optimizer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="momentum must be in"):
        KFACOptimizer(nn.Linear(2, 2), momentum=1.0)
    with pytest.raises(ValueError, match="cold_iter must be an int >= 0"):
        KFACOptimizer(nn.Linear(2, 2), cold_iter=-1)
