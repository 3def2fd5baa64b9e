"""Per-layer K-FAC curvature blocks and the module-type → block registry.

The base class :class:`KFACBlock` owns everything that is the same for every layer kind: accumulating
statistics, running averages, damping, eigendecompositions / inverses with failure handling, and state
(de)serialisation. A subclass only says how to turn a forward input into ``A``, a backward output
gradient into ``G``, and how to read and write the layer's gradient as a ``(d_out, d_in [+1])`` matrix.
New layer kinds (EKFAC variants, recurrent cells) register themselves with :func:`register_block`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from acktr.curvature import kfac_math
from acktr.curvature.kfac_math import Eigendecomposition

BLOCK_REGISTRY: dict[type[nn.Module], type[KFACBlock]] = {}

INVERSE_METHODS = ("eigen", "cholesky")


def register_block(module_type: type[nn.Module]) -> Callable[[type[KFACBlock]], type[KFACBlock]]:
    """Class decorator: use the decorated block class for ``module_type`` (and its subclasses)."""

    def decorator(block_class: type[KFACBlock]) -> type[KFACBlock]:
        BLOCK_REGISTRY[module_type] = block_class
        return block_class

    return decorator


def block_class_for(module: nn.Module) -> type[KFACBlock] | None:
    """The registered block class for ``module``'s type, searching its MRO (subclasses inherit)."""
    for klass in type(module).__mro__:
        block_class = BLOCK_REGISTRY.get(klass)
        if block_class is not None:
            return block_class
    return None


