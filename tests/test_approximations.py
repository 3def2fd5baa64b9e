"""The curvature approximations and the statistics options, each against its definition on tiny nets.

References are dense float64 computations that do not use acktr's code paths: explicit Kronecker products and
solves, explicit patch loops, explicit per-call sums.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acktr.curvature import KFAC, EigenKFAC, KroneckerVectors, LowRankKFAC, kfac_math
from acktr.curvature.approximations import EigenbasisKFAC
from acktr.curvature.kfac_math import LowRankEigen

pytestmark = pytest.mark.usefixtures("float64_default")  # dense float64 references


def col_vec(matrix: torch.Tensor) -> torch.Tensor:
    """Column-major vec: ``(A ⊗ G) col_vec(V) = col_vec(G V A)``."""
    return matrix.T.reshape(-1)


def dense_solve(activation: torch.Tensor, gradient: torch.Tensor, grad: torch.Tensor, damping: float):
    fisher = torch.kron(activation, gradient)
    solution = torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0]), col_vec(grad))
    return solution.reshape(grad.shape[1], grad.shape[0]).T


def random_spd(dim: int, rank: int | None = None, floor: float = 0.0) -> torch.Tensor:
    basis = torch.randn(dim, rank or dim)
    return basis @ basis.T / dim + floor * torch.eye(dim)


def weight_bias_grad(layer: nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.grad.reshape(layer.weight.shape[0], -1), layer.bias.grad[:, None]], 1)


def sampled_nll_backward(logits: torch.Tensor) -> None:
    with torch.no_grad():
        sampled = torch.distributions.Categorical(logits=logits).sample()
    F.cross_entropy(logits, sampled).backward(retain_graph=True)


# --------------------------------------------------------------------------------------- low rank


@pytest.mark.parametrize(("activation_rank", "gradient_rank"), [(3, 2), (7, 2), (3, 5), (7, 5)])
def test_low_rank_precondition_is_the_exact_inverse_of_the_low_rank_plus_isotropic_kronecker(
    activation_rank: int, gradient_rank: int
) -> None:
    # ranks 7 and 5 are full rank (no isotropic rest) on the activation and gradient side
    torch.manual_seed(0)
    d_out, d_in, damping = 5, 7, 0.05
    grad = torch.randn(d_out, d_in)
    pieces = []
    for dim, rank in ((d_in, activation_rank), (d_out, gradient_rank)):
        vectors, _ = torch.linalg.qr(torch.randn(dim, rank))
        values = torch.rand(rank) + 1.0
        residual = torch.tensor(0.3 if rank < dim else 0.0)
        dense = vectors @ torch.diag(values) @ vectors.T + residual * (torch.eye(dim) - vectors @ vectors.T)
        pieces.append((LowRankEigen(values, vectors, residual), dense))
    (activation, activation_dense), (gradient, gradient_dense) = pieces
    result = kfac_math.low_rank_precondition(grad, activation, gradient, damping)
    expected = dense_solve(activation_dense, gradient_dense, grad, damping)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)


def test_low_rank_eigh_finds_the_top_eigenpairs_and_keeps_the_trace() -> None:
    torch.manual_seed(1)
    dim, rank = 80, 6
    vectors, _ = torch.linalg.qr(torch.randn(dim, dim))
    values = torch.cat([torch.linspace(50.0, 10.0, rank), torch.full((dim - rank,), 0.01)])
    factor = vectors @ torch.diag(values) @ vectors.T
    decomposition = kfac_math.low_rank_eigh(factor, rank)
    assert decomposition is not None and not decomposition.full_rank
    torch.testing.assert_close(
        decomposition.eigenvalues.sort().values, values[:rank].sort().values, rtol=1e-8, atol=0
    )
    # the columns span the top eigenspace, and the rest of the spectrum is its mean (trace preserved)
    projection = decomposition.eigenvectors @ decomposition.eigenvectors.T
    top = vectors[:, :rank]
    torch.testing.assert_close(projection @ top, top, rtol=0, atol=1e-8)
    torch.testing.assert_close(decomposition.residual, torch.tensor(0.01), rtol=1e-8, atol=0)
    # narrow factors are decomposed exactly
    exact = kfac_math.low_rank_eigh(factor[:10, :10], rank)
    assert exact is not None and exact.full_rank and float(exact.residual) == 0.0


def test_lowrank_curvature_equals_eigen_when_the_rank_covers_every_factor() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(32, 4)
    labels = torch.randint(0, 3, (32,))
    grads = {}
    for curvature in ("eigen", "lowrank"):
        net = copy.deepcopy(model)
        kfac = KFAC(net, curvature=curvature, rank=8, kl_clip=None, update_inverses_every=1)
        torch.manual_seed(3)
        with kfac.collect_statistics():
            logits = net(x)
            sampled_nll_backward(logits)
        net.zero_grad()
        F.cross_entropy(logits, labels).backward()
        kfac.precondition()
        grads[curvature] = [p.grad.clone() for p in net.parameters()]
        assert all(
            isinstance(b.approximation, EigenKFAC if curvature == "eigen" else LowRankKFAC)
            for b in kfac.blocks
        )
    for eigen, lowrank in zip(grads["eigen"], grads["lowrank"], strict=True):
        torch.testing.assert_close(lowrank, eigen, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("curvature", ["eigen", "lowrank"])
def test_the_kept_divisor_follows_damping_and_refreshes(curvature: str) -> None:
    """Eigen and full-rank low-rank blocks keep ``(d_G d_Aᵀ + λ)⁻¹`` between steps: a new damping, a refresh
    from new statistics and a directly assigned decomposition must each give the dense solve of their own."""
    torch.manual_seed(4)
    approximation = (EigenKFAC if curvature == "eigen" else LowRankKFAC)(
        5, 3, has_bias=True, dtype=torch.float64
    )
    grad = torch.randn(3, 5)

    def feed_and_refresh() -> None:
        approximation.observe_activations(torch.randn(16, 4))
        approximation.observe_gradients(torch.randn(16, 3), 16, 1.0, 1.0)
        approximation.update(decay=0.0, cold_iter=0)
        assert approximation.refresh(0.1)

    def expected(damping: float) -> torch.Tensor:
        return dense_solve(approximation.activation_factor, approximation.gradient_factor, grad, damping)

    feed_and_refresh()
    for damping in (0.1, 0.1, 0.02, 0.1):
        torch.testing.assert_close(approximation.precondition(grad, damping), expected(damping))
    feed_and_refresh()  # new factors, same damping
    torch.testing.assert_close(approximation.precondition(grad, 0.1), expected(0.1))
    if curvature == "eigen":  # a decomposition set from outside (e.g. loaded state)
        approximation.activation_factor = random_spd(5, floor=0.1)
        approximation.activation_eigen = kfac_math.safe_eigh(approximation.activation_factor)
        torch.testing.assert_close(approximation.precondition(grad, 0.1), expected(0.1))


def test_lowrank_curvature_on_a_wide_layer_solves_its_own_approximation() -> None:
    """A layer wider than rank + oversampling: the step is the exact damped inverse of (Â ⊗ Ĝ), with Â, Ĝ
    rebuilt from the decompositions held by the approximation."""
    torch.manual_seed(4)
    layer = nn.Linear(40, 3)
    x = torch.randn(256, 40) @ torch.randn(40, 40) / 6
    kfac = KFAC(layer, curvature="lowrank", rank=4, kl_clip=None, damping=0.01, update_inverses_every=1)
    with kfac.collect_statistics():
        sampled_nll_backward(layer(x))
    layer.zero_grad()
    F.cross_entropy(layer(x), torch.randint(0, 3, (256,))).backward()
    grad = weight_bias_grad(layer).clone()
    kfac.precondition()
    approximation = kfac.blocks[0].approximation
    activation, gradient = approximation.activation_lowrank, approximation.gradient_lowrank
    assert not activation.full_rank and gradient.full_rank  # 41 wide: low rank; 3 wide: exact

    def dense(decomposition: LowRankEigen) -> torch.Tensor:
        q = decomposition.eigenvectors
        eye = torch.eye(q.shape[0])
        return q @ torch.diag(decomposition.eigenvalues) @ q.T + decomposition.residual * (eye - q @ q.T)

    expected = dense_solve(dense(activation), dense(gradient), grad, 0.01)
    torch.testing.assert_close(weight_bias_grad(layer), expected, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------ Kronecker vectors (Eva)


def test_kronecker_vector_precondition_is_sherman_morrison_of_the_rank_one_kronecker() -> None:
    torch.manual_seed(5)
    grad, a, g = torch.randn(4, 6), torch.randn(6), torch.randn(4)
    result = kfac_math.kronecker_vector_precondition(grad, a, g, 0.1)
    expected = dense_solve(torch.outer(a, a), torch.outer(g, g), grad, 0.1)
    torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)


def test_eva_vectors_are_the_mean_activation_and_the_per_example_scaled_mean_gradient() -> None:
    torch.manual_seed(6)
    layer = nn.Linear(3, 2)
    x = torch.randn(16, 3)
    kfac = KFAC(layer, curvature="eva", kl_clip=None)
    per_example = []
    with kfac.collect_statistics():
        out = layer(x)
        target = torch.randn(16, 2)
        (0.5 * (out - target).square().sum(1)).mean().backward()
        per_example = (out - target).detach()  # d/d out of each example's own loss
    approximation = kfac.blocks[0].approximation
    assert isinstance(approximation, KroneckerVectors)
    torch.testing.assert_close(approximation.activation_vector, torch.cat([x.mean(0), torch.ones(1)]))
    torch.testing.assert_close(approximation.gradient_vector, per_example.mean(0))


# ----------------------------------------------------------------------------- statistics options


def explicit_conv_factors(conv: nn.Conv2d, images: torch.Tensor, output_grads: torch.Tensor):
    """KFC's A (with ones) and G from explicit loops over examples and positions (grads: per-example)."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    activation = torch.zeros(conv.in_channels * kh * kw + 1, conv.in_channels * kh * kw + 1)
    rows = 0
    for image in images:
        padded = F.pad(image, (pw, pw, ph, ph))
        for top in range(0, padded.shape[1] - kh + 1, sh):
            for left in range(0, padded.shape[2] - kw + 1, sw):
                patch = torch.cat([padded[:, top : top + kh, left : left + kw].reshape(-1), torch.ones(1)])
                activation += torch.outer(patch, patch)
                rows += 1
    gradient = torch.zeros(conv.out_channels, conv.out_channels)
    for grads in output_grads:
        positions = grads.reshape(conv.out_channels, -1).T
        gradient += positions.T @ positions
    return activation / rows, gradient / len(images)


