"""Layer adapters: how each kind of module yields K-FAC rows and reads/writes its gradient as a matrix.

An adapter knows one layer kind and nothing about approximations: it turns a forward input into rows of
activations ``(N, d_in)`` and a backward output gradient into rows ``(N', d_out)`` (with the weight that
makes ``weight · Σ rows rowsᵀ`` the per-example ``G``), and reads and writes the layer's gradient as a
``(d_out, d_in')`` matrix (``d_in' = d_in + 1`` with a trainable bias, which is the LAST column). What is kept
from the rows (second moments, mean vectors, ...) is the approximation's business
(:mod:`acktr.curvature.approximations`).

Rows may be a random subset (``row_fraction < 1``: the (example, position) rows of a convolution), chosen
so that the statistics stay unbiased. New layer kinds (recurrent cells) register with :func:`register_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_REGISTRY: dict[type[nn.Module], type[LayerAdapter]] = {}


def register_layer(module_type: type[nn.Module]) -> Callable[[type[LayerAdapter]], type[LayerAdapter]]:
    """Class decorator: use the decorated adapter for ``module_type`` (and its subclasses)."""

    def decorator(adapter_class: type[LayerAdapter]) -> type[LayerAdapter]:
        LAYER_REGISTRY[module_type] = adapter_class
        return adapter_class

    return decorator


def adapter_class_for(module: nn.Module) -> type[LayerAdapter] | None:
    """The registered adapter for ``module``'s type, searching its MRO (subclasses inherit)."""
    for klass in type(module).__mro__:
        adapter_class = LAYER_REGISTRY.get(klass)
        if adapter_class is not None:
            return adapter_class
    return None


class LayerAdapter:
    """How one module kind feeds K-FAC. Subclasses implement the four row/gradient methods."""

    #: the name saved in state dicts (kept stable across refactors)
    kind: ClassVar[str] = "Layer"

    def __init__(self, module: nn.Module, *, row_fraction: float = 1.0) -> None:
        self.module = module
        self.row_fraction = row_fraction

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        """Why this adapter cannot handle ``module``'s configuration (``None`` if it can)."""
        return None

    def parameters(self) -> list[nn.Parameter]:
        """The parameters covered (weight first, then a trainable bias)."""
        bias = trainable_bias(self.module)
        weight = cast(nn.Parameter, self.module.weight)
        return [weight] if bias is None else [weight, bias]

    @property
    def has_bias(self) -> bool:
        return trainable_bias(self.module) is not None

    def factor_dims(self) -> tuple[int, int]:
        """``(d_in', d_out)``: the sizes of ``A`` (counting the bias column) and ``G``."""
        weight = self.parameters()[0]
        return weight[0].numel() + int(self.has_bias), weight.shape[0]

    def activation_rows(self, inputs: Tensor) -> Tensor:
        """Rows ``(N, d_in)`` whose second moment is ``A`` (without the homogeneous coordinate)."""
        raise NotImplementedError

    def gradient_rows(self, output_grads: Tensor) -> tuple[Tensor, int, float]:
        """``(rows (N', d_out), B, weight)``: the per-example ``G`` is ``weight · Σ rowsᵀ rows / B`` before
        the loss-reduction scale (``weight`` undoes any subsampling of positions)."""
        raise NotImplementedError

    def gradient_matrix(self) -> Tensor | None:
        """The layer's current gradient as ``(d_out, d_in')``, or ``None`` if it has none."""
        weight = cast(nn.Parameter, self.module.weight)
        if weight.grad is None:
            return None
        matrix = weight.grad.reshape(weight.grad.shape[0], -1)
        bias = trainable_bias(self.module)
        if bias is None:
            return matrix
        bias_grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
        return torch.cat([matrix, bias_grad.reshape(-1, 1)], dim=1)

    def parameter_tensors(self, matrix: Tensor) -> list[Tensor]:
        """A ``(..., d_out, d_in')`` matrix as tensors shaped like :meth:`parameters` (weight, then a
        trainable bias), leading dimensions kept."""
        weight = cast(nn.Parameter, self.module.weight)
        lead = matrix.shape[:-2]
        has_bias = self.has_bias
        weight_part = matrix[..., : matrix.shape[-1] - has_bias].reshape(*lead, *weight.shape)
        return [weight_part, matrix[..., -1]] if has_bias else [weight_part]

    def grouped_output_delta(self, inputs: Tensor, deltas: Tensor) -> Tensor:
        """The change of the layer's output when the rows of ``inputs`` form ``K`` contiguous equal groups and
        group ``k`` sees the weights ``W + deltas[k]`` (the layer is linear in its weights).

        Args:
            inputs: the layer's input, ``K·R`` rows on its first dimension.
            deltas: ``(K, d_out, d_in')`` weight perturbations as matrices (bias last column).

        Returns:
            a tensor shaped like the layer's output.
        """
        raise NotImplementedError

    def _check_groups(self, inputs: Tensor, groups: int) -> int:
        rows = inputs.shape[0] if inputs.dim() > 1 else 1
        if rows % groups:
            raise ValueError(
                f"{type(self.module).__name__}: {rows} input rows do not split into {groups} equal groups of "
                "rows (one per weight perturbation); pass a batch of groups x rows-per-group rows"
            )
        return rows // groups

    def write_gradient_matrix(self, matrix: Tensor) -> None:
        """Write a ``(d_out, d_in')`` matrix back into the parameters' ``.grad``."""
        weight = cast(nn.Parameter, self.module.weight)
        bias = trainable_bias(self.module)
        weight_columns = matrix[:, : matrix.shape[1] - (bias is not None)]
        assert weight.grad is not None
        weight.grad.copy_(weight_columns.reshape(weight.shape))  # copy_ converts the dtype if it differs
        if bias is not None:
            if bias.grad is None:
                bias.grad = torch.zeros_like(bias)
            bias.grad.copy_(matrix[:, -1])


