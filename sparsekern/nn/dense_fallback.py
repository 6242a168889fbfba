"""The dense fallback of a sparse layer (backend="dense"): dense GEMMs on a dense copy of the weight.

It skips nothing; it exists because below the crossover sparsity a dense GEMM is faster than the sparse
kernels. What it must not do is cost much more than a plain dense layer, so the dense weight lives in a
persistent buffer refilled from the kept values with AVX-512 expand-loads, and the weight gradient is
gathered back with AVX-512 compresses (``mask_expand_`` / ``mask_compress``). A fresh 16 MB weight per step
plus scalar scatter/gather cost 20-25% of a 2048x2048 training step here (page faults, indexed stores).

Correctness: the buffer is refilled on every forward (a version counter would miss writes through
``.data``), but refilled *in place* only when nothing else holds it: while a pending backward (or a
view) still references it, e.g. a layer used twice in one forward, the forward takes a fresh buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension, _ops


# Up to this many weight entries, the CPU fallback is the functional csr_to_dense + dense op instead: a fresh
# dense weight costs nothing at this size, and with the extension both conversions differentiate in C++
# (csrc/cpu/csr_dense_autograd.cpp) where the autograd.Functions below run Python on every step, about
# 0.1-0.2 ms, a tenth of a MobileNetV2 layer's step.
FUNCTIONAL_FALLBACK_MAX_WEIGHTS = 1 << 16


def prefers_functional_fallback(weight_numel: int, device_type: str) -> bool:
    """Whether a dense fallback of ``weight_numel`` entries on ``device_type`` runs functionally."""
    return device_type == "cpu" and weight_numel <= FUNCTIONAL_FALLBACK_MAX_WEIGHTS and _extension.AVAILABLE


def _held_elsewhere(tensor: torch.Tensor) -> bool:
    """True if anything besides the caller's reference (a saved tensor of a pending backward, a view) holds
    the tensor's storage. Without torch's use counter, assume it is held: a fresh buffer is always safe."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return True
    return use_count(tensor.untyped_storage()._cdata) > _BASELINE_USE_COUNT


# A storage referenced only by its tensor reports this count through the expression above (the tensor and
# the temporary storage object both count); measured once so a change in torch shows up as a fresh buffer.
_probe = torch.empty(1)
_BASELINE_USE_COUNT = torch._C._storage_Use_Count(_probe.untyped_storage()._cdata) \
    if hasattr(torch._C, "_storage_Use_Count") else 0
del _probe


class DenseWeightCache:
    """A dense ``(out, in)`` buffer refilled with the kept values on every forward; zeros elsewhere."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def clear(self) -> None:
        """Forget the buffer (call when the mask changes: its zeros are no longer the pruned set)."""
        self.buffer = None

    def weight(self, values: torch.Tensor, row_offsets, mask) -> torch.Tensor:
        buf = self.buffer
        if (buf is None or buf.shape != mask.shape or buf.dtype != values.dtype
                or buf.device != values.device or _held_elsewhere(buf)):
            buf = self.buffer = values.new_empty(mask.shape)
        _ops.mask_expand_(values.detach(), row_offsets, mask, buf)  # writes every entry, zeros included
        return buf


class DenseMaskedLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` with W the cache's dense weight; gradients flow to the kept values only."""

    @staticmethod
    def forward(ctx, x, values, bias, weight, row_offsets, col_indices, mask):
        # Save a view, not the buffer itself: a view holds the buffer's storage, which is what the cache's
        # _held_elsewhere() counts, so no later forward refills this buffer before this backward has run.
        ctx.save_for_backward(x, values, weight.view(weight.shape), row_offsets, col_indices, mask)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, values, weight, row_offsets, col_indices, mask = ctx.saved_tensors
        # create_graph=True (double backward) needs every step differentiable: the weight as a function of
        # values, and the differentiable gather; otherwise the fast buffer and the compressing gather.
        double_backward = torch.is_grad_enabled()
        if double_backward:
            weight = _ops.csr_to_dense(values, row_offsets, col_indices, weight.shape[1])
        d_x = d_values = d_bias = None
        if ctx.needs_input_grad[0]:
            d_x = grad @ weight
        if ctx.needs_input_grad[1]:
            d_weight = grad.t() @ x
            d_values = (_ops.csr_from_dense(d_weight, row_offsets, col_indices) if double_backward
                        else _ops.mask_compress(d_weight, row_offsets, mask))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = grad.sum(0)
        return d_x, d_values, d_bias, None, None, None, None


class DenseMaskedConv2d(torch.autograd.Function):
    """``y = conv2d(x, W) + b`` with W the cache's dense weight (viewed 4-D); gradients flow to the kept values
    only. One autograd node with ATen's convolution backward: on a small layer (a 1-3 ms MobileNet conv) the
    differentiable csr_to_dense / csr_from_dense pair cost 10-12% of the step in op and autograd overhead."""

    @staticmethod
    def forward(ctx, x, values, bias, weight, row_offsets, col_indices, mask2d, geometry):
        stride, padding, dilation, groups = geometry
        ctx.save_for_backward(x, values, weight.view(weight.shape), row_offsets, col_indices, mask2d)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, values, weight, row_offsets, col_indices, mask2d = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs_x, needs_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if torch.is_grad_enabled():
            # create_graph=True (double backward): recompute differentiably from the kept values.
            with torch.enable_grad():
                w = _ops.csr_to_dense(values, row_offsets, col_indices, mask2d.shape[1]).view(weight.shape)
                y = F.conv2d(x, w, None, stride, padding, dilation, groups)
                wanted = [t for t, need in ((x, needs_x), (values, needs_values)) if need]
                found = iter(torch.autograd.grad(y, wanted, grad, create_graph=True)) if wanted else iter(())
            d_x = next(found) if needs_x else None
            d_values = next(found) if needs_values else None
            d_bias = grad.sum((0, 2, 3)) if needs_bias else None
        else:
            # The bias gradient from the same call, as nn.Conv2d's backward does: oneDNN sums it while it
            # computes dW, where a separate grad.sum((0, 2, 3)) cost 0.14 ms of a 0.9 ms 384-ch 4x4 step.
            d_x, d_weight, d_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if needs_bias else None, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, [needs_x, needs_values, needs_bias])
            d_values = (_ops.mask_compress(d_weight.contiguous().view(mask2d.shape), row_offsets, mask2d)
                        if needs_values else None)  # contiguous: channels_last inputs give a channels_last dW
            d_bias = d_bias if needs_bias else None
        return d_x, d_values, d_bias, None, None, None, None, None
