"""K-FAC numbers against independent dense computations on tiny networks.

The references here never use acktr code: per-example activations and output gradients come from
explicit per-example forward passes and ``torch.autograd.grad``, convolution patches from explicit
slicing loops, and Fisher blocks from per-example Jacobians (``torch.func.jacrev``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acktr.curvature import KFAC, Conv2dAdapter, LinearAdapter

pytestmark = pytest.mark.usefixtures("float64_default")  # dense float64 references


def col_vec(matrix: torch.Tensor) -> torch.Tensor:
    """Column-major vec: ``(A ⊗ G) col_vec(V) = col_vec(G V A)``."""
    return matrix.T.reshape(-1)


def from_col_vec(vector: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return vector.reshape(cols, rows).T


def dense_natural_gradient(
    activation: torch.Tensor, gradient: torch.Tensor, grad_matrix: torch.Tensor, damping: float
) -> torch.Tensor:
    """``(A ⊗ G + λI)⁻¹ vec(∇W)`` with the dense Kronecker product."""
    fisher = torch.kron(activation, gradient)
    rhs = col_vec(grad_matrix)
    solution = torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0]), rhs)
    return from_col_vec(solution, *grad_matrix.shape)


def weight_bias_grad(layer: nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.grad.reshape(layer.weight.shape[0], -1), layer.bias.grad[:, None]], 1)


def with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, torch.ones(rows.shape[0], 1)], 1)


def explicit_patches(image: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """All patches of one ``(C, H, W)`` image by slicing loops: ``(Oh*Ow, C*kh*kw)`` row-major positions."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = F.pad(image, (pw, pw, ph, ph))
    height, width = padded.shape[1:]
    rows = []
    for top in range(0, height - dh * (kh - 1), sh):
        for left in range(0, width - dw * (kw - 1), sw):
            patch = padded[:, top : top + dh * (kh - 1) + 1 : dh, left : left + dw * (kw - 1) + 1 : dw]
            rows.append(patch.reshape(-1))
    return torch.stack(rows)


# --------------------------------------------------------------------------- MLP


def test_mlp_natural_gradient_matches_dense_kronecker_solve() -> None:
    torch.manual_seed(0)
    batch, d_in, hidden, classes, damping = 7, 4, 5, 3, 0.03
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    x = torch.randn(batch, d_in)
    labels = torch.randint(0, classes, (batch,))
    with torch.no_grad():
        sampled = torch.distributions.Categorical(logits=model(x)).sample()

    kfac = KFAC(model, factor_decay=0.0, kl_clip=None, damping=damping, update_inverses_every=1)
    with kfac.collect_statistics():
        F.cross_entropy(model(x), sampled).backward()
    model.zero_grad()
    F.cross_entropy(model(x), labels).backward()
    raw_grads = [weight_bias_grad(model[0]).clone(), weight_bias_grad(model[2]).clone()]
    kfac.precondition()

    # Independent reference: per-example forward written out by hand.
    first, second = model[0], model[2]
    activations: list[list[torch.Tensor]] = [[], []]
    output_grads: list[list[torch.Tensor]] = [[], []]
    for b in range(batch):
        s1 = x[b] @ first.weight.T + first.bias
        a1 = torch.tanh(s1)
        s2 = a1 @ second.weight.T + second.bias
        log_likelihood = torch.log_softmax(s2, dim=0)[sampled[b]]
        g1, g2 = torch.autograd.grad(log_likelihood, [s1, s2])
        activations[0].append(torch.cat([x[b], torch.ones(1)]))
        activations[1].append(torch.cat([a1.detach(), torch.ones(1)]))
        output_grads[0].append(g1)
        output_grads[1].append(g2)
    for index, layer in enumerate((first, second)):
        a_rows = torch.stack(activations[index])
        g_rows = torch.stack(output_grads[index])
        activation_factor = a_rows.T @ a_rows / batch
        gradient_factor = g_rows.T @ g_rows / batch
        block = kfac.blocks[index]
        torch.testing.assert_close(block.activation_factor, activation_factor, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(block.gradient_factor, gradient_factor, rtol=1e-10, atol=1e-12)
        expected = dense_natural_gradient(activation_factor, gradient_factor, raw_grads[index], damping)
        torch.testing.assert_close(weight_bias_grad(layer), expected, rtol=1e-5, atol=1e-10)


def test_float32_model_matches_dense_reference_to_1e5_relative() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).float()
    x = torch.randn(16, 3, dtype=torch.float32)
    kfac = KFAC(model, factor_decay=0.0, kl_clip=None, damping=0.1)
    with kfac.collect_statistics():
        out = model(x)
        target = out.detach() + torch.randn_like(out)  # Gaussian sample around the prediction
        (0.5 * (out - target).square().sum(1).mean()).backward()
    model.zero_grad()
    model(x).square().mean().backward()
    raw = weight_bias_grad(model[2]).double()
    kfac.precondition()
    block = kfac.blocks[1]
    assert block.activation_factor.dtype == torch.float32
    expected = dense_natural_gradient(
        block.activation_factor.double(), block.gradient_factor.double(), raw, 0.1
    )
    torch.testing.assert_close(weight_bias_grad(model[2]).double(), expected, rtol=1e-5, atol=1e-7)