def test_row_subsampled_conv_statistics_are_unbiased() -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    images = torch.randn(4, 2, 7, 7)
    full = KFAC(conv, factor_decay=0.0, cold_iter=0, kl_clip=None)
    sub = KFAC(conv, factor_decay=0.0, cold_iter=0, kl_clip=None, row_fraction=0.25)
    sums = [torch.zeros(19, 19), torch.zeros(3, 3)]
    draws = 1500
    for index, kfac in enumerate([full] + [sub] * draws):
        with kfac.collect_statistics():
            out = conv(images)
            out.backward(torch.ones_like(out) / len(images) + out.detach() / 10)  # a mean-reduced loss
        if index > 0:
            sums[0] += sub.blocks[0].activation_factor
            sums[1] += sub.blocks[0].gradient_factor
    grads = (torch.ones_like(out) + out.detach() * len(images) / 10).detach()  # per-example gradients
    activation, gradient = explicit_conv_factors(conv, images, grads)
    torch.testing.assert_close(full.blocks[0].activation_factor, activation)
    torch.testing.assert_close(full.blocks[0].gradient_factor, gradient)
    # one subsampled draw differs, the mean of many converges to the full statistics
    assert not torch.allclose(sub.blocks[0].activation_factor, activation, rtol=0.05)
    torch.testing.assert_close(sums[0] / draws, activation, rtol=0.05, atol=0.03)
    torch.testing.assert_close(sums[1] / draws, gradient, rtol=0.05, atol=0.05 * gradient.abs().max().item())