class KFACBlock:
    """K-FAC state of one layer: ``F_layer ≈ A ⊗ G``.

    Attributes:
        activation_factor: running ``A``, ``(d_in', d_in')`` (``d_in' = d_in + 1`` with a bias).
        gradient_factor: running ``G``, ``(d_out, d_out)``.
        activation_eigen / gradient_eigen: eigendecompositions used by ``inverse_method="eigen"``.
        activation_inverse / gradient_inverse: damped inverses used by ``inverse_method="cholesky"``.
        statistics_updates: number of statistics batches received so far.
        finite_updates: 0-dim tensor, the number of those that were finite (drives the cold start; a tensor so
            that skipping a non-finite batch needs no host sync).
        decomposition_failures: refreshes that failed in float32 and float64 and kept the previous result.
    """

    #: the state tensors saved by :meth:`state_dict` (``None`` allowed)
    _TENSOR_STATE: ClassVar[tuple[str, ...]] = (
        "activation_factor",
        "gradient_factor",
        "activation_inverse",
        "gradient_inverse",
        "finite_updates",
    )

    def __init__(self, module: nn.Module, name: str, *, factor_dtype: torch.dtype) -> None:
        self.module = module
        self.name = name
        self.factor_dtype = factor_dtype
        self.activation_factor: Tensor | None = None
        self.gradient_factor: Tensor | None = None
        self.activation_eigen: Eigendecomposition | None = None
        self.gradient_eigen: Eigendecomposition | None = None
        self.activation_inverse: Tensor | None = None
        self.gradient_inverse: Tensor | None = None
        self.statistics_updates = 0
        self.finite_updates: Tensor | None = None
        self.decomposition_failures = 0
        self.reset_accumulators()

    # ----------------------------------------------------------------- layer-kind specific (override)
    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Why this block cannot handle ``module``'s configuration (``None`` if it can)."""
        return None

    def parameters(self) -> list[nn.Parameter]:
        """The parameters this block preconditions (weight first, then bias)."""
        raise NotImplementedError

    def activation_statistics(self, inputs: Tensor) -> tuple[Tensor, int]:
        """``A`` from one forward input and the number of examples it averages over."""
        raise NotImplementedError

    def gradient_statistics(self, output_grads: Tensor, *, mean_reduction: bool) -> tuple[Tensor, int]:
        """``G`` from one backward output gradient and the number of examples it averages over."""
        raise NotImplementedError

    def gradient_matrix(self) -> Tensor | None:
        """The layer's current gradient as ``(d_out, d_in')``, or ``None`` if it has none."""
        raise NotImplementedError

    def factor_dims(self) -> tuple[int, int]:
        """``(d_in', d_out)``: the sizes of ``A`` and ``G`` (from the weight; ``d_in'`` counts the bias)."""
        weight = self.parameters()[0]
        return weight[0].numel() + len(self.parameters()) - 1, weight.shape[0]

    def write_gradient_matrix(self, matrix: Tensor) -> None:
        """Write a ``(d_out, d_in')`` matrix back into the parameters' ``.grad``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- statistics
    def reset_accumulators(self) -> None:
        # Running means over the passes of one collect_statistics() block, weighted by examples.
        self._activation_mean: Tensor | None = None
        self._activation_count = 0
        self._gradient_mean: Tensor | None = None
        self._gradient_count = 0

    @staticmethod
    def _merge(mean: Tensor | None, seen: int, factor: Tensor, count: int) -> Tensor:
        if mean is None:
            return factor
        return mean.lerp_(factor, count / (seen + count))

    def accumulate_activations(self, inputs: Tensor) -> None:
        factor, count = self.activation_statistics(inputs.detach().to(self.factor_dtype))
        self._activation_mean = self._merge(self._activation_mean, self._activation_count, factor, count)
        self._activation_count += count

    def accumulate_gradients(self, output_grads: Tensor, *, mean_reduction: bool) -> None:
        factor, count = self.gradient_statistics(
            output_grads.detach().to(self.factor_dtype), mean_reduction=mean_reduction
        )
        self._gradient_mean = self._merge(self._gradient_mean, self._gradient_count, factor, count)
        self._gradient_count += count

    def pending_statistics(self) -> tuple[Tensor, Tensor] | None:
        """``(A_new, G_new)`` accumulated since the last reset, or ``None`` if either is missing."""
        if self._activation_mean is None or self._gradient_mean is None:
            return None
        return self._activation_mean, self._gradient_mean

    def update_factors(
        self, activation_new: Tensor, gradient_new: Tensor, *, decay: float, cold_iter: int
    ) -> None:
        """``F ← (1 − w)·F + w·F_new``: a plain average over the first ``cold_iter`` finite batches, then an
        exponential one (``w = 1 − decay``). Non-finite batches are skipped without a host sync: they
        neither enter the factors nor count, so the first finite batch still initialises them."""
        # A sum is non-finite iff some element is (NaN/inf propagate): one cheap reduction per factor.
        finite = torch.isfinite(activation_new.sum()) & torch.isfinite(gradient_new.sum())
        if self.activation_factor is None or self.gradient_factor is None or self.finite_updates is None:
            # A first batch with NaNs must not become the factor: zeros make the damping alone act,
            # i.e. a plain gradient step that the trust region still bounds.
            self.activation_factor = torch.where(finite, activation_new, torch.zeros_like(activation_new))
            self.gradient_factor = torch.where(finite, gradient_new, torch.zeros_like(gradient_new))
            self.finite_updates = finite.to(self.factor_dtype)
        else:
            count = self.finite_updates
            # plain average while cold (and always over a zero-initialised factor: count 0), then exponential
            cold = count < max(cold_iter, 1)
            exponential = torch.full_like(count, 1.0 - decay)
            weight = torch.where(cold, (1.0 / (count + 1.0)).clamp(min=1.0 - decay), exponential)
            weight = torch.where(finite, weight, torch.zeros_like(weight))
            self.activation_factor.lerp_(torch.where(finite, activation_new, self.activation_factor), weight)
            self.gradient_factor.lerp_(torch.where(finite, gradient_new, self.gradient_factor), weight)
            self.finite_updates = count + finite.to(count.dtype)
        self.statistics_updates += 1

    # ----------------------------------------------------------------- inverses
    @property
    def has_factors(self) -> bool:
        return self.activation_factor is not None and self.gradient_factor is not None

    @property
    def has_curvature(self) -> bool:
        """Whether a decomposition or inverse is available to precondition with."""
        eigen = self.activation_eigen is not None and self.gradient_eigen is not None
        inverse = self.activation_inverse is not None and self.gradient_inverse is not None
        return eigen or inverse

    def clear_curvature(self) -> None:
        """Drop the decompositions/inverses: the next ``precondition`` recomputes them from the factors."""
        self.activation_eigen = self.gradient_eigen = None
        self.activation_inverse = self.gradient_inverse = None

    def update_curvature(self, *, method: str, damping: float) -> None:
        """Refresh the eigendecompositions (``"eigen"``) or damped inverses (``"cholesky"``).

        On failure (float32 and float64 both failed) the previous result is kept and
        ``decomposition_failures`` is incremented; nothing is raised.
        """
        if not self.has_factors:
            return
        assert self.activation_factor is not None and self.gradient_factor is not None
        if method == "eigen":
            activation_eigen = kfac_math.safe_eigh(self.activation_factor)
            gradient_eigen = kfac_math.safe_eigh(self.gradient_factor)
            if activation_eigen is None or gradient_eigen is None:
                self.decomposition_failures += 1
                return
            self.activation_eigen, self.gradient_eigen = activation_eigen, gradient_eigen
            self.activation_inverse = self.gradient_inverse = None
        elif method == "cholesky":
            pi = kfac_math.factored_damping_pi(self.activation_factor, self.gradient_factor)
            sqrt_damping = damping**0.5
            activation_inverse = kfac_math.safe_damped_inverse(self.activation_factor, pi * sqrt_damping)
            gradient_inverse = kfac_math.safe_damped_inverse(self.gradient_factor, sqrt_damping / pi)
            if activation_inverse is None or gradient_inverse is None:
                self.decomposition_failures += 1
                return
            self.activation_inverse, self.gradient_inverse = activation_inverse, gradient_inverse
            self.activation_eigen = self.gradient_eigen = None
        else:
            raise ValueError(f"unknown inverse_method {method!r}; use one of {INVERSE_METHODS}")

    def natural_gradient(self, grad_matrix: Tensor, *, damping: float) -> Tensor:
        """``(A ⊗ G + λI)⁻¹ ∇W`` (eigen) or the factored-damping approximation (cholesky).

        Before the first successful decomposition the gradient is returned unchanged.
        """
        grad = grad_matrix.to(self.factor_dtype)
        if self.activation_eigen is not None and self.gradient_eigen is not None:
            return kfac_math.eigen_precondition(grad, self.activation_eigen, self.gradient_eigen, damping)
        if self.activation_inverse is not None and self.gradient_inverse is not None:
            return kfac_math.factored_precondition(grad, self.activation_inverse, self.gradient_inverse)
        return grad

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._TENSOR_STATE}
        for prefix in ("activation", "gradient"):
            eigen: Eigendecomposition | None = getattr(self, f"{prefix}_eigen")
            state[f"{prefix}_eigenvalues"] = None if eigen is None else eigen.eigenvalues
            state[f"{prefix}_eigenvectors"] = None if eigen is None else eigen.eigenvectors
        state["statistics_updates"] = self.statistics_updates
        state["decomposition_failures"] = self.decomposition_failures
        state["kind"] = type(self).__name__
        return state

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(
                f"K-FAC state for layer {self.name!r} is a {state.get('kind')} block but the model has a "
                f"{type(self).__name__}: load state saved from the same model architecture"
            )

        def to_device(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.to(device=device, dtype=self.factor_dtype)

        if "finite_updates" not in state and state.get("activation_factor") is not None:
            # state saved before finite batches were counted apart: every batch counted
            state = {**state, "finite_updates": torch.tensor(float(state["statistics_updates"]))}
        for name in self._TENSOR_STATE:
            setattr(self, name, to_device(state.get(name)))
        for prefix in ("activation", "gradient"):
            values = to_device(state[f"{prefix}_eigenvalues"])
            vectors = to_device(state[f"{prefix}_eigenvectors"])
            eigen = None if values is None or vectors is None else Eigendecomposition(values, vectors)
            setattr(self, f"{prefix}_eigen", eigen)
        self.statistics_updates = int(state["statistics_updates"])
        self.decomposition_failures = int(state["decomposition_failures"])
        self.reset_accumulators()


def _trainable_bias(module: nn.Module) -> nn.Parameter | None:
    """The layer's bias if it is trained; a frozen bias is a constant and gets no homogeneous coordinate."""
    bias = getattr(module, "bias", None)
    if isinstance(bias, nn.Parameter) and bias.requires_grad:
        return bias
    return None


