"""The diagonal Fisher of parameters no K-FAC block covers (``KFAC(uncovered_curvature="diagonal")``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acktr.curvature import KFAC
from acktr.curvature.kfac_math import diagonal_fisher_sample


class GaussianPolicy(nn.Module):
    """A Linear mean and a state-independent log standard deviation (SB3's DiagGaussian layout)."""

    def __init__(self, obs_dim: int = 3, action_dim: int = 2) -> None:
        super().__init__()
        self.mean = nn.Linear(obs_dim, action_dim)
        self.log_std = nn.Parameter(torch.tensor([0.3, -0.5]))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mean(obs), self.log_std.exp())


def sampled_nll(policy: GaussianPolicy, obs: torch.Tensor) -> torch.Tensor:
    normal = policy.distribution(obs)
    return -normal.log_prob(normal.sample()).sum(-1).mean()


def test_diagonal_fisher_sample_is_unbiased_for_independent_zero_mean_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, dim, draws = 16, 4, 20000
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0])
    scores = torch.randn(draws, batch, dim, generator=generator) * scale  # per-example scores, E = 0
    mean_estimates = diagonal_fisher_sample(scores.mean(1), batch_size=batch, mean_reduction=True)
    sum_estimates = diagonal_fisher_sample(scores.sum(1), batch_size=batch, mean_reduction=False)
    expected = scale.square()
    torch.testing.assert_close(mean_estimates.mean(0), expected, rtol=0.05, atol=0.0)
    torch.testing.assert_close(sum_estimates.mean(0), expected, rtol=0.05, atol=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        diagonal_fisher_sample(scores[0, 0], batch_size=0, mean_reduction=True)


def test_log_std_fisher_converges_to_the_analytic_two_per_dimension() -> None:
    """For a diagonal Gaussian, the Fisher of each log σ_i is E[(z² − 1)²] = 2 whatever the state."""
    torch.manual_seed(1)
    policy = GaussianPolicy()
    kfac = KFAC(policy, uncovered_curvature="diagonal", factor_decay=0.9999, cold_iter=2000, damping=1e-8)
    obs = torch.randn(256, 3)
    for _ in range(2000):  # a plain average of the 2000 samples (1/count stays above 1 - decay)
        with kfac.collect_statistics():
            policy.zero_grad()
            sampled_nll(policy, obs).backward()
    fisher = kfac.diagonal_fisher(policy.log_std)
    assert fisher.diagonal is not None
    torch.testing.assert_close(fisher.diagonal, torch.full((2,), 2.0), rtol=0.15, atol=0.0)


def test_precondition_divides_the_uncovered_gradient_by_its_damped_diagonal() -> None:
    torch.manual_seed(2)
    policy = GaussianPolicy()
    kfac = KFAC(policy, uncovered_curvature="diagonal", kl_clip=None, damping=0.1, lr=1.0)
    obs = torch.randn(64, 3)
    # statistics accumulated on top of a gradient already present: only the block's own backward counts
    policy.log_std.grad = torch.full((2,), 100.0)
    with kfac.collect_statistics():
        sampled_nll(policy, obs).backward()
    fisher = kfac.diagonal_fisher(policy.log_std)
    assert fisher.diagonal is not None and float(fisher.diagonal.max()) < 50.0
    diagonal = fisher.diagonal.clone()

    policy.zero_grad()
    loss = policy.distribution(obs).log_prob(torch.zeros(64, 2)).sum(-1).mean()
    loss.backward()
    grad = policy.log_std.grad.clone()
    info = kfac.precondition()
    torch.testing.assert_close(policy.log_std.grad, grad / (diagonal + 0.1))
    assert float(info.step_scale) == 1.0  # kl_clip=None: no trust-region scaling


def test_identity_keeps_the_plain_gradient_and_state_round_trips() -> None:
    torch.manual_seed(3)
    obs = torch.randn(32, 3)
    plain, diagonal = GaussianPolicy(), GaussianPolicy()
    diagonal.load_state_dict(plain.state_dict())
    kfacs = [
        KFAC(model, uncovered_curvature=kind, kl_clip=None)
        for model, kind in ((plain, "identity"), (diagonal, "diagonal"))
    ]
    for model, kfac in zip((plain, diagonal), kfacs, strict=True):
        torch.manual_seed(4)
        with kfac.collect_statistics():
            model.zero_grad()
            sampled_nll(model, obs).backward()
        model.zero_grad()
        sampled_nll(model, obs).backward()
        kfac.precondition()
    torch.manual_seed(4)
    plain.zero_grad()
    sampled_nll(plain, obs).backward()
    assert plain.log_std.grad is not None and diagonal.log_std.grad is not None
    assert not torch.allclose(plain.log_std.grad, diagonal.log_std.grad)

    copy = GaussianPolicy()
    copy.load_state_dict(diagonal.state_dict())
    restored = KFAC(copy, uncovered_curvature="diagonal")
    restored.load_state_dict(kfacs[1].state_dict())
    original = kfacs[1].diagonal_fisher(diagonal.log_std)
    loaded = restored.diagonal_fisher(copy.log_std)
    assert original.diagonal is not None and loaded.diagonal is not None
    assert torch.equal(original.diagonal, loaded.diagonal)
    assert loaded.statistics_updates == original.statistics_updates == 1

    old_state = kfacs[1].state_dict()
    del old_state["uncovered"]  # a state saved before diagonal statistics existed
    restored.load_state_dict(old_state)
    assert not restored.diagonal_fisher(copy.log_std).has_statistics


def test_an_exact_diagonal_ignores_samples_preconditions_and_round_trips() -> None:
    torch.manual_seed(5)
    policy = GaussianPolicy()
    kfac = KFAC(policy, uncovered_curvature="diagonal", kl_clip=None, damping=0.1, lr=1.0)
    fisher = kfac.diagonal_fisher(policy.log_std)
    with pytest.raises(ValueError, match="finite and >= 0"):
        fisher.set_exact(torch.tensor([2.0, -1.0]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        fisher.set_exact(torch.tensor([2.0, float("nan")]))
    assert not fisher.exact and not fisher.has_statistics
    fisher.set_exact(torch.full((2,), 2.0))
    obs = torch.randn(8, 3)
    for _ in range(3):  # one-batch samples (χ²₁ draws) would move it; an exact diagonal stays put
        with kfac.collect_statistics():
            policy.zero_grad()
            sampled_nll(policy, obs).backward()
    assert fisher.diagonal is not None and torch.equal(fisher.diagonal, torch.full((2,), 2.0))
    assert fisher.statistics_updates == 3
    policy.zero_grad()
    sampled_nll(policy, obs).backward()
    grad = policy.log_std.grad.clone()
    kfac.precondition()
    torch.testing.assert_close(policy.log_std.grad, grad / 2.1)

    copy = GaussianPolicy()
    restored = KFAC(copy, uncovered_curvature="diagonal")
    restored.load_state_dict(kfac.state_dict())
    loaded = restored.diagonal_fisher(copy.log_std)
    assert loaded.exact and loaded.diagonal is not None and torch.equal(loaded.diagonal, fisher.diagonal)


def test_unknown_uncovered_curvature_and_covered_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="uncovered_curvature must be one of identity, diagonal"):
        KFAC(GaussianPolicy(), uncovered_curvature="full")
    policy = GaussianPolicy()
    kfac = KFAC(policy, uncovered_curvature="diagonal")
    with pytest.raises(KeyError, match="not one of this model's uncovered parameters"):
        kfac.diagonal_fisher(policy.mean.weight)