def test_statistics_subset_draws_distinct_rows() -> None:
    kfac = KFAC(nn.Linear(2, 2), statistics_fraction=0.25)
    subset = kfac.statistics_subset(40)
    assert subset is not None and len(subset) == 10 and len(set(subset.tolist())) == 10
    assert int(subset.min()) >= 0 and int(subset.max()) < 40
    assert KFAC(nn.Linear(2, 2)).statistics_subset(40) is None


def test_a_module_called_twice_averages_a_and_sums_g() -> None:
    """Weight sharing (K-FAC "expand", curvlinops' convention): A averages over the calls, G sums them."""
    torch.manual_seed(8)
    layer = nn.Linear(3, 2)
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    kfac = KFAC(layer, kl_clip=None)
    with kfac.collect_statistics():
        out1, out2 = layer(x1), layer(x2)
        target = torch.randn(5, 2)
        loss = (0.5 * (out1 + out2 - target).square().sum(1)).mean()  # one loss over both uses
        loss.backward()
    per_example = (out1 + out2 - target).detach()  # the same output gradient reaches both calls
    expected_a = (
        torch.cat([x1, torch.ones(5, 1)], 1).T @ torch.cat([x1, torch.ones(5, 1)], 1)
        + torch.cat([x2, torch.ones(5, 1)], 1).T @ torch.cat([x2, torch.ones(5, 1)], 1)
    ) / 10
    expected_g = 2 * per_example.T @ per_example / 5  # summed over the two calls, averaged over examples
    block = kfac.blocks[0]
    torch.testing.assert_close(block.activation_factor, expected_a)
    torch.testing.assert_close(block.gradient_factor, expected_g)


# -------------------------------------------------------------------------------------------- EKFAC


def _ekfac_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(21)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return net, torch.randn(24, 4), torch.randint(0, 3, (24,))


def _per_example_gradients(net: nn.Module, layer: nn.Linear, x: torch.Tensor, labels: torch.Tensor):
    """``∇W_n`` ``(N, d_out, d_in + 1)`` of each example's own cross-entropy, one backward per example."""
    gradients = []
    for index in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[index : index + 1]), labels[index : index + 1]).backward()
        gradients.append(weight_bias_grad(layer))
    return torch.stack(gradients)


def _ekfac_statistics(net: nn.Module, kfac: KFAC, x: torch.Tensor, labels: torch.Tensor) -> None:
    with kfac.collect_statistics():
        F.cross_entropy(net(x), labels).backward()  # a fixed-target Fisher: the rows are what matters