def _weight(module: nn.Module) -> nn.Parameter:
    return cast(nn.Parameter, module.weight)


def _weight_bias_parameters(module: nn.Module) -> list[nn.Parameter]:
    bias = _trainable_bias(module)
    return [_weight(module)] if bias is None else [_weight(module), bias]


def _read_weight_bias_grad(module: nn.Module) -> Tensor | None:
    weight_grad = _weight(module).grad
    if weight_grad is None:
        return None
    matrix = weight_grad.reshape(weight_grad.shape[0], -1)
    bias = _trainable_bias(module)
    if bias is None:
        return matrix
    bias_grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
    return torch.cat([matrix, bias_grad.reshape(-1, 1)], dim=1)


def _write_weight_bias_grad(module: nn.Module, matrix: Tensor) -> None:
    weight = _weight(module)
    bias = _trainable_bias(module)
    weight_columns = matrix[:, : matrix.shape[1] - (bias is not None)]
    assert weight.grad is not None
    weight.grad.copy_(weight_columns.reshape(weight.shape))
    if bias is not None:
        if bias.grad is None:
            bias.grad = torch.zeros_like(bias)
        bias.grad.copy_(matrix[:, -1])


@register_block(nn.Linear)
class LinearBlock(KFACBlock):
    """``nn.Linear``: ``A = E[ā āᵀ]`` over rows, ``G = E_b[Σ_positions g gᵀ]``.

    Inputs of shape ``(B, ..., d_in)``: every leading position is a row of ``A`` (averaged) and the
    per-example output gradients are summed over positions in ``G`` — the same convention as KFC for
    convolutions (K-FAC "expand"); for the usual ``(B, d_in)`` input this is plain K-FAC.
    """

    def parameters(self) -> list[nn.Parameter]:
        return _weight_bias_parameters(self.module)

    @property
    def has_bias(self) -> bool:
        return _trainable_bias(self.module) is not None

    def activation_statistics(self, inputs: Tensor) -> tuple[Tensor, int]:
        if inputs.dim() == 1:  # unbatched input: one example
            inputs = inputs.unsqueeze(0)
        return kfac_math.linear_activation_factor(inputs, has_bias=self.has_bias), inputs.shape[0]

    def gradient_statistics(self, output_grads: Tensor, *, mean_reduction: bool) -> tuple[Tensor, int]:
        if output_grads.dim() == 1:
            output_grads = output_grads.unsqueeze(0)
        batch_size = output_grads.shape[0]
        rows = output_grads.reshape(-1, output_grads.shape[-1])
        grad_scale = float(batch_size) if mean_reduction else 1.0
        return kfac_math.gradient_factor(rows, batch_size=batch_size, grad_scale=grad_scale), batch_size

    def gradient_matrix(self) -> Tensor | None:
        return _read_weight_bias_grad(self.module)

    def write_gradient_matrix(self, matrix: Tensor) -> None:
        _write_weight_bias_grad(self.module, matrix)


