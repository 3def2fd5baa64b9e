"""Pure K-FAC math: factor statistics, eigendecompositions, preconditioning and trust-region scaling.

Every function here is stateless and works on any device and dtype. Shape conventions:

- ``N``: number of rows of a statistics batch (examples, or examples x positions for KFC).
- ``d_in``: layer input size (``C * kh * kw`` for a convolution); ``d_in + 1`` with the homogeneous
  coordinate that carries the bias (the bias is the LAST column of the weight matrix).
- ``d_out``: layer output size (output channels for a convolution).
- Weight gradients are matrices of shape ``(d_out, d_in [+1])``; with column-major ``vec``,
  ``(A ⊗ G) vec(V) = vec(G V A)`` for symmetric ``A`` and ``G``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Eigendecomposition(NamedTuple):
    """``factor = eigenvectors @ diag(eigenvalues) @ eigenvectors.T`` with ``eigenvalues >= 0``.

    Shapes: ``eigenvalues (d,)``, ``eigenvectors (d, d)`` (columns are eigenvectors).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor


def second_moment(rows: Tensor, *, with_ones: bool, count: int | None = None) -> Tensor:
    """Uncentred second moment ``(1/count) Σ_n ā_n ā_nᵀ`` of the rows of ``rows``.

    Args:
        rows: ``(N, d)``.
        with_ones: use ``ā = [a, 1]`` (the homogeneous coordinate that carries the bias).
        count: normaliser; defaults to ``N``.

    Returns:
        ``(d + with_ones, d + with_ones)`` symmetric matrix.
    """
    count = rows.shape[0] if count is None else count
    if not with_ones:
        return torch.mm(rows.T, rows) / count
    num_rows, dim = rows.shape
    if num_rows <= dim:
        # Few wide rows (a linear layer at small batch): appending the ones column is the cheaper copy.
        padded = torch.cat([rows, rows.new_ones(num_rows, 1)], dim=1)
        return torch.mm(padded.T, padded) / count
    # Many rows: fill the border of the (d+1)² result instead of copying the rows.
    return _with_homogeneous_border(rows.T @ rows, rows.sum(dim=0), num_rows).div_(count)


def _with_homogeneous_border(moment: Tensor, column_sum: Tensor, num_rows: int) -> Tensor:
    """``Σ ā āᵀ`` for ``ā = [a, 1]`` from ``Σ a aᵀ`` ``(d, d)``, ``Σ a`` ``(d,)`` and the row count."""
    dim = moment.shape[0]
    result = moment.new_empty((dim + 1, dim + 1))
    result[:dim, :dim] = moment
    result[:dim, dim] = column_sum
    result[dim, :dim] = column_sum
    result[dim, dim] = num_rows
    return result


def patch_second_moment(patches: Tensor, *, with_ones: bool) -> Tensor:
    """``second_moment`` of unfolded convolution patches without transposing them into rows.

    Args:
        patches: ``(B, C*kh*kw, P)`` as returned by ``F.unfold`` (``P`` output positions).

    Returns:
        ``(C*kh*kw + with_ones,)*2``, averaged over the ``B*P`` (example, position) rows.
    """
    batch, _, positions = patches.shape
    count = batch * positions
    moment = torch.bmm(patches, patches.transpose(1, 2)).sum(dim=0)
    if not with_ones:
        return moment.div_(count)
    return _with_homogeneous_border(moment, patches.sum(dim=(0, 2)), count).div_(count)