def test_ekfac_scaling_is_the_per_example_second_moment_in_the_kfac_eigenbasis() -> None:
    """After a refresh, s = mean_n (Q_Gᵀ ∇W_n Q_A)² of the latest batch in the basis of K-FAC's factors;
    before the next refresh each batch is averaged in (plainly at first) in that same basis; and the step
    is the damped inverse of (Q_A ⊗ Q_G) diag(s) (Q_A ⊗ Q_G)ᵀ."""
    net, x, labels = _ekfac_net()
    kfac = KFAC(net, curvature="ekfac", kl_clip=None, update_inverses_every=10, factor_decay=0.9)
    _ekfac_statistics(net, kfac, x, labels)
    net.zero_grad()
    F.cross_entropy(net(x), labels).backward()
    kfac.precondition()  # the refresh
    for block, layer in zip(kfac.blocks, (net[0], net[2]), strict=True):
        approximation = block.approximation
        assert isinstance(approximation, EigenbasisKFAC)
        per_example = _per_example_gradients(net, layer, x, labels)
        # the basis: eigenvectors of the dense A = E[ā āᵀ], G = E[g gᵀ] of the same per-example gradients
        q_a = approximation.activation_eigen.eigenvectors
        q_g = approximation.gradient_eigen.eigenvectors
        rotated = q_g.T @ per_example @ q_a
        torch.testing.assert_close(approximation.scaling, rotated.square().mean(0), rtol=1e-10, atol=1e-12)
    # a second batch (no refresh): averaged with the first in the same basis
    x2, labels2 = torch.randn(24, 4), torch.randint(0, 3, (24,))
    _ekfac_statistics(net, kfac, x2, labels2)
    grad = torch.randn(3, 6)
    for block, layer in zip(kfac.blocks[1:], (net[2],), strict=True):
        approximation = block.approximation
        q_a = approximation.activation_eigen.eigenvectors
        q_g = approximation.gradient_eigen.eigenvectors
        both = torch.cat(
            [_per_example_gradients(net, layer, x, labels), _per_example_gradients(net, layer, x2, labels2)]
        )
        torch.testing.assert_close(
            approximation.scaling, (q_g.T @ both @ q_a).square().mean(0), rtol=1e-10, atol=1e-12
        )
        basis = torch.kron(q_a, q_g)  # acts on column-major vec
        fisher = basis @ torch.diag(col_vec(approximation.scaling)) @ basis.T
        expected = torch.linalg.solve(fisher + 0.03 * torch.eye(18), col_vec(grad)).reshape(6, 3).T
        torch.testing.assert_close(approximation.precondition(grad, 0.03), expected, rtol=1e-9, atol=1e-11)


def test_ekfac_is_closer_to_the_fisher_than_kfac_in_the_same_basis() -> None:
    """The scaling is the best diagonal in K-FAC's eigenbasis (Frobenius), so EKFAC's Fisher block is at
    least as close to the exact one as K-FAC's ``d_G d_Aᵀ`` — strictly, for a tanh net whose inputs and
    output gradients are dependent."""
    net, x, labels = _ekfac_net()
    kfac = KFAC(net, curvature="ekfac", kl_clip=None)
    _ekfac_statistics(net, kfac, x, labels)
    kfac.precondition()
    block, layer = kfac.blocks[1], net[2]
    approximation = block.approximation
    per_example = _per_example_gradients(net, layer, x, labels)
    vectors = torch.stack([col_vec(gradient) for gradient in per_example])
    fisher = vectors.T @ vectors / len(vectors)
    basis = torch.kron(approximation.activation_eigen.eigenvectors, approximation.gradient_eigen.eigenvectors)
    kfac_scaling = torch.outer(
        approximation.gradient_eigen.eigenvalues, approximation.activation_eigen.eigenvalues
    )
    ekfac_error = torch.linalg.norm(fisher - basis @ torch.diag(col_vec(approximation.scaling)) @ basis.T)
    kfac_error = torch.linalg.norm(fisher - basis @ torch.diag(col_vec(kfac_scaling)) @ basis.T)
    assert ekfac_error < 0.9 * kfac_error


def test_ekfac_posterior_sample_has_the_inverse_damped_ekfac_covariance() -> None:
    """Mapping every unit noise matrix e_ij and summing the outer products of the samples gives the
    covariance exactly: ((Q_A ⊗ Q_G) diag(s) (Q_A ⊗ Q_G)ᵀ + γI)⁻¹."""
    net, x, labels = _ekfac_net()
    kfac = KFAC(net, curvature="ekfac", kl_clip=None)
    _ekfac_statistics(net, kfac, x, labels)
    kfac.precondition()
    approximation = kfac.blocks[1].approximation
    units = torch.eye(18).reshape(18, 6, 3).transpose(1, 2)  # col_vec(units[k]) = e_k
    samples = torch.stack([col_vec(sample) for sample in approximation.posterior_sample(units, 0.05)])
    basis = torch.kron(approximation.activation_eigen.eigenvectors, approximation.gradient_eigen.eigenvectors)
    fisher = basis @ torch.diag(col_vec(approximation.scaling)) @ basis.T
    torch.testing.assert_close(
        samples.T @ samples, torch.linalg.inv(fisher + 0.05 * torch.eye(18)), rtol=1e-9, atol=1e-11
    )