def trainable_bias(module: nn.Module) -> nn.Parameter | None:
    """The layer's bias if it is trained; a frozen bias is a constant and gets no homogeneous coordinate."""
    bias = getattr(module, "bias", None)
    if isinstance(bias, nn.Parameter) and bias.requires_grad:
        return bias
    return None


def _sample_rows(rows: Tensor, fraction: float) -> tuple[Tensor, float]:
    """A random subset of ``ceil(fraction · N)`` rows and the factor ``N / n`` that keeps sums unbiased."""
    count = rows.shape[0]
    keep = max(1, math.ceil(fraction * count))
    if keep >= count:
        return rows, 1.0
    index = torch.randperm(count, device=rows.device)[:keep]
    return rows.index_select(0, index), count / keep


@register_layer(nn.Linear)
class LinearAdapter(LayerAdapter):
    """``nn.Linear``: every leading position of a ``(B, ..., d_in)`` input is a row of ``A``; the per-example
    output gradients are summed over positions in ``G`` (K-FAC "expand", as KFC does for convolutions)."""

    kind = "LinearBlock"

    def activation_rows(self, inputs: Tensor) -> Tensor:
        return inputs.reshape(-1, inputs.shape[-1])  # an unbatched (d_in,) input is one row

    def gradient_rows(self, output_grads: Tensor) -> tuple[Tensor, int, float]:
        examples = 1 if output_grads.dim() == 1 else output_grads.shape[0]
        return output_grads.reshape(-1, output_grads.shape[-1]), examples, 1.0

    def grouped_output_delta(self, inputs: Tensor, deltas: Tensor) -> Tensor:
        groups = deltas.shape[0]
        self._check_groups(inputs, groups)
        tensors = self.parameter_tensors(deltas.to(inputs.dtype))
        rows = inputs.reshape(groups, -1, inputs.shape[-1])  # (K, R·positions, d_in)
        delta = rows @ tensors[0].transpose(1, 2)
        if len(tensors) > 1:
            delta = delta + tensors[1][:, None, :]
        return delta.reshape(*inputs.shape[:-1], delta.shape[-1])


