"""Posterior weight samples from the curvature (noisy natural gradient) against dense covariances.

For each approximation, many draws of ``ΔW`` on a tiny layer are whitened with the Cholesky factor of the
dense reference covariance ``s² (F̂ + γI)⁻¹`` (explicit Kronecker products and inverses, not acktr's code
paths); the whitened draws must have identity covariance within sampling tolerance, and a slightly wrong
reference must be rejected by the same check. Also: the per-group perturbed forward against
``torch.func.functional_call``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from acktr.curvature import KFAC

SCALE = 0.7
DAMPING = 0.05


pytestmark = pytest.mark.usefixtures("float64_default")  # dense float64 references


def col_vec(matrices: torch.Tensor) -> torch.Tensor:
    """Column-major vec of a batch: ``(n, d_out, d_in)`` -> ``(n, d_out·d_in)``."""
    return matrices.transpose(1, 2).reshape(matrices.shape[0], -1)


def random_spd(dim: int) -> torch.Tensor:
    basis = torch.randn(dim, dim)
    return basis @ basis.T / dim + 0.05 * torch.eye(dim)


def whitened_error(samples: torch.Tensor, covariance: torch.Tensor) -> float:
    """Largest entry of ``|cov(L⁻¹ x) − I|`` for draws ``x`` (rows) and reference ``L Lᵀ = covariance``."""
    lower = torch.linalg.cholesky(covariance)
    white = torch.linalg.solve_triangular(lower, samples.T, upper=False).T
    empirical = white.T @ white / white.shape[0]  # zero mean by construction
    return float((empirical - torch.eye(covariance.shape[0])).abs().max())


def tolerance(draws: int) -> float:
    # entries of a Wishart/n estimate of I have std <= sqrt(2/n); 6 sigma covers the max over ~1e5 entries
    return 6.0 * math.sqrt(2.0 / draws)


def kfac_with_factors(
    kind: str, in_features: int, out_features: int, **kwargs: object
) -> tuple[KFAC, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features)
    kfac = KFAC(layer, curvature=kind, damping=DAMPING, **kwargs)  # type: ignore[arg-type]
    approximation = kfac.blocks[0].approximation
    if kind == "eva":
        activation, gradient = torch.randn(in_features + 1), torch.randn(out_features)
    else:
        activation, gradient = random_spd(in_features + 1), random_spd(out_features)
    approximation.set_running(activation, gradient)
    approximation.finite_updates = torch.tensor(1.0)
    return kfac, activation, gradient


def draw(kfac: KFAC, count: int) -> torch.Tensor:
    return col_vec(kfac.sample_weight_perturbations(count, scale=SCALE)[""])


def test_eigen_sampler_matches_dense_covariance():
    kfac, activation, gradient = kfac_with_factors("eigen", 3, 2)
    dense = torch.kron(activation, gradient) + DAMPING * torch.eye(8)
    draws = 100_000
    samples = draw(kfac, draws)
    assert whitened_error(samples, SCALE**2 * torch.linalg.inv(dense)) < tolerance(draws)
    # the check has power: a 10 % error in the scale, or the damping left out, is rejected
    assert whitened_error(samples, 1.1 * SCALE**2 * torch.linalg.inv(dense)) > tolerance(draws)
    wrong = torch.kron(activation, gradient) + 2 * DAMPING * torch.eye(8)
    assert whitened_error(samples, SCALE**2 * torch.linalg.inv(wrong)) > tolerance(draws)


def test_lowrank_sampler_matches_its_low_rank_plus_isotropic_covariance():
    # factors wider than rank + 16 take the low-rank path; the reference is the held decomposition's own
    # A-hat and G-hat (top-k eigenpairs plus the mean of the rest), built densely
    kfac, _, _ = kfac_with_factors("lowrank", 18, 19, rank=2)
    draws = 40_000
    samples = draw(kfac, draws)
    approximation = kfac.blocks[0].approximation
    assert not approximation.activation_lowrank.full_rank and not approximation.gradient_lowrank.full_rank

    def dense_factor(decomposition) -> torch.Tensor:
        vectors, values, residual = (
            decomposition.eigenvectors,
            decomposition.eigenvalues,
            decomposition.residual,
        )
        projector = vectors @ vectors.T
        return vectors @ torch.diag(values) @ vectors.T + residual * (torch.eye(len(projector)) - projector)

    fisher = torch.kron(
        dense_factor(approximation.activation_lowrank), dense_factor(approximation.gradient_lowrank)
    )
    covariance = SCALE**2 * torch.linalg.inv(fisher + DAMPING * torch.eye(fisher.shape[0]))
    assert whitened_error(samples, covariance) < tolerance(draws)
    assert whitened_error(samples, 1.15 * covariance) > tolerance(draws)


def test_cholesky_sampler_matches_its_factored_damping_covariance():
    kfac, activation, gradient = kfac_with_factors("cholesky", 3, 2)
    draws = 100_000
    samples = draw(kfac, draws)
    pi = math.sqrt((torch.trace(activation) / 4) / (torch.trace(gradient) / 2))
    root = math.sqrt(DAMPING)
    covariance = torch.kron(
        torch.linalg.inv(activation + pi * root * torch.eye(4)),
        torch.linalg.inv(gradient + root / pi * torch.eye(2)),
    )
    assert whitened_error(samples, SCALE**2 * covariance) < tolerance(draws)
    assert whitened_error(samples, 1.1 * SCALE**2 * covariance) > tolerance(draws)
    with pytest.raises(ValueError, match="damping"):
        kfac.sample_weight_perturbations(1, damping=2 * DAMPING)


def test_eva_sampler_matches_its_rank_one_covariance():
    kfac, activation, gradient = kfac_with_factors("eva", 3, 2)
    draws = 100_000
    samples = draw(kfac, draws)
    fisher = torch.kron(torch.outer(activation, activation), torch.outer(gradient, gradient))
    covariance = SCALE**2 * torch.linalg.inv(fisher + DAMPING * torch.eye(8))
    assert whitened_error(samples, covariance) < tolerance(draws)
    assert whitened_error(samples, 1.1 * covariance) > tolerance(draws)


def test_sampler_without_statistics_draws_from_the_prior():
    torch.manual_seed(1)
    kfac = KFAC(nn.Linear(3, 2), damping=DAMPING)
    draws = 100_000
    samples = col_vec(kfac.sample_weight_perturbations(draws, scale=SCALE)[""])
    assert whitened_error(samples, SCALE**2 / DAMPING * torch.eye(8)) < tolerance(draws)


def test_sampler_validates_its_arguments():
    kfac = KFAC(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no K-FAC block named"):
        kfac.sample_weight_perturbations(2, layers=["2"])
    with pytest.raises(ValueError, match="samples must be >= 1"):
        kfac.sample_weight_perturbations(0)
    only_first = kfac.sample_weight_perturbations(3, layers=["0"])
    assert list(only_first) == ["0"] and only_first["0"].shape == (3, 2, 4)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_perturbed_forward_runs_each_group_of_rows_at_its_own_weights(kind: str):
    torch.manual_seed(2)
    if kind == "linear":
        model: nn.Module = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        inputs = torch.randn(3 * 6, 4)
    else:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2, bias=False), nn.Flatten()
        )
        inputs = torch.randn(3 * 2, 2, 6, 6)
    kfac = KFAC(model)
    groups = 3
    perturbations = kfac.sample_weight_perturbations(groups, scale=0.3)
    named = kfac.parameter_perturbations(perturbations)
    mean = {name: param.detach() for name, param in model.named_parameters()}
    stacked = {name: mean[name] + named[name] for name in mean}

    def at_weights(params: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (rows,))

    reference = vmap(at_weights)(stacked, inputs.reshape(groups, -1, *inputs.shape[1:]))
    with kfac.perturbed_weights(perturbations):
        perturbed = model(inputs)
    torch.testing.assert_close(perturbed, reference.reshape(perturbed.shape))
    assert not torch.allclose(perturbed, model(inputs))  # hooks removed: the mean weights again
    with kfac.perturbed_weights(perturbations), pytest.raises(ValueError, match="equal groups"):
        model(inputs[:-1])


def test_gradient_inside_perturbed_weights_is_the_gradient_at_the_perturbed_weights():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1))
    inputs = torch.randn(2 * 4, 4)
    kfac = KFAC(model)
    perturbations = kfac.sample_weight_perturbations(2, scale=0.5)
    named = kfac.parameter_perturbations(perturbations)
    with kfac.perturbed_weights(perturbations):
        model(inputs).square().sum().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    expected = {name: torch.zeros_like(param) for name, param in model.named_parameters()}
    for group in range(2):
        params = {
            name: (param.detach() + named[name][group]).requires_grad_()
            for name, param in model.named_parameters()
        }
        functional_call(model, params, (inputs[4 * group : 4 * group + 4],)).square().sum().backward()
        for name, param in params.items():
            expected[name] += param.grad
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["cpu", "cuda"])
@pytest.mark.parametrize("kind", ["eigen", "ekfac", "lowrank", "cholesky", "eva"])
def test_posterior_sample_on_a_device_matches_float64_cpu(kind: str, device: str):
    """The same white noise gives the same sample on the device (float32) as on the CPU in float64."""
    shape = (18, 19) if kind == "lowrank" else (5, 3)
    reference, _, _ = kfac_with_factors(kind, *shape, rank=2)
    reference.sample_weight_perturbations(1)  # decomposes; the device copy loads the same decomposition
    block = reference.blocks[0]
    assert block.has_curvature
    layer = nn.Linear(*block.module.weight.shape[::-1]).to(device=device, dtype=torch.float32)
    on_device = KFAC(layer, curvature=kind, damping=DAMPING, rank=2)
    state = reference.state_dict()
    on_device.load_state_dict(state)
    noise = torch.randn(4, *block.module.weight.shape[:1], block.factor_dims()[0])
    expected = block.approximation.posterior_sample(noise, DAMPING)
    actual = on_device.blocks[0].approximation.posterior_sample(noise.to(device), DAMPING)
    assert actual.device.type == device
    torch.testing.assert_close(actual.cpu().double(), expected, rtol=2e-3, atol=2e-4)