def test_ekfac_keeps_kfac_eigenvalues_where_there_are_no_per_example_rows() -> None:
    """A convolution's per-example gradient sums over positions: its block is K-FAC (s = d_G d_Aᵀ)."""
    torch.manual_seed(22)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    kfac = KFAC(net, curvature="ekfac", kl_clip=None)
    x, labels = torch.randn(10, 1, 6, 6), torch.randint(0, 3, (10,))
    _ekfac_statistics(net, kfac, x, labels)
    kfac.precondition()
    conv, linear = (block.approximation for block in kfac.blocks)
    expected = torch.outer(conv.gradient_eigen.eigenvalues, conv.activation_eigen.eigenvalues)
    torch.testing.assert_close(conv.scaling, expected)
    assert not torch.allclose(
        linear.scaling, torch.outer(linear.gradient_eigen.eigenvalues, linear.activation_eigen.eigenvalues)
    )


# --------------------------------------------------------------------------------------------- state


@pytest.mark.parametrize("curvature", ["eigen", "ekfac", "cholesky", "lowrank", "eva"])
def test_every_approximation_round_trips_its_state_and_continues_bit_for_bit(curvature: str) -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(12, 1, 6, 6)
    labels = torch.randint(0, 3, (12,))
    options = dict(curvature=curvature, rank=4, update_inverses_every=2, kl_clip=None, row_fraction=0.5)

    def update(net: nn.Module, kfac: KFAC, seed: int) -> None:
        torch.manual_seed(seed)
        with kfac.collect_statistics():
            logits = net(x)
            sampled_nll_backward(logits)
        net.zero_grad()
        F.cross_entropy(logits, labels).backward()
        kfac.precondition()
        with torch.no_grad():
            for parameter in net.parameters():
                parameter -= 0.1 * parameter.grad

    kfac = KFAC(model, **options)
    for seed in range(3):
        update(model, kfac, seed)
    state = copy.deepcopy(kfac.state_dict())
    clone = copy.deepcopy(model)
    restored = KFAC(clone, **options)
    restored.load_state_dict(state)
    for key, value in kfac.state_dict()["blocks"].items():
        for name, tensor in value.items():
            other = restored.state_dict()["blocks"][key][name]
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, other), (key, name)
    for seed in (10, 11):
        update(model, kfac, seed)
        update(clone, restored, seed)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_saved_with_another_curvature_switches_to_it() -> None:
    torch.manual_seed(10)
    layer = nn.Linear(3, 2)
    kfac = KFAC(layer, curvature="cholesky", kl_clip=None)
    with kfac.collect_statistics():
        sampled_nll_backward(layer(torch.randn(8, 3)))
    layer.zero_grad()
    layer(torch.randn(8, 3)).sum().backward()
    kfac.precondition()
    other = KFAC(copy.deepcopy(layer), kl_clip=None)
    other.load_state_dict(kfac.state_dict())
    assert other.curvature == "cholesky" and other.blocks[0].activation_inverse is not None


def test_rank_n_updates_of_wide_factors_equal_the_running_average_definition() -> None:
    """Few rows on a wide layer take the rank-N path; the factors must still be the plain-then-exponential
    running averages of the per-batch second moments, and a non-finite batch must leave them unchanged."""
    torch.manual_seed(11)
    layer = nn.Linear(40, 3)
    kfac = KFAC(layer, factor_decay=0.9, cold_iter=2, kl_clip=None)
    expected_a = expected_g = None
    for update in range(5):
        x = torch.randn(6, 40)  # 6 rows < 41 columns: kept as rows until the update
        with kfac.collect_statistics():
            out = layer(x)
            target = torch.randn(6, 3)
            (0.5 * (out - target).square().sum(1)).mean().backward()
        rows = torch.cat([x, torch.ones(6, 1)], 1)
        batch_a = rows.T @ rows / 6
        grads = (out - target).detach()
        batch_g = grads.T @ grads / 6
        weight = 1.0 if update == 0 else max(1.0 / (update + 1), 0.1) if update < 2 else 0.1
        expected_a = batch_a if expected_a is None else (1 - weight) * expected_a + weight * batch_a
        expected_g = batch_g if expected_g is None else (1 - weight) * expected_g + weight * batch_g
        torch.testing.assert_close(kfac.blocks[0].activation_factor, expected_a)
        torch.testing.assert_close(kfac.blocks[0].gradient_factor, expected_g)
    before = kfac.blocks[0].activation_factor.clone(), kfac.blocks[0].gradient_factor.clone()
    with kfac.collect_statistics():
        x = torch.randn(6, 40)
        x[0, 0] = float("nan")
        layer(x).sum().backward()
    assert torch.equal(kfac.blocks[0].activation_factor, before[0])
    assert torch.equal(kfac.blocks[0].gradient_factor, before[1])
    assert kfac.blocks[0].statistics_updates == 6 and float(kfac.blocks[0].finite_updates) == 5.0