@register_block(nn.Conv2d)
class Conv2dBlock(KFACBlock):
    """``nn.Conv2d`` with the KFC approximation (Grosse & Martens 2016); ``groups=1``.

    With ``ā_t`` the unfolded input patch (plus a trailing 1) at output position ``t`` (``T = Oh·Ow``
    positions) and ``g_t`` the per-example output gradient at ``t``:

    - ``A = (1 / (B·T)) Σ_b Σ_t ā_t ā_tᵀ``  — averaged over examples AND positions;
    - ``G = (1 / B) Σ_b Σ_t g_t g_tᵀ``      — summed over positions, averaged over examples.

    Under KFC's assumptions (activations independent of derivatives, spatially uncorrelated and
    homogeneous derivatives) the true Fisher block is ``Σ_t E[ā_t ā_tᵀ] ⊗ E[g_t g_tᵀ]``, which is
    exactly ``A ⊗ G`` (the ``1/T`` in ``A`` cancels the sum in ``G``); ``tests/test_curvature_math.py``
    proves it on a model where the assumptions hold.
    """

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            return f"groups={module.groups}"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if module.padding == "same" and any(
            dilation * (kernel - 1) % 2
            for kernel, dilation in zip(module.kernel_size, module.dilation, strict=True)
        ):
            return "asymmetric padding='same'"
        return None

    def parameters(self) -> list[nn.Parameter]:
        return _weight_bias_parameters(self.module)

    def _unfold(self, inputs: Tensor) -> Tensor:
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        padding = conv.padding
        if isinstance(padding, str):  # "valid" / "same": resolve to explicit zero padding
            padding = _resolve_string_padding(conv)
        return kfac_math.conv2d_unfold(
            inputs,
            kernel_size=_pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=_pair(padding),
            dilation=_pair(conv.dilation),
        )

    def activation_statistics(self, inputs: Tensor) -> tuple[Tensor, int]:
        if inputs.dim() == 3:  # unbatched (C, H, W)
            inputs = inputs.unsqueeze(0)
        has_bias = _trainable_bias(self.module) is not None
        return kfac_math.patch_second_moment(self._unfold(inputs), with_ones=has_bias), inputs.shape[0]

    def gradient_statistics(self, output_grads: Tensor, *, mean_reduction: bool) -> tuple[Tensor, int]:
        if output_grads.dim() == 3:
            output_grads = output_grads.unsqueeze(0)
        batch_size = output_grads.shape[0]
        rows = output_grads.permute(0, 2, 3, 1).reshape(-1, output_grads.shape[1])
        grad_scale = float(batch_size) if mean_reduction else 1.0
        return kfac_math.gradient_factor(rows, batch_size=batch_size, grad_scale=grad_scale), batch_size

    def gradient_matrix(self) -> Tensor | None:
        return _read_weight_bias_grad(self.module)

    def write_gradient_matrix(self, matrix: Tensor) -> None:
        _write_weight_bias_grad(self.module, matrix)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _resolve_string_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    # "same" (stride 1) pads dilation*(k-1) in total; only symmetric totals are supported (see
    # unsupported_reason), since unfold cannot pad one side more than the other.
    kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
    return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