@register_layer(nn.Conv2d)
class Conv2dAdapter(LayerAdapter):
    """``nn.Conv2d`` with the KFC approximation (Grosse & Martens 2016); ``groups=1``.

    With ``ā_t`` the unfolded input patch (plus a trailing 1) at output position ``t`` (``T = Oh·Ow``) and
    ``g_t`` the per-example output gradient at ``t``: ``A = (1 / (B·T)) Σ_b Σ_t ā_t ā_tᵀ`` (averaged over
    examples AND positions) and ``G = (1 / B) Σ_b Σ_t g_t g_tᵀ`` (summed over positions). Under KFC's
    assumptions the Fisher block is ``Σ_t E[ā_t ā_tᵀ] ⊗ E[g_t g_tᵀ] = A ⊗ G``.

    ``row_fraction < 1`` keeps a uniform random subset of the ``B·T`` (example, position) rows; the patches
    of the other positions are never copied out of the input (strided windows are gathered directly).
    """

    kind = "Conv2dBlock"

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

    @property
    def conv(self) -> nn.Conv2d:
        return cast(nn.Conv2d, self.module)

    def _padding(self) -> tuple[int, int]:
        padding = self.conv.padding
        if isinstance(padding, str):  # "valid" / "same": resolve to explicit zero padding
            return _resolve_string_padding(self.conv)
        return _pair(padding)

    def activation_rows(self, inputs: Tensor) -> Tensor:
        if inputs.dim() == 3:  # unbatched (C, H, W)
            inputs = inputs.unsqueeze(0)
        kernel, stride = _pair(self.conv.kernel_size), _pair(self.conv.stride)
        dilation, padding = _pair(self.conv.dilation), self._padding()
        if self.row_fraction >= 1.0:
            patches = F.unfold(inputs, kernel, dilation=dilation, padding=padding, stride=stride)
            # (B, d, T) -> (d, B·T) in one copy; its transpose is the row view (a GEMM-friendly layout)
            return patches.permute(1, 0, 2).reshape(patches.shape[1], -1).T
        padded = F.pad(inputs, (padding[1], padding[1], padding[0], padding[0]))
        windows = padded.unfold(2, dilation[0] * (kernel[0] - 1) + 1, stride[0]).unfold(
            3, dilation[1] * (kernel[1] - 1) + 1, stride[1]
        )[..., :: dilation[0], :: dilation[1]]  # (B, C, Oh, Ow, kh, kw), a view
        batch, _, out_h, out_w = windows.shape[:4]
        count = batch * out_h * out_w
        keep = max(1, math.ceil(self.row_fraction * count))
        index = torch.randperm(count, device=inputs.device)[:keep]
        example, position = index // (out_h * out_w), index % (out_h * out_w)
        rows = windows[example, :, position // out_w, position % out_w]  # (keep, C, kh, kw)
        return rows.reshape(keep, -1)

    def grouped_output_delta(self, inputs: Tensor, deltas: Tensor) -> Tensor:
        unbatched = inputs.dim() == 3
        batch = inputs.unsqueeze(0) if unbatched else inputs
        groups = deltas.shape[0]
        per_group = self._check_groups(batch, groups)
        tensors = self.parameter_tensors(deltas.to(inputs.dtype))
        channels, height, width = batch.shape[1:]
        # a grouped convolution: the K groups of rows side by side as channel groups, one kernel each
        stacked = batch.reshape(groups, per_group, channels, height, width).transpose(0, 1)
        stacked = stacked.reshape(per_group, groups * channels, height, width)
        weight = tensors[0].reshape(groups * tensors[0].shape[1], *tensors[0].shape[2:])
        bias = tensors[1].reshape(-1) if len(tensors) > 1 else None
        conv = self.conv
        out = F.conv2d(stacked, weight, bias, conv.stride, conv.padding, conv.dilation, groups=groups)
        d_out = tensors[0].shape[1]
        out = out.reshape(per_group, groups, d_out, *out.shape[2:]).transpose(0, 1)
        out = out.reshape(groups * per_group, d_out, *out.shape[3:])
        return out.squeeze(0) if unbatched else out

    def gradient_rows(self, output_grads: Tensor) -> tuple[Tensor, int, float]:
        if output_grads.dim() == 3:
            output_grads = output_grads.unsqueeze(0)
        rows = output_grads.permute(0, 2, 3, 1).reshape(-1, output_grads.shape[1])
        rows, weight = _sample_rows(rows, self.row_fraction)
        return rows, output_grads.shape[0], weight


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


__all__ = [
    "LAYER_REGISTRY",
    "Conv2dAdapter",
    "LayerAdapter",
    "LinearAdapter",
    "adapter_class_for",
    "register_layer",
    "trainable_bias",
]