def test_deferred_rank_n_updates_equal_the_running_average_when_read_only_at_the_end() -> None:
    """Rank-N updates wait as stacked rows (folded at 64 rows or on access): 14 updates of 6 rows, one of
    them non-finite, read only at the end, must give the running average of the finite batches."""
    torch.manual_seed(12)
    layer = nn.Linear(40, 3)
    kfac = KFAC(layer, factor_decay=0.9, cold_iter=2, kl_clip=None)
    expected_a = expected_g = None
    finite_batches = 0
    for update in range(14):
        x = torch.randn(6, 40)
        if update == 7:
            x[2, 5] = float("nan")
        with kfac.collect_statistics():
            out = layer(x)
            target = torch.randn(6, 3)
            (0.5 * (out - target).square().sum(1)).mean().backward()
        if update == 7:
            continue
        rows = torch.cat([x, torch.ones(6, 1)], 1)
        grads = (out - target).detach()
        batch_a, batch_g = rows.T @ rows / 6, grads.T @ grads / 6
        weight = 1.0 / (finite_batches + 1) if finite_batches < 2 else 0.1
        weight = max(weight, 0.1)
        expected_a = batch_a if expected_a is None else (1 - weight) * expected_a + weight * batch_a
        expected_g = batch_g if expected_g is None else (1 - weight) * expected_g + weight * batch_g
        finite_batches += 1
    approximation = kfac.blocks[0].approximation
    assert approximation._deferred, "the last updates' rows should still be waiting"
    torch.testing.assert_close(kfac.blocks[0].activation_factor, expected_a)
    torch.testing.assert_close(kfac.blocks[0].gradient_factor, expected_g)
    assert not approximation._deferred
    assert float(kfac.blocks[0].finite_updates) == 13.0


def test_warm_started_low_rank_eigh_tracks_a_drifting_factor_with_one_product_per_refresh() -> None:
    """Started from the previous refresh's eigenvectors, one product per refresh (iterations 0) captures the
    top-k energy of a slowly changing running factor nearly as well as a cold start with 2 iterations (three
    products), and better than a cold start with the same single product."""
    torch.manual_seed(13)
    dim, rank = 300, 12
    rotation_basis, _ = torch.linalg.qr(torch.randn(dim, dim))
    spectrum = torch.arange(1, dim + 1, dtype=torch.float64) ** -1.0
    factor, warm = None, None
    cold_deficits, warm_deficits, single_deficits = [], [], []
    for update in range(120):
        if update % 5 == 0:  # the data's principal directions drift
            skew = torch.randn(dim, dim, dtype=torch.float64) * 0.003
            rotation_basis = torch.linalg.matrix_exp(skew - skew.T) @ rotation_basis.double()
        rows = torch.randn(40, dim, dtype=torch.float64) * spectrum.sqrt() @ rotation_basis.T
        batch = rows.T @ rows / 40
        factor = batch if factor is None else 0.99 * factor + 0.01 * batch
        if update % 10 == 9:
            top = torch.linalg.eigvalsh(factor)[-rank:].sum()
            cold = kfac_math.low_rank_eigh(factor, rank)
            warm = kfac_math.low_rank_eigh(factor, rank, start=None if warm is None else warm.eigenvectors)
            assert cold is not None and warm is not None
            single = kfac_math.low_rank_eigh(factor, rank, iterations=0)
            assert single is not None
            single_deficits.append(float((top - single.eigenvalues.sum()) / top))
            cold_deficits.append(float((top - cold.eigenvalues.sum()) / top))
            warm_deficits.append(float((top - warm.eigenvalues.sum()) / top))
            # orthonormal columns and the trace kept by the isotropic rest, as in a cold start
            torch.testing.assert_close(
                warm.eigenvectors.T @ warm.eigenvectors, torch.eye(rank, dtype=torch.float64)
            )
            total = warm.eigenvalues.sum() + warm.residual * (dim - rank)
            torch.testing.assert_close(total, torch.diagonal(factor).sum())
    assert max(warm_deficits[-6:]) < 0.005 and max(warm_deficits[-6:]) < min(single_deficits[-6:])
    # a start of another width (e.g. the rank changed) falls back to a cold start
    wide_start, _ = torch.linalg.qr(torch.randn(dim, rank + 5, dtype=torch.float64))
    assert kfac_math.low_rank_eigh(factor, rank, start=wide_start) is not None


# ------------------------------------------------------------------------------------------ sketches