def conv2d_unfold(
    inputs: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """``F.unfold`` of a convolution's input: ``(B, C, H, W)`` → ``(B, C*kh*kw, Oh*Ow)``."""
    return F.unfold(inputs, kernel_size, dilation=dilation, padding=padding, stride=stride)


def linear_activation_factor(inputs: Tensor, *, has_bias: bool) -> Tensor:
    """K-FAC ``A = E[ā āᵀ]`` for a linear layer, averaged over all rows.

    Args:
        inputs: ``(B, ..., d_in)``; extra leading dimensions (sequence positions) are rows too.

    Returns:
        ``(d_in + has_bias, d_in + has_bias)``.
    """
    return second_moment(inputs.reshape(-1, inputs.shape[-1]), with_ones=has_bias)


def gradient_factor(output_grads: Tensor, *, batch_size: int, grad_scale: float) -> Tensor:
    """K-FAC ``G = E_b[Σ_positions g gᵀ]``: per-example second moment, summed over positions.

    ``g`` is the gradient of the example's sampled log-likelihood with respect to the layer output;
    ``output_grads`` are the gradients backprop delivered, so ``g = grad_scale * output_grads``
    (``grad_scale = B`` undoes the ``1/B`` of a loss that is a mean over the batch).

    Args:
        output_grads: ``(B * P, d_out)`` rows, ``P`` positions per example (1 for a plain linear layer).
        batch_size: ``B``, the number of examples the expectation is over.
        grad_scale: factor turning backprop gradients into per-example gradients.

    Returns:
        ``(d_out, d_out)``.
    """
    scaled = output_grads * grad_scale
    return (scaled.T @ scaled) / batch_size


def symmetrise(matrix: Tensor) -> Tensor:
    """``(M + Mᵀ) / 2`` for ``(d, d)`` matrices: rounding makes accumulated factors slightly asymmetric."""
    return (matrix + matrix.T) * 0.5


def _first_attempt_dtype(factor: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float64 if factor.dtype == torch.float64 else torch.float32


def safe_eigh(factor: Tensor, *, dtype: torch.dtype | None = None) -> Eigendecomposition | None:
    """Eigendecomposition of a symmetric PSD factor that never raises.

    Tries ``dtype`` (default: float32, or float64 for a float64 factor), retries in float64 if that
    raises or returns non-finite values, clamps eigenvalues at zero, and returns ``None`` if both
    attempts fail. Results are cast back to ``factor.dtype``.

    Args:
        factor: ``(d, d)`` symmetric matrix.
    """
    matrix = symmetrise(factor)
    for attempt_dtype in (_first_attempt_dtype(factor, dtype), torch.float64):
        try:
            eigenvalues, eigenvectors = torch.linalg.eigh(matrix.to(attempt_dtype))
        except (RuntimeError, torch.linalg.LinAlgError):
            continue
        # One host sync per decomposition is acceptable: decompositions are amortised.
        if bool(torch.isfinite(eigenvalues).all()) and bool(torch.isfinite(eigenvectors).all()):
            return Eigendecomposition(
                eigenvalues.clamp_min(0.0).to(factor.dtype), eigenvectors.to(factor.dtype)
            )
    return None


def eigen_precondition(
    grad_matrix: Tensor, activation: Eigendecomposition, gradient: Eigendecomposition, damping: float
) -> Tensor:
    """Natural gradient with exact Tikhonov damping: ``(A ⊗ G + λ I)⁻¹ vec(∇W)``.

    ``Δ = Q_G [ (Q_Gᵀ ∇W Q_A) / (d_G d_Aᵀ + λ) ] Q_Aᵀ``.

    Args:
        grad_matrix: ``(d_out, d_in')``.
        activation: decomposition of ``A`` ``(d_in', d_in')``.
        gradient: decomposition of ``G`` ``(d_out, d_out)``.

    Returns:
        ``(d_out, d_in')``.
    """
    inverse = inverse_eigen_scaling(gradient.eigenvalues, activation.eigenvalues, damping)
    return eigenbasis_rescale(grad_matrix, activation.eigenvectors, gradient.eigenvectors, inverse)


def eigenbasis_scaling(
    activation_rows: Tensor, gradient_rows: Tensor, activation_vectors: Tensor, gradient_vectors: Tensor
) -> Tensor:
    """EKFAC's scaling (George et al. 2018): the second moment of per-example gradients in the Kronecker-
    factored eigenbasis, ``s = E_n[(Q_Gᵀ g_n ā_nᵀ Q_A)²]`` (elementwise square), computed without forming the
    per-example gradients: ``s = (1/N) ((G_rows Q_G)²)ᵀ (A_rows Q_A)²``.

    It is the diagonal ``D`` minimising ``‖F − (Q_A ⊗ Q_G) D (Q_A ⊗ Q_G)ᵀ‖_F`` for the Fisher ``F`` of these
    examples; K-FAC's ``d_G d_Aᵀ`` is that ``D`` only when ``ā`` and ``g`` are independent.

    Args:
        activation_rows: ``(N, d_in')`` one row ``ā_n`` per example (homogeneous 1 included for a bias).
        gradient_rows: ``(N, d_out)`` the matching per-example output gradients ``g_n`` (scaled as the
            per-example loss's).
        activation_vectors: ``Q_A`` ``(d_in', d_in')``; gradient_vectors: ``Q_G`` ``(d_out, d_out)``.

    Returns:
        ``(d_out, d_in')``, non-negative.
    """
    if activation_rows.shape[0] != gradient_rows.shape[0]:
        raise ValueError(
            f"eigenbasis_scaling: {activation_rows.shape[0]} activation rows but {gradient_rows.shape[0]} "
            "gradient rows; the rows must pair up one per example"
        )
    count = max(activation_rows.shape[0], 1)
    rotated_activations = (activation_rows @ activation_vectors).square()  # (N, d_in')
    rotated_gradients = (gradient_rows @ gradient_vectors).square()  # (N, d_out)
    return rotated_gradients.T @ rotated_activations / count


def eigenbasis_precondition(
    grad_matrix: Tensor, activation_vectors: Tensor, gradient_vectors: Tensor, scaling: Tensor, damping: float
) -> Tensor:
    """``Δ = Q_G [ (Q_Gᵀ ∇W Q_A) / (s + λ) ] Q_Aᵀ``: the damped inverse of ``(Q_A ⊗ Q_G) diag(vec s) (Q_A ⊗
    Q_G)ᵀ`` applied to ``∇W`` (EKFAC; with ``s = d_G d_Aᵀ`` it is :func:`eigen_precondition`).

    Args:
        grad_matrix: ``(..., d_out, d_in')``; vectors ``Q_A`` ``(d_in', d_in')``, ``Q_G`` ``(d_out, d_out)``;
            scaling ``s`` ``(d_out, d_in')``.

    Returns:
        ``(..., d_out, d_in')``.
    """
    inverse = (scaling + damping).reciprocal()
    return eigenbasis_rescale(grad_matrix, activation_vectors, gradient_vectors, inverse)


def inverse_eigen_scaling(
    gradient_values: Tensor, activation_values: Tensor, damping: float, power: float = 1.0
) -> Tensor:
    """``(d_G d_Aᵀ + λ)^{-power}`` ``(d_out, d_in')``: the divisor of :func:`eigen_precondition` (power 1)
    and of the posterior sampler (power ½), for a caller that keeps it between refreshes."""
    return (torch.outer(gradient_values, activation_values) + damping).pow(-power)


def eigenbasis_rescale(
    grad_matrix: Tensor, activation_vectors: Tensor, gradient_vectors: Tensor, inverse_scaling: Tensor
) -> Tensor:
    """``Q_G [(Q_Gᵀ ∇W Q_A) ⊙ S] Q_Aᵀ`` for a precomputed ``S`` ``(d_out, d_in')`` (e.g.
    :func:`inverse_eigen_scaling`): :func:`eigenbasis_precondition` without recomputing the divisor.

    Args:
        grad_matrix: ``(..., d_out, d_in')``; vectors ``Q_A`` ``(d_in', d_in')``, ``Q_G`` ``(d_out, d_out)``.

    Returns:
        ``(..., d_out, d_in')``.
    """
    rotated = gradient_vectors.T @ grad_matrix @ activation_vectors
    return gradient_vectors @ (rotated * inverse_scaling) @ activation_vectors.T


def eigenbasis_posterior_sample(
    noise: Tensor, activation_vectors: Tensor, gradient_vectors: Tensor, scaling: Tensor, damping: float
) -> Tensor:
    """``ΔW`` with ``Cov(vec ΔW) = ((Q_A ⊗ Q_G) diag(vec s) (Q_A ⊗ Q_G)ᵀ + γI)⁻¹``:
    ``Q_G [E ⊘ sqrt(s + γ)] Q_Aᵀ`` for white noise ``E`` ``(..., d_out, d_in')``."""
    return gradient_vectors @ (noise * (scaling + damping).rsqrt()) @ activation_vectors.T


def factored_damping_pi(activation_factor: Tensor, gradient_factor_: Tensor) -> Tensor:
    """``π = sqrt((tr A / dim A) / (tr G / dim G))`` (Martens & Grosse 2015, §6.3); 0-dim tensor."""
    tiny = torch.finfo(activation_factor.dtype).tiny
    activation_trace = torch.diagonal(activation_factor).mean().clamp_min(tiny)
    gradient_trace = torch.diagonal(gradient_factor_).mean().clamp_min(tiny)
    return torch.sqrt(activation_trace / gradient_trace)


def safe_damped_inverse(
    factor: Tensor, damping: Tensor | float, *, dtype: torch.dtype | None = None
) -> Tensor | None:
    """``(factor + damping I)⁻¹`` by Cholesky; float64 retry; ``None`` if both fail.

    Args:
        factor: ``(d, d)`` symmetric PSD.
    """
    matrix = symmetrise(factor)
    for attempt_dtype in (_first_attempt_dtype(factor, dtype), torch.float64):
        damped = matrix.to(attempt_dtype)
        damped = damped + torch.as_tensor(damping, dtype=attempt_dtype, device=damped.device) * torch.eye(
            damped.shape[0], dtype=attempt_dtype, device=damped.device
        )
        try:
            cholesky, info = torch.linalg.cholesky_ex(damped)
        except RuntimeError:  # cholesky_ex reports failures in info, but a backend may still raise
            continue
        if int(info) != 0:
            continue
        inverse = torch.cholesky_inverse(cholesky)
        if bool(torch.isfinite(inverse).all()):
            return inverse.to(factor.dtype)
    return None


def factored_precondition(
    grad_matrix: Tensor, activation_inverse: Tensor, gradient_inverse: Tensor
) -> Tensor:
    """``(G + (√λ/π) I)⁻¹ ∇W (A + π√λ I)⁻¹`` given the two damped inverses.

    Args:
        grad_matrix: ``(d_out, d_in')``; inverses ``(d_in', d_in')`` and ``(d_out, d_out)``.
    """
    return gradient_inverse @ grad_matrix @ activation_inverse


def trust_region_scale(natural_grad_dot: Tensor, lr: float, kl_clip: float | None) -> Tensor:
    """ACKTR's step scale ``ν = min(1, sqrt(δ / (η² Σ⟨Δ, g⟩)))`` as a 0-dim tensor (no host sync).

    With update ``η ν Δ`` the quadratic model of the KL is ``½ η² ν² ΔᵀF̂Δ ≈ ½ η² ν² ⟨Δ, g⟩``, so
    ``ν`` caps the predicted KL at ``δ/2`` (baselines' convention: the ½ is absorbed into δ).
    ``kl_clip=None`` disables the trust region (ν = 1).
    """
    if kl_clip is None:
        return torch.ones((), dtype=natural_grad_dot.dtype, device=natural_grad_dot.device)
    tiny = torch.finfo(natural_grad_dot.dtype).tiny
    quadratic = (lr * lr) * natural_grad_dot.clamp_min(tiny)
    return torch.sqrt(kl_clip / quadratic).clamp(max=1.0)


# ------------------------------------------------------------------------------------------ low rank


class LowRankEigen(NamedTuple):
    """``factor ≈ U diag(values) Uᵀ + residual (I − U Uᵀ)``: the top-k eigenpairs plus an isotropic rest.

    Shapes: ``eigenvalues (k,)``, ``eigenvectors (d, k)`` (orthonormal columns), ``residual`` 0-dim (the mean
    of the remaining ``d − k`` eigenvalues; 0 when ``k = d``).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residual: Tensor

    @property
    def full_rank(self) -> bool:
        return self.eigenvectors.shape[1] == self.eigenvectors.shape[0]


def low_rank_eigh(
    factor: Tensor,
    rank: int,
    *,
    oversample: int = 16,
    iterations: int | None = None,
    start: Tensor | None = None,
) -> LowRankEigen | None:
    """Top-``rank`` eigenpairs of a symmetric PSD ``(d, d)`` factor by randomized subspace iteration
    (Halko, Martinsson & Tropp 2011), the rest of the spectrum as its mean (trace-preserving).

    Cost ``O(d² (rank + oversample) (iterations + 2))`` instead of eigh's ``O(d³)``; for ``rank + oversample
    >= d`` it is an exact :func:`safe_eigh`. Returns None when the computation fails (non-finite values).

    Args:
        start: ``(d, m)`` orthonormal columns to start from (``m <= rank``), e.g. the eigenvectors of the
            previous refresh of a slowly changing running factor; random columns fill the basis up to
            ``rank + oversample``. Successive refreshes then continue one subspace iteration, so a single
            product per refresh tracks the top eigenspace (``iterations`` defaults to 0 with ``start``,
            2 without).
    """
    dim = factor.shape[0]
    if rank + oversample >= dim:
        exact = safe_eigh(factor)
        if exact is None:
            return None
        zero = torch.zeros((), dtype=factor.dtype, device=factor.device)
        return LowRankEigen(exact.eigenvalues, exact.eigenvectors, zero)
    # Only products with the factor are taken, so its rounding-level asymmetry is harmless: no symmetrised
    # copy of a wide factor (a transposed pass over d² entries that costs as much as a product).
    matrix = factor
    columns = rank + oversample
    if start is not None and (start.shape[0] != dim or start.shape[1] > rank):
        start = None  # another factor's basis (e.g. a changed rank): start cold
    if iterations is None:
        iterations = 2 if start is None else 0
    try:
        basis = torch.randn(
            dim, columns - (0 if start is None else start.shape[1]), dtype=matrix.dtype, device=matrix.device
        )
        if start is not None:
            basis = torch.cat([start.to(matrix.dtype), basis], dim=1)
        basis, _ = torch.linalg.qr(matrix @ basis)
        for _ in range(iterations):
            basis, _ = torch.linalg.qr(matrix @ basis)
        small = symmetrise(basis.T @ matrix @ basis)
        values, vectors = torch.linalg.eigh(small)
    except (RuntimeError, torch.linalg.LinAlgError):
        return None
    values, vectors = values[-rank:].clamp_min(0.0), basis @ vectors[:, -rank:]
    residual = ((torch.diagonal(matrix).sum() - values.sum()) / (dim - rank)).clamp_min(0.0)
    if not (bool(torch.isfinite(values).all()) and bool(torch.isfinite(vectors).all())):
        return None
    return LowRankEigen(values, vectors, residual)


def compress_sketch(rows: Tensor, size: int) -> Tensor:
    """Rows ``B'`` ``(min(size, m), d)`` whose ``B'ᵀB'`` is the best rank-``size`` approximation of ``RᵀR``
    (``R = rows`` ``(m, d)``): ``B' = U_sizeᵀ R`` with ``U_size`` the top eigenvectors of the Gram matrix
    ``R Rᵀ``, i.e. ``R`` projected on its top left singular vectors. ``B'ᵀB' ⪯ RᵀR``; what is dropped is the
    tail of the spectrum (a caller that needs the trace keeps it apart).

    Cost ``O(m² d)`` through the Gram matrix for ``m <= 4·size`` rows; a taller ``R`` is first restricted to
    the row space found by a randomized range finder with one power iteration (``O(m d size)``), exact when
    ``rank R <= size + 16``. Computed in float64 for a float32 ``R`` (the Gram squares the condition).
    """
    count = rows.shape[0]
    if count <= size:
        return rows
    work = rows.to(torch.float64) if rows.dtype != torch.float64 else rows
    if count > 4 * size and rows.shape[1] > size:
        # range of Rᵀ (the row space) from one power iteration of RᵀR, then R restricted to it
        probe = torch.randn(rows.shape[1], size + 16, dtype=work.dtype, device=work.device)
        basis, _ = torch.linalg.qr(work.T @ (work @ probe))  # Q (d, s)
        reduced = work @ basis  # R Q (m, s): (R Q Qᵀ)ᵀ(R Q Qᵀ) = Q (QᵀRᵀR Q) Qᵀ
        values, vectors = torch.linalg.eigh(reduced.T @ reduced)  # (s,), (s, s)
        top = vectors[:, -size:]
        return (values[-size:].clamp_min(0.0).sqrt()[:, None] * (basis @ top).T).to(rows.dtype)
    gram = work @ work.T  # (m, m)
    _, vectors = torch.linalg.eigh(symmetrise(gram))
    return (vectors[:, -size:].T @ work).to(rows.dtype)


def sketch_low_rank_eigh(sketch: Tensor, trace: Tensor, dim: int, rank: int) -> LowRankEigen | None:
    """:class:`LowRankEigen` of a factor kept as a sketch: ``F ≈ BᵀB`` plus what the sketch dropped,
    spread isotropically.

    The top-``rank`` eigenpairs of ``BᵀB`` (from the ``(m, m)`` Gram matrix ``B Bᵀ = W Λ Wᵀ``:
    eigenvectors ``Bᵀ W Λ^{-1/2}``), and the residual ``(tr F − Σ top values) / (d − rank)``: the mean of
    the remaining eigenvalues of a factor whose exact trace is ``trace`` (trace-preserving, as
    :func:`low_rank_eigh`). A Gram direction with a zero eigenvalue has no eigenvector of ``BᵀB``: its
    column is zero and counts with the rest. When the sketch dropped nothing (``F = BᵀB``) and has at most
    ``rank`` rows, the top part is exact and the residual 0.

    Args:
        sketch: ``B`` ``(m, d)``; trace: ``tr F`` (0-dim); dim: ``d``; rank: eigenpairs kept (``< d``).

    Returns:
        ``LowRankEigen`` with ``min(rank, m)`` pairs, or None for non-finite values.
    """
    work = sketch.to(torch.float64)
    keep = min(rank, sketch.shape[0])
    if keep == 0:  # an empty sketch: all of the trace is the isotropic rest
        return LowRankEigen(
            sketch.new_zeros(0), sketch.new_zeros(dim, 0), (trace / dim).clamp_min(0.0).to(sketch.dtype)
        )
    try:
        values, vectors = torch.linalg.eigh(symmetrise(work @ work.T))
    except (RuntimeError, torch.linalg.LinAlgError):
        return None
    values, vectors = values[-keep:].clamp_min(0.0), vectors[:, -keep:]
    # a zero direction of the Gram has no eigenvector of BᵀB: give it a zero column (value 0)
    positive = values > values.max().clamp_min(torch.finfo(work.dtype).tiny) * 1e-12
    eigenvectors = (work.T @ vectors) * torch.where(positive, values, torch.ones_like(values)).rsqrt()
    eigenvectors = eigenvectors * positive
    values = values * positive
    rest = (dim - positive.sum()).clamp_min(1)
    residual = ((trace.to(torch.float64) - values.sum()) / rest).clamp_min(0.0)
    if not (bool(torch.isfinite(values).all()) and bool(torch.isfinite(eigenvectors).all())):
        return None
    return LowRankEigen(values.to(sketch.dtype), eigenvectors.to(sketch.dtype), residual.to(sketch.dtype))


def low_rank_precondition(
    grad_matrix: Tensor, activation: LowRankEigen, gradient: LowRankEigen, damping: float
) -> Tensor:
    """``(Â ⊗ Ĝ + λI)⁻¹ vec(V)`` for low-rank-plus-isotropic factors, exactly, in ``O(d_out d_in k)``.

    With ``P = U Uᵀ`` on each side, ``V`` splits into four parts (top/rest of ``G`` × top/rest of ``A``),
    each an eigenspace of ``Â ⊗ Ĝ`` with its own divisor: ``g aᵀ + λ`` (top × top), ``s_G = 1/(g σ_A + λ)``
    (top × rest), ``s_A = 1/(σ_G a + λ)`` (rest × top) and ``c = 1/(σ_G σ_A + λ)`` (rest × rest). Expanding
    the projections gathers the four parts into

    ``c V + Q_G [diag(s_G − c) Q_Gᵀ V + M Q_Aᵀ] + (V Q_A) diag(s_A − c) Q_Aᵀ``,
    ``M = C ⊘ (g aᵀ + λ) − diag(s_G) C − C diag(s_A) + c C``, ``C = Q_Gᵀ V Q_A``,

    three ``(d_out × d_in × k)`` products and one pass over ``V``. A full-rank side has no rest part
    (its terms cancel) and takes the shorter form. (:func:`_low_rank_damped_power` with power 1.)

    Args:
        grad_matrix: ``V`` ``(d_out, d_in')``; ``activation`` over ``d_in'``, ``gradient`` over ``d_out``.

    Returns:
        ``(d_out, d_in')``.
    """
    return _low_rank_damped_power(grad_matrix, activation, gradient, damping, 1.0)


# ------------------------------------------------------------------------------------ Kronecker vectors


def kronecker_vector_precondition(
    grad_matrix: Tensor, activation_vector: Tensor, gradient_vector: Tensor, damping: float
) -> Tensor:
    """Eva (Zhang, Shi & Li 2022): ``((ā āᵀ) ⊗ (ḡ ḡᵀ) + λI)⁻¹ vec(V)`` by Sherman–Morrison, ``O(d_out d_in)``:

    ``Δ = (V − ḡ (ḡᵀ V ā) āᵀ / (λ + ‖ā‖² ‖ḡ‖²)) / λ``.

    Args:
        grad_matrix: ``V`` ``(d_out, d_in')``; ``activation_vector`` ā ``(d_in',)``; ``gradient_vector`` ḡ
            ``(d_out,)``.
    """
    projection = gradient_vector @ grad_matrix @ activation_vector
    norm = activation_vector.square().sum() * gradient_vector.square().sum()
    correction = torch.outer(gradient_vector, activation_vector) * (projection / (damping + norm))
    return (grad_matrix - correction) / damping


def whitened_step_scale(
    natural_grad_dot: Tensor, lr: float, kl_clip: float | None, parameter_count: int, reference_lr: float
) -> Tensor:
    """``ν`` when ``η`` is a per-parameter step in Fisher-whitened units (``step_rule="whitened"``).

    The update ``η ν Δ`` then has predicted KL ``η² ν² ⟨Δ, g⟩ = min(η² P, δ (η / η₀)²)``: a step of ``η``
    per parameter in the coordinates where the Fisher is the identity (what RMSprop's ``η`` means in
    parameter units, so A2C-scale learning rates carry over), capped by the trust region ``δ``, which the
    learning-rate schedule shrinks by ``(η / η₀)²`` (``η₀`` the schedule's initial value).

    ``ν = min(sqrt(P / d), sqrt(δ / d) / η₀)`` with ``d = ⟨Δ, g⟩``; ``kl_clip=None`` drops the cap.
    """
    tiny = torch.finfo(natural_grad_dot.dtype).tiny
    dot = natural_grad_dot.clamp_min(tiny)
    scale = torch.sqrt(parameter_count / dot)
    if kl_clip is not None and reference_lr > 0:
        scale = torch.minimum(scale, torch.sqrt(kl_clip / dot) / reference_lr)
    return scale


# ------------------------------------------------------------------------------------ posterior samples
#
# The Gaussian over a layer's weights that noisy natural gradient (Zhang, Sun, Duvenaud & Grosse 2018) reads
# off the curvature: ``Cov(vec ΔW) = (F̂ + γI)⁻¹`` for the approximation's Fisher block ``F̂`` and a prior
# precision γ. Each sampler maps white noise ``E`` (``vec E ~ N(0, I)``) to ``(F̂ + γI)^{-1/2} vec E`` using
# the decomposition the approximation already holds (one preconditioning's cost). ``E`` may carry leading
# batch dimensions ``(..., d_out, d_in')`` for several independent samples at once; the caller applies the
# scale ``s·sqrt(λ/N)``.


def eigen_posterior_sample(
    noise: Tensor, activation: Eigendecomposition, gradient: Eigendecomposition, damping: float
) -> Tensor:
    """``ΔW`` with ``Cov(vec ΔW) = (A ⊗ G + γI)⁻¹``: ``Q_G [E ⊘ sqrt(d_G d_Aᵀ + γ)] Q_Aᵀ``.

    ``(Q_A ⊗ Q_G)`` is orthogonal, so the white noise needs no rotation into the eigenbasis.

    Args:
        noise: ``E`` ``(..., d_out, d_in')``, independent standard normal entries.
        activation: decomposition of ``A`` ``(d_in', d_in')``; gradient: of ``G`` ``(d_out, d_out)``.

    Returns:
        ``(..., d_out, d_in')``.
    """
    scaling = torch.outer(gradient.eigenvalues, activation.eigenvalues)
    return eigenbasis_posterior_sample(
        noise, activation.eigenvectors, gradient.eigenvectors, scaling, damping
    )


def _low_rank_damped_power(
    matrix: Tensor, activation: LowRankEigen, gradient: LowRankEigen, damping: float, power: float
) -> Tensor:
    """``(Â ⊗ Ĝ + γI)^{-power} vec(V)`` for low-rank-plus-isotropic factors: the four eigenspace parts of
    :func:`low_rank_precondition`, each scaled by its eigenvalue to the ``-power``, gathered as described
    there (``V`` ``(..., d_out, d_in')``; a 2-d ``V`` takes the fused ``addmm`` path)."""
    q_a, a = activation.eigenvectors, activation.eigenvalues
    q_g, g = gradient.eigenvectors, gradient.eigenvalues
    batched = matrix.dim() > 2
    v_qa = matrix @ q_a  # (..., d_out, k_a)
    core = q_g.T @ v_qa  # C: (..., k_g, k_a)
    top_top = core * inverse_eigen_scaling(g, a, damping, power)
    if activation.full_rank and gradient.full_rank:
        return q_g @ top_top @ q_a.T
    if activation.full_rank:  # V = V Q_A Q_Aᵀ: only the rest-of-G × top-of-A part is added
        rest_scale = (gradient.residual * a + damping).pow(-power)  # s_A (k_a,)
        return (v_qa * rest_scale + q_g @ (top_top - core * rest_scale)) @ q_a.T
    if gradient.full_rank:  # V = Q_G Q_Gᵀ V: only the top-of-G × rest-of-A part is added
        rest_scale = (g * activation.residual + damping).pow(-power)[:, None]  # s_G (k_g, 1)
        return q_g @ ((q_g.T @ matrix) * rest_scale + (top_top - rest_scale * core) @ q_a.T)
    rest_rest = (gradient.residual * activation.residual + damping).pow(-power)  # c, 0-dim
    top_rest = (g * activation.residual + damping).pow(-power)  # s_G (k_g,)
    rest_top = (gradient.residual * a + damping).pow(-power)  # s_A (k_a,)
    mixed = top_top - top_rest[:, None] * core - core * rest_top + rest_rest * core  # M (..., k_g, k_a)
    top_rows = (top_rest - rest_rest)[:, None] * (q_g.T @ matrix) + mixed @ q_a.T  # (..., k_g, d_in')
    left = torch.cat((q_g.expand(*v_qa.shape[:-1], -1), v_qa * (rest_top - rest_rest)), dim=-1)
    right = torch.cat((top_rows, q_a.T.expand(*top_rows.shape[:-2], -1, -1)), dim=-2)
    if batched:
        return matrix * rest_rest + left @ right
    return torch.addmm(matrix * rest_rest, left, right)


def low_rank_posterior_sample(
    noise: Tensor, activation: LowRankEigen, gradient: LowRankEigen, damping: float
) -> Tensor:
    """``ΔW`` with ``Cov(vec ΔW) = (Â ⊗ Ĝ + γI)⁻¹`` for the low-rank-plus-isotropic factors ``Â``, ``Ĝ``
    (:class:`LowRankEigen`): ``(Â ⊗ Ĝ + γI)^{-1/2} vec E``, exactly, in ``O(d_out d_in k)``.

    Args:
        noise: ``E`` ``(..., d_out, d_in')``.

    Returns:
        ``(..., d_out, d_in')``.
    """
    return _low_rank_damped_power(noise, activation, gradient, damping, 0.5)


def factored_posterior_sample(noise: Tensor, activation_inverse: Tensor, gradient_inverse: Tensor) -> Tensor:
    """``ΔW`` with ``Cov(vec ΔW) = (A + π√γ I)⁻¹ ⊗ (G + (√γ/π) I)⁻¹``, the factored-damping curvature the
    Cholesky approximation preconditions with: ``L_G E L_Aᵀ`` with ``L Lᵀ`` the Cholesky factors of the
    damped inverses.

    Args:
        noise: ``E`` ``(..., d_out, d_in')``; inverses ``(d_in', d_in')`` and ``(d_out, d_out)`` (SPD).

    Returns:
        ``(..., d_out, d_in')``.
    """
    lower_a = torch.linalg.cholesky(symmetrise(activation_inverse))
    lower_g = torch.linalg.cholesky(symmetrise(gradient_inverse))
    return lower_g @ noise @ lower_a.T


def kronecker_vector_posterior_sample(
    noise: Tensor, activation_vector: Tensor, gradient_vector: Tensor, damping: float
) -> Tensor:
    """``ΔW`` with ``Cov(vec ΔW) = ((ā āᵀ) ⊗ (ḡ ḡᵀ) + γI)⁻¹`` (Eva's rank-one curvature), exactly, in
    ``O(d_out d_in)``.

    With ``u = vec(ḡ āᵀ)`` and ``n = ‖u‖² = ‖ā‖² ‖ḡ‖²``:
    ``(u uᵀ + γI)^{-1/2} = I/√γ + (1/√(n+γ) − 1/√γ) u uᵀ/n``.

    Args:
        noise: ``E`` ``(..., d_out, d_in')``; ``activation_vector`` ``(d_in',)``; ``gradient_vector``
            ``(d_out,)``.

    Returns:
        ``(..., d_out, d_in')``.
    """
    norm = activation_vector.square().sum() * gradient_vector.square().sum()
    base = damping**-0.5
    # u uᵀ / n applied to E: ĝ (ĝᵀ E â) âᵀ with unit vectors; a zero vector leaves E isotropic
    unit_a = activation_vector / activation_vector.norm().clamp_min(torch.finfo(norm.dtype).tiny)
    unit_g = gradient_vector / gradient_vector.norm().clamp_min(torch.finfo(norm.dtype).tiny)
    projection = (unit_g @ noise @ unit_a)[..., None, None] * torch.outer(unit_g, unit_a)
    return noise * base + projection * ((norm + damping).rsqrt() - base)


def diagonal_fisher_sample(batch_gradient: Tensor, *, batch_size: int, mean_reduction: bool) -> Tensor:
    """One unbiased sample of a parameter's diagonal Fisher ``E_b[g_b ⊙ g_b]`` from a batch-loss gradient.

    With targets sampled from the model itself, the per-example scores ``g_b`` are independent with zero
    mean, so ``E[(Σ_b g_b)²] = Σ_b E[g_b²]``: the squared batch gradient, rescaled, estimates the average
    per-example second moment without per-example gradients — ``B ḡ²`` for a mean-reduced loss,
    ``(Σ_b g_b)² / B`` for a summed one. (With the rollout's own targets, the empirical Fisher, the scores
    do not have zero mean and this is biased.)

    :param batch_gradient: the gradient of the statistics loss w.r.t. the parameter, any shape.
    :param batch_size: B, the number of examples the loss averaged or summed over.
    :return: same shape as ``batch_gradient``.
    """
    if batch_size < 1:
        raise ValueError(f"diagonal_fisher_sample: batch_size must be >= 1, got {batch_size}")
    squared = batch_gradient.square()
    return squared * batch_size if mean_reduction else squared / batch_size