def _replicated_gaussian_batch(inputs: torch.Tensor, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each input repeated once per output unit k, with target offset ``sqrt(d)·e_k``.

    For a unit-variance Gaussian output the sampled gradients are then ``±sqrt(d)·e_k``, whose
    second moment is exactly the identity: the expectation over samples is computed exactly.
    """
    repeated = inputs.repeat_interleave(outputs, dim=0)
    offsets = torch.eye(outputs).repeat(inputs.shape[0], 1) * outputs**0.5
    return repeated, offsets


def test_linear_gaussian_kronecker_product_equals_exact_fisher() -> None:
    torch.manual_seed(2)
    batch, d_in, d_out = 5, 3, 2
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in)
    kfac = KFAC(layer, factor_decay=0.0, kl_clip=None)
    repeated, offsets = _replicated_gaussian_batch(x, d_out)
    with kfac.collect_statistics():
        out = layer(repeated)
        target = out.detach() + offsets
        (0.5 * (out - target).square().sum(1).mean()).backward()
    block = kfac.blocks[0]
    kfac_fisher = torch.kron(block.activation_factor, block.gradient_factor)

    # Exact Fisher of y ~ N(Wx + b, I): (1/B) Σ_b J_bᵀ J_b with J_b = ∂ s_b / ∂ col_vec([W, b]).
    def output_of(theta: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        matrix = from_col_vec(theta, d_out, d_in + 1)
        return matrix[:, :d_in] @ example + matrix[:, d_in]

    theta = col_vec(torch.cat([layer.weight, layer.bias[:, None]], 1).detach())
    exact = sum((lambda j: j.T @ j)(torch.func.jacrev(output_of)(theta, x[b])) for b in range(batch)) / batch
    torch.testing.assert_close(kfac_fisher, exact, rtol=1e-10, atol=1e-12)


def test_least_squares_natural_gradient_step_solves_the_problem() -> None:
    """Gaussian likelihood: Fisher = Gauss-Newton = Hessian, so one undamped step with lr 1 is Newton's."""
    torch.manual_seed(3)
    batch, d_in, d_out = 20, 4, 3
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in)
    y = torch.randn(batch, d_out)
    kfac = KFAC(layer, factor_decay=0.0, kl_clip=None, damping=1e-10, lr=1.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    repeated, offsets = _replicated_gaussian_batch(x, d_out)
    with kfac.collect_statistics():
        out = layer(repeated)
        (0.5 * (out - (out.detach() + offsets)).square().sum(1).mean()).backward()
    layer.zero_grad()
    (0.5 * (layer(x) - y).square().sum(1).mean()).backward()
    kfac.precondition()
    optimizer.step()
    solution = torch.linalg.lstsq(with_ones(x), y).solution.T
    torch.testing.assert_close(
        torch.cat([layer.weight, layer.bias[:, None]], 1), solution, rtol=1e-6, atol=1e-8
    )


# --------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize(
    ("stride", "padding", "dilation"), [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (1, 0), (1, 2))]
)
def test_conv2d_factors_equal_explicit_unfolding_loops(stride, padding, dilation) -> None:
    torch.manual_seed(4)
    batch = 3
    conv = nn.Conv2d(2, 3, kernel_size=(3, 2), stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(batch, 2, 7, 6)
    kfac = KFAC(conv, factor_decay=0.0, kl_clip=None, damping=0.05)
    with kfac.collect_statistics():
        out = conv(x)
        target = out.detach() + torch.randn_like(out)
        (0.5 * (out - target).square().sum((1, 2, 3)).mean()).backward()
    block = kfac.blocks[0]
    assert isinstance(block.layer, Conv2dAdapter)

    s = conv(x)
    patches_per_image = [explicit_patches(x[b], conv) for b in range(batch)]
    positions = patches_per_image[0].shape[0]
    assert positions == s.shape[2] * s.shape[3]
    rows = with_ones(torch.cat(patches_per_image))
    activation_expected = rows.T @ rows / (batch * positions)
    # per-example output gradients of the same sampled loss, one example at a time
    gradient_expected = torch.zeros(3, 3)
    for b in range(batch):
        s_b = conv(x[b : b + 1])
        log_likelihood = -0.5 * (s_b - target[b : b + 1]).square().sum()
        (g,) = torch.autograd.grad(log_likelihood, s_b)
        per_position = g[0].permute(1, 2, 0).reshape(-1, 3)
        gradient_expected += per_position.T @ per_position
    gradient_expected /= batch
    torch.testing.assert_close(block.activation_factor, activation_expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(block.gradient_factor, gradient_expected, rtol=1e-10, atol=1e-12)

    conv.zero_grad()
    conv(x).pow(2).mean().backward()
    raw = weight_bias_grad(conv).clone()
    kfac.precondition()
    expected = dense_natural_gradient(activation_expected, gradient_expected, raw, 0.05)
    torch.testing.assert_close(weight_bias_grad(conv), expected, rtol=1e-5, atol=1e-10)


def test_small_cnn_natural_gradient_matches_dense() -> None:
    torch.manual_seed(5)
    batch, classes, damping = 4, 3, 0.02
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, classes)
    )
    x = torch.randn(batch, 2, 6, 6)
    with torch.no_grad():
        sampled = torch.distributions.Categorical(logits=model(x)).sample()
    kfac = KFAC(model, factor_decay=0.0, kl_clip=None, damping=damping)
    with kfac.collect_statistics():
        F.cross_entropy(model(x), sampled).backward()
    model.zero_grad()
    F.cross_entropy(model(x), (sampled + 1) % classes).backward()
    raw_conv, raw_fc = weight_bias_grad(model[0]).clone(), weight_bias_grad(model[3]).clone()
    kfac.precondition()

    conv, fc = model[0], model[3]
    conv_rows, fc_rows = [], []
    conv_g = torch.zeros(3, 3)
    fc_g = torch.zeros(classes, classes)
    for b in range(batch):
        s_conv = conv(x[b : b + 1])
        hidden = torch.relu(s_conv).flatten(1)
        s_fc = hidden @ fc.weight.T + fc.bias
        log_likelihood = torch.log_softmax(s_fc, 1)[0, sampled[b]]
        g_conv, g_fc = torch.autograd.grad(log_likelihood, [s_conv, s_fc])
        conv_rows.append(explicit_patches(x[b], conv))
        fc_rows.append(hidden.detach()[0])
        per_position = g_conv[0].permute(1, 2, 0).reshape(-1, 3)
        conv_g += per_position.T @ per_position
        fc_g += torch.outer(g_fc[0], g_fc[0])
    conv_patch_rows = with_ones(torch.cat(conv_rows))
    conv_a = conv_patch_rows.T @ conv_patch_rows / conv_patch_rows.shape[0]
    fc_a_rows = with_ones(torch.stack(fc_rows))
    fc_a = fc_a_rows.T @ fc_a_rows / batch
    expected_conv = dense_natural_gradient(conv_a, conv_g / batch, raw_conv, damping)
    expected_fc = dense_natural_gradient(fc_a, fc_g / batch, raw_fc, damping)
    torch.testing.assert_close(weight_bias_grad(conv), expected_conv, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(weight_bias_grad(fc), expected_fc, rtol=1e-5, atol=1e-10)


def test_kfc_kronecker_product_equals_true_fisher_when_assumptions_hold() -> None:
    """Unit Gaussian at every output position: derivatives are independent of activations, spatially
    uncorrelated and homogeneous, so KFC's ``A ⊗ G`` must equal the exact Fisher block."""
    torch.manual_seed(6)
    batch, c_in, c_out = 2, 2, 2
    conv = nn.Conv2d(c_in, c_out, 2, stride=1, padding=0)
    x = torch.randn(batch, c_in, 3, 3)
    oh = ow = 2
    positions = oh * ow
    # Exact expectation over samples: each image repeated once per (position, channel) pair, with a
    # gradient only at that pair of magnitude sqrt(positions * c_out).
    copies = positions * c_out
    repeated = x.repeat_interleave(copies, dim=0)
    offsets = torch.zeros(batch * copies, c_out, oh, ow)
    for b in range(batch):
        for k in range(copies):
            channel, position = k % c_out, k // c_out
            offsets[b * copies + k, channel, position // ow, position % ow] = copies**0.5
    kfac = KFAC(conv, factor_decay=0.0, kl_clip=None)
    with kfac.collect_statistics():
        out = conv(repeated)
        (0.5 * (out - (out.detach() + offsets)).square().sum((1, 2, 3)).mean()).backward()
    block = kfac.blocks[0]
    kfac_fisher = torch.kron(block.activation_factor, block.gradient_factor)

    d_in = c_in * 2 * 2

    def outputs_of(theta: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        matrix = from_col_vec(theta, c_out, d_in + 1)
        weight = matrix[:, :d_in].reshape(c_out, c_in, 2, 2)
        return F.conv2d(image[None], weight, matrix[:, d_in]).reshape(-1)

    theta = col_vec(weight_bias_grad_like(conv))
    exact = sum((lambda j: j.T @ j)(torch.func.jacrev(outputs_of)(theta, x[b])) for b in range(batch)) / batch
    torch.testing.assert_close(kfac_fisher, exact, rtol=1e-10, atol=1e-12)


def weight_bias_grad_like(layer: nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.reshape(layer.weight.shape[0], -1), layer.bias[:, None]], 1).detach()


def test_one_by_one_convolution_on_one_pixel_equals_linear() -> None:
    torch.manual_seed(7)
    linear = nn.Linear(4, 3)
    conv = nn.Conv2d(4, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        conv.bias.copy_(linear.bias)
    x = torch.randn(6, 4)
    noise = torch.randn(6, 3)
    results = []
    for layer, inputs in ((linear, x), (conv, x[:, :, None, None])):
        kfac = KFAC(layer, factor_decay=0.0, kl_clip=None, damping=0.01)
        with kfac.collect_statistics():
            out = layer(inputs).reshape(6, 3)
            (0.5 * (out - (out.detach() + noise)).square().sum(1).mean()).backward()
        layer.zero_grad()
        layer(inputs).reshape(6, 3).sin().sum().backward()
        kfac.precondition()
        block = kfac.blocks[0]
        results.append((block.activation_factor, block.gradient_factor, weight_bias_grad(layer)))
    assert isinstance(kfac.blocks[0].layer, Conv2dAdapter)
    for linear_value, conv_value in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(conv_value, linear_value, rtol=1e-12, atol=1e-14)


def test_sequence_inputs_to_linear_follow_the_kfc_convention() -> None:
    """Linear on (B, T, d): A averages over all B·T rows, G sums over positions per example."""
    torch.manual_seed(8)
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 5, 3)
    kfac = KFAC(layer, factor_decay=0.0, kl_clip=None)
    with kfac.collect_statistics():
        out = layer(x)
        target = out.detach() + torch.randn_like(out)
        (0.5 * (out - target).square().sum((1, 2)).mean()).backward()
    block = kfac.blocks[0]
    assert isinstance(block.layer, LinearAdapter)
    rows = with_ones(x.reshape(-1, 3))
    torch.testing.assert_close(block.activation_factor, rows.T @ rows / 20)
    grads = (layer(x) - target).detach()  # per-example gradient of -log-likelihood at each position
    expected_g = torch.einsum("btd,bte->de", grads, grads) / 4
    torch.testing.assert_close(block.gradient_factor, expected_g)


def test_cholesky_factored_damping_matches_formula() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(10, 3)
    damping = 0.04
    kfac = KFAC(model, factor_decay=0.0, kl_clip=None, damping=damping, inverse_method="cholesky")
    with kfac.collect_statistics():
        out = model(x)
        (0.5 * (out - (out.detach() + torch.randn_like(out))).square().sum(1).mean()).backward()
    model.zero_grad()
    model(x).sum().backward()
    raw = weight_bias_grad(model[2]).clone()
    kfac.precondition()
    block = kfac.blocks[1]
    a, g = block.activation_factor, block.gradient_factor
    pi = torch.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
    expected = (
        torch.linalg.inv(g + damping**0.5 / pi * torch.eye(2))
        @ raw
        @ torch.linalg.inv(a + pi * damping**0.5 * torch.eye(5))
    )
    torch.testing.assert_close(weight_bias_grad(model[2]), expected, rtol=1e-8, atol=1e-10)


def test_conv2d_padding_same_matches_explicit_padding() -> None:
    torch.manual_seed(10)
    same = nn.Conv2d(2, 3, 3, padding="same")
    explicit = nn.Conv2d(2, 3, 3, padding=1)
    explicit.load_state_dict(same.state_dict())
    x = torch.randn(2, 2, 5, 5)
    noise = torch.randn(2, 3, 5, 5)
    factors = []
    for conv in (same, explicit):
        kfac = KFAC(conv, factor_decay=0.0, kl_clip=None)
        with kfac.collect_statistics():
            out = conv(x)
            (0.5 * (out - (out.detach() + noise)).square().sum((1, 2, 3)).mean()).backward()
        factors.append((kfac.blocks[0].activation_factor, kfac.blocks[0].gradient_factor))
    torch.testing.assert_close(factors[0][0], factors[1][0])
    torch.testing.assert_close(factors[0][1], factors[1][1])


def test_unbatched_linear_input_is_one_example() -> None:
    layer = nn.Linear(3, 2)
    x = torch.randn(3)
    kfac = KFAC(layer, factor_decay=0.0, kl_clip=None)
    with kfac.collect_statistics():
        out = layer(x)
        (0.5 * (out - (out.detach() + torch.tensor([1.0, -2.0]))).square().sum()).backward()
    block = kfac.blocks[0]
    a_bar = torch.cat([x, torch.ones(1)])
    torch.testing.assert_close(block.activation_factor, torch.outer(a_bar, a_bar))
    # g = [-1, 2] (batch size 1), so G = g gᵀ
    torch.testing.assert_close(block.gradient_factor, torch.tensor([[1.0, -2.0], [-2.0, 4.0]]))