def test_compress_sketch_keeps_the_best_low_rank_part_of_the_second_moment() -> None:
    torch.manual_seed(13)
    low_rank = torch.randn(60, 5, dtype=torch.float64) @ torch.randn(5, 30, dtype=torch.float64)
    noisy = low_rank + 0.01 * torch.randn(60, 30, dtype=torch.float64)

    def best(rows: torch.Tensor, size: int) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(rows.T @ rows)
        return vectors[:, -size:] @ torch.diag(values[-size:]) @ vectors[:, -size:].T

    # Gram path (60 rows ≤ 4·size): the best rank-size part, exactly
    compressed = kfac_math.compress_sketch(noisy, 20)
    assert compressed.shape == (20, 30)
    torch.testing.assert_close(compressed.T @ compressed, best(noisy, 20))
    # randomized path (60 > 4·size): exact when the rows' rank fits the range finder, close otherwise
    compressed = kfac_math.compress_sketch(low_rank, 8)
    assert compressed.shape == (8, 30)
    torch.testing.assert_close(compressed.T @ compressed, low_rank.T @ low_rank)
    compressed = kfac_math.compress_sketch(noisy, 8)
    error = (compressed.T @ compressed - best(noisy, 8)).norm() / best(noisy, 8).norm()
    assert error < 1e-4
    assert kfac_math.compress_sketch(noisy, 60) is noisy  # nothing to drop


def test_sketch_low_rank_eigh_is_exact_for_an_exact_sketch_and_spreads_the_dropped_trace() -> None:
    torch.manual_seed(14)
    sketch = torch.randn(6, 20, dtype=torch.float64)
    factor = sketch.T @ sketch
    exact = kfac_math.sketch_low_rank_eigh(sketch, torch.diagonal(factor).sum(), 20, rank=10)
    assert exact is not None
    values, vectors, residual = exact
    # 6 positive directions (rank 6 < 10): they are exact, the residual 0
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, factor)
    assert float(residual) == pytest.approx(0.0, abs=1e-10)
    # its zero columns (4 Gram directions without an eigenvector) count with the isotropic rest: the
    # preconditioner still solves (Â ⊗ Ĝ + λI) exactly, here with the extra trace spread over the rest
    spread = kfac_math.sketch_low_rank_eigh(sketch, torch.diagonal(factor).sum() + 2.0, 20, rank=10)
    assert spread is not None and int((spread.eigenvectors.norm(dim=0) > 0).sum()) == 6
    approximated = factor + float(spread.residual) * (
        torch.eye(20, dtype=torch.float64) - spread.eigenvectors @ spread.eigenvectors.T
    )
    gradient_factor = random_spd(3).double()
    values_g, vectors_g = torch.linalg.eigh(gradient_factor)
    gradient = LowRankEigen(values_g, vectors_g, torch.zeros((), dtype=torch.float64))
    grad = torch.randn(3, 20, dtype=torch.float64)
    torch.testing.assert_close(
        kfac_math.low_rank_precondition(grad, spread, gradient, 1e-2),
        dense_solve(approximated, gradient_factor, grad, 1e-2),
    )
    top = kfac_math.sketch_low_rank_eigh(sketch, torch.diagonal(factor).sum() + 14.0, 20, rank=4)
    assert top is not None
    reference = torch.linalg.eigvalsh(factor)
    torch.testing.assert_close(top.eigenvalues, reference[-4:])
    torch.testing.assert_close(top.eigenvectors.T @ top.eigenvectors, torch.eye(4, dtype=torch.float64))
    # rest: the trace beyond the top 4 (two more directions of the sketch + 14 dropped), over 16 directions
    assert float(top.residual) == pytest.approx(float(reference[:-4].sum() + 14.0) / 16)
    empty = kfac_math.sketch_low_rank_eigh(sketch[:0], torch.tensor(4.0, dtype=torch.float64), 20, rank=4)
    assert empty is not None and empty.eigenvectors.shape == (20, 0) and float(empty.residual) == 0.2
    gradient = _exact_low_rank(random_spd(3).double())
    grad = torch.randn(3, 20, dtype=torch.float64)
    torch.testing.assert_close(
        kfac_math.low_rank_precondition(grad, empty, gradient, 1e-2),
        dense_solve(0.2 * torch.eye(20, dtype=torch.float64), _dense_of(gradient), grad, 1e-2),
    )


def _exact_low_rank(factor: torch.Tensor) -> LowRankEigen:
    values, vectors = torch.linalg.eigh(factor)
    return LowRankEigen(values, vectors, torch.zeros((), dtype=factor.dtype))


def _dense_of(decomposition: LowRankEigen) -> torch.Tensor:
    return decomposition.eigenvectors @ torch.diag(decomposition.eigenvalues) @ decomposition.eigenvectors.T


def _sketch_stream(kfac: KFAC, layer: nn.Linear, updates: int, rows: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, layer.in_features, generator=generator)
    for _ in range(updates):
        x = torch.randn(rows, 6, generator=generator) @ mixing + 0.05 * torch.randn(
            rows, layer.in_features, generator=generator
        )
        target = torch.randn(rows, layer.out_features, generator=generator)
        with kfac.collect_statistics():  # a fixed regression loss: both KFACs see the same gradients
            (0.5 * (layer(x) - target).square().sum(1)).mean().backward()


def test_sketched_factor_equals_the_dense_running_factor_until_it_is_compressed() -> None:
    torch.manual_seed(15)
    layer = nn.Linear(120, 3)
    options = dict(curvature="lowrank", rank=8, factor_decay=0.9, cold_iter=2, kl_clip=None)
    dense, sketched = KFAC(layer, **options), KFAC(layer, sketch_min_dim=100, **options)
    approximation = sketched.blocks[0].approximation
    assert approximation.sketched("activation") and not approximation.sketched("gradient")
    # sketch rows ℓ = 2·(8 + 16) = 48; 4 updates of 10 rows stay below the 96 that trigger a compression
    for kfac in (dense, sketched):
        _sketch_stream(kfac, layer, updates=4, rows=10, seed=0)
    assert approximation._sketches["activation"][0].shape == (40, 121)
    torch.testing.assert_close(sketched.blocks[0].activation_factor, dense.blocks[0].activation_factor)
    torch.testing.assert_close(sketched.blocks[0].gradient_factor, dense.blocks[0].gradient_factor)
    # a deliberately wrong decay of the sketch (no √(1 − w) on the old rows) would differ here
    _, trace = approximation._sketches["activation"]
    assert float(trace) == pytest.approx(
        float(torch.diagonal(dense.blocks[0].activation_factor).sum()), rel=1e-5
    )


def test_sketched_low_rank_curvature_tracks_the_dense_low_rank_one_on_a_long_stream() -> None:
    """After many compressions the sketch keeps the top of the spectrum: the preconditioned gradient is
    close to the one from the dense factor's own low-rank approximation, and the memory is ℓ rows."""
    torch.manual_seed(16)
    layer = nn.Linear(300, 4)
    options = dict(curvature="lowrank", rank=8, kl_clip=None, update_inverses_every=1)
    dense, sketched = KFAC(layer, **options), KFAC(layer, sketch_min_dim=200, **options)
    for kfac in (dense, sketched):
        _sketch_stream(kfac, layer, updates=60, rows=10, seed=1)
    rows, _ = sketched.blocks[0].approximation._sketches["activation"]
    assert rows.shape[0] <= 2 * 48 and rows.shape[1] == 301
    assert sketched.blocks[0].approximation._factors["activation"] is None  # never held dense
    grad = torch.randn(4, 301)
    directions = []
    for kfac in (dense, sketched):
        kfac.update_curvature()
        directions.append(kfac.blocks[0].approximation.precondition(grad, damping=1e-2))
    relative = (directions[0] - directions[1]).norm() / directions[0].norm()
    assert relative < 0.02, relative
    dense_values = dense.blocks[0].approximation.activation_lowrank.eigenvalues
    sketch_values = sketched.blocks[0].approximation.activation_lowrank.eigenvalues
    torch.testing.assert_close(sketch_values[-6:], dense_values[-6:], rtol=0.02, atol=1e-4)


def test_sketched_state_round_trips_bit_for_bit_and_loads_into_a_dense_lowrank() -> None:
    torch.manual_seed(17)
    layer = nn.Linear(150, 3)
    options = dict(curvature="lowrank", rank=8, kl_clip=None)
    kfac = KFAC(layer, sketch_min_dim=100, **options)
    _sketch_stream(kfac, layer, updates=12, rows=10, seed=2)
    state = copy.deepcopy(kfac.state_dict())
    block_state = state["blocks"][kfac.blocks[0].name]
    assert block_state["activation_factor"] is None and block_state["activation_sketch"][0].shape[1] == 151
    restored = KFAC(copy.deepcopy(layer), sketch_min_dim=100, **options)
    restored.load_state_dict(state)
    for a, b in zip(
        kfac.blocks[0].approximation._sketches["activation"],
        restored.blocks[0].approximation._sketches["activation"],
        strict=True,
    ):
        assert torch.equal(a, b)
    dense = KFAC(copy.deepcopy(layer), **options)  # no sketching: the sketch is materialised
    dense.load_state_dict(state)
    torch.testing.assert_close(dense.blocks[0].activation_factor, kfac.blocks[0].activation_factor)
    back = KFAC(copy.deepcopy(layer), sketch_min_dim=100, **options)  # dense state into a sketched KFAC
    back.load_state_dict(dense.state_dict())
    torch.testing.assert_close(
        torch.diagonal(back.blocks[0].activation_factor).sum(),
        torch.diagonal(dense.blocks[0].activation_factor).sum(),
    )


def test_sketch_min_dim_is_validated() -> None:
    with pytest.raises(ValueError, match="sketch_min_dim"):
        KFAC(nn.Linear(3, 2), curvature="lowrank", sketch_min_dim=0)
    with pytest.raises(TypeError, match="sketch_min_dim must be an int"):
        KFAC(nn.Linear(3, 2), curvature="lowrank", sketch_min_dim=2.5)  # type: ignore[arg-type]
