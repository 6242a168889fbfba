"""The convolution family of the op registry: schemas, fakes, references and autograd of a sparse Conv2d.

Registered on the same ``sparsekern`` library as ``_ops.py`` (which imports this module last); a separate
file because the family is self-contained and ``_ops.py`` already holds the Linear family.

    csr_conv2d(x, values, layout..., bias?, kernel_size, stride, padding, dilation, groups)
        -> y (N, C_out, OH, OW) = conv2d(x, W) + bias                              forward
    csr_conv2d_input_grad(grad, values, layout..., input_size, kernel_size, ...)
        -> dx (N, C_in, H, W)                                                       input gradient
    csr_conv2d_weight_grad(grad, x, layout..., kernel_size, ...)
        -> dW at the kept weights (nnz,)                                           weight gradient (SDDMM)

W is the CSR matrix of the weight viewed as ``(C_out, C_in/groups · kH · kW)`` (``CSRLayout.from_mask(
mask.reshape(C_out, -1))``), values in that row-major order. Activations are NCHW (any strides). Padding
is symmetric per dimension (zeros); a module with asymmetric "same" padding pads the input itself.
The closed set: each op's gradient is written with the three ops, so double backward works.
"""
from __future__ import annotations

import torch

from . import reference
from ._ops import _LAYOUT_ARGS, _check_layout, _check_layout_values, _check_values_dtype, _lib

_GEOMETRY = "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups"

SCHEMAS = {
    "csr_conv2d": f"(Tensor x, Tensor values, {_LAYOUT_ARGS}, Tensor? bias, {_GEOMETRY}) -> Tensor",
    "csr_conv2d_input_grad": f"(Tensor grad, Tensor values, {_LAYOUT_ARGS}, int[2] input_size, {_GEOMETRY}) -> Tensor",
    "csr_conv2d_weight_grad": f"(Tensor grad, Tensor x, {_LAYOUT_ARGS}, {_GEOMETRY}) -> Tensor",
}
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


# ----------------------------------------------------------------------------------------------- checks

def conv_output_size(input_size, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """(OH, OW) of a convolution, as torch computes it."""
    return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                 for i, k, s, p, d in zip(input_size, kernel_size, stride, padding, dilation))


def _check_geometry_args(kernel_size, stride, padding, dilation, groups):
    for name, v, low in (("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0),
                         ("dilation", dilation, 1)):
        if len(v) != 2 or any(int(e) < low for e in v):
            raise ValueError(f"{name}: expected two integers >= {low}, got {list(v)}")
    if groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups}")


def _check_geometry(layout, kernel_size, stride, padding, dilation, groups):
    """Validates the geometry against the layout; returns (C_out, C_in) of the convolution."""
    _check_geometry_args(kernel_size, stride, padding, dilation, groups)
    n_rows, n_cols, _ = _check_layout(*layout)
    taps = kernel_size[0] * kernel_size[1]
    if n_cols % taps:
        raise ValueError(f"layout: {n_cols} columns are not (C_in/groups)·kH·kW for kernel {list(kernel_size)}")
    if n_rows % groups:
        raise ValueError(f"groups: {groups} does not divide the {n_rows} output channels of the layout")
    return n_rows, n_cols // taps * groups


def _check_activation(name, t, dtype, channels):
    _check_values_dtype(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (dim 1), got shape {tuple(t.shape)}")


def _check_output_size(input_size, kernel_size, stride, padding, dilation):
    out = conv_output_size(input_size, kernel_size, stride, padding, dilation)
    if min(out) < 1:
        raise ValueError(f"x: input size {list(input_size)} is too small for kernel {list(kernel_size)} with "
                         f"padding {list(padding)} and dilation {list(dilation)} (output size {list(out)})")
    return out


# Shared by both conv families (_ops_conv_bsr.py too): the checks that do not depend on how W is stored.

def _check_bias(bias, dtype, c_out):
    if bias is not None:
        if bias.dtype != dtype:
            raise TypeError(f"bias: expected dtype {dtype}, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != c_out:
            raise ValueError(f"bias: expected shape ({c_out},), got {tuple(bias.shape)}")


def _check_input_grad_activations(grad, dtype, c_out, input_size, kernel_size, stride, padding, dilation):
    """input_size and grad (N, C_out, OH, OW) of an input-gradient call."""
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size: expected two positive integers (H, W), got {list(input_size)}")
    out = _check_output_size(input_size, kernel_size, stride, padding, dilation)
    _check_activation("grad", grad, dtype, c_out)
    if tuple(grad.shape[2:]) != tuple(out):
        raise ValueError(f"grad: expected spatial size {list(out)} (the output of input_size {list(input_size)}), "
                         f"got shape {tuple(grad.shape)}")


def _check_weight_grad_activations(grad, x, c_in, c_out, kernel_size, stride, padding, dilation):
    """x (N, C_in, H, W) and grad (N, C_out, OH, OW) of a weight-gradient call."""
    _check_activation("x", x, x.dtype, c_in)
    out = _check_output_size(x.shape[2:], kernel_size, stride, padding, dilation)
    _check_activation("grad", grad, x.dtype, c_out)
    if grad.shape[0] != x.shape[0] or tuple(grad.shape[2:]) != tuple(out):
        raise ValueError(f"grad: expected shape {(x.shape[0], c_out, *out)} (the output of x {tuple(x.shape)}), "
                         f"got {tuple(grad.shape)}")


def _check_conv(x, values, layout, bias, kernel_size, stride, padding, dilation, groups):
    c_out, c_in = _check_geometry(layout, kernel_size, stride, padding, dilation, groups)
    _check_values_dtype("values", values)
    nnz = layout[1].shape[0]
    if values.dim() != 1 or values.shape[0] != nnz:
        raise ValueError(f"values: expected shape ({nnz},), got {tuple(values.shape)}")
    _check_activation("x", x, values.dtype, c_in)
    _check_bias(bias, values.dtype, c_out)
    return (x.shape[0], c_out, *_check_output_size(x.shape[2:], kernel_size, stride, padding, dilation))


def _check_conv_input_grad(grad, values, layout, input_size, kernel_size, stride, padding, dilation, groups):
    c_out, c_in = _check_geometry(layout, kernel_size, stride, padding, dilation, groups)
    _check_values_dtype("values", values)
    if values.dim() != 1 or values.shape[0] != layout[1].shape[0]:
        raise ValueError(f"values: expected shape ({layout[1].shape[0]},), got {tuple(values.shape)}")
    _check_input_grad_activations(grad, values.dtype, c_out, input_size, kernel_size, stride, padding, dilation)
    return (grad.shape[0], c_in, *input_size)


def _check_conv_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups):
    c_out, c_in = _check_geometry(layout, kernel_size, stride, padding, dilation, groups)
    _check_weight_grad_activations(grad, x, c_in, c_out, kernel_size, stride, padding, dilation)
    return (layout[1].shape[0],)


# ------------------------------------------------------------------------------------ reference and fakes
# The same three registrations for each conv family (this CSR one and _ops_conv_bsr.py's block one): the
# family's checks (each returns its output's shape), the layout's contents checked, then reference.py.

def register_conv_references(family: str, checks, references, output_format=None) -> None:
    """Registers the CompositeExplicitAutograd reference and the fake of ``sparsekern::{family}_conv2d``,
    ``..._input_grad`` and ``..._weight_grad``. ``checks`` and ``references`` are the three ops' check and
    reference.py functions; ``output_format(t)`` is the memory format of the forward's (input gradient's)
    output, following x (grad); None: contiguous."""
    check_conv, check_input_grad, check_weight_grad = checks
    conv_ref, input_grad_ref, weight_grad_ref = references

    def empty(shape, follow):
        fmt = output_format(follow) if output_format is not None else torch.contiguous_format
        return torch.empty(shape, dtype=follow.dtype, device=follow.device, memory_format=fmt)

    def conv(x, values, *args):
        *layout, bias, kernel_size, stride, padding, dilation, groups = args
        shape = check_conv(x, values, layout, bias, kernel_size, stride, padding, dilation, groups)
        _check_layout_values(*layout)
        return conv_ref(x, values, *layout, bias, kernel_size, stride, padding, dilation, groups, shape[2:])

    def input_grad(grad, values, *args):
        *layout, input_size, kernel_size, stride, padding, dilation, groups = args
        check_input_grad(grad, values, layout, input_size, kernel_size, stride, padding, dilation, groups)
        _check_layout_values(*layout)
        return input_grad_ref(grad, values, *layout, input_size, kernel_size, stride, padding, dilation, groups)

    def weight_grad(grad, x, *args):
        *layout, kernel_size, stride, padding, dilation, groups = args
        check_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups)
        _check_layout_values(*layout)
        return weight_grad_ref(grad, x, *layout, kernel_size, stride, padding, dilation, groups)

    def conv_fake(x, values, *args):
        *layout, bias, kernel_size, stride, padding, dilation, groups = args
        return empty(check_conv(x, values, layout, bias, kernel_size, stride, padding, dilation, groups), x)

    def input_grad_fake(grad, values, *args):
        *layout, input_size, kernel_size, stride, padding, dilation, groups = args
        return empty(check_input_grad(grad, values, layout, input_size, kernel_size, stride, padding, dilation,
                                      groups), grad)

    def weight_grad_fake(grad, x, *args):
        *layout, kernel_size, stride, padding, dilation, groups = args
        return x.new_empty(check_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups))

    name = f"{family}_conv2d"
    for op, impl, fake in ((name, conv, conv_fake), (name + "_input_grad", input_grad, input_grad_fake),
                           (name + "_weight_grad", weight_grad, weight_grad_fake)):
        torch.library.impl(_lib, op, "CompositeExplicitAutograd")(impl)
        torch.library.register_fake(f"sparsekern::{op}", fake, lib=_lib)


register_conv_references("csr", (_check_conv, _check_conv_input_grad, _check_conv_weight_grad),
                         (reference.csr_conv2d, reference.csr_conv2d_input_grad, reference.csr_conv2d_weight_grad))


csr_conv2d = torch.ops.sparsekern.csr_conv2d.default
csr_conv2d_input_grad = torch.ops.sparsekern.csr_conv2d_input_grad.default
csr_conv2d_weight_grad = torch.ops.sparsekern.csr_conv2d_weight_grad.default


# --------------------------------------------------------------------------------------------- autograd
# y = A_W x (+ b) with A_W linear in W and in x: dx = A_Wᵀ dy (input_grad), dW = ∂⟨A_W x, dy⟩/∂W at kept
# weights (weight_grad). input_grad is linear in (grad, W) and weight_grad bilinear in (grad, x), so their
# gradients are the three ops again. The formulas do not depend on how W is stored, so the block-sparse
# family (_ops_conv_bsr.py) registers the same ones over its own three ops.

def register_conv_autograd(family: str, conv, input_grad, weight_grad) -> None:
    """Registers the autograd of ``sparsekern::{family}_conv2d``, ``..._input_grad`` and ``..._weight_grad``,
    each gradient written with the three ops ``conv``, ``input_grad`` and ``weight_grad``."""

    def conv2d_setup(ctx, inputs, output):
        x, values, *layout, bias, kernel_size, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, values, *layout)
        ctx.geometry = (kernel_size, stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def conv2d_backward(ctx, grad):
        x, values, *layout = ctx.saved_tensors
        d_x = d_values = d_bias = None
        if ctx.needs_input_grad[0]:
            d_x = input_grad(grad, values, *layout, list(x.shape[2:]), *ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_values = weight_grad(grad, x, *layout, *ctx.geometry)
        if ctx.has_bias and ctx.needs_input_grad[8]:
            d_bias = grad.sum((0, 2, 3))
        return (d_x, d_values, *([None] * 6), d_bias, None, None, None, None, None)

    def input_grad_setup(ctx, inputs, output):
        grad, values, *layout, input_size, kernel_size, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(grad, values, *layout)
        ctx.geometry = (kernel_size, stride, padding, dilation, groups)

    def input_grad_backward(ctx, gg):
        grad, values, *layout = ctx.saved_tensors
        d_grad = d_values = None
        if ctx.needs_input_grad[0]:
            d_grad = conv(gg, values, *layout, None, *ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_values = weight_grad(grad, gg, *layout, *ctx.geometry)
        return (d_grad, d_values, *([None] * 6), None, None, None, None, None, None)

    def weight_grad_setup(ctx, inputs, output):
        grad, x, *layout, kernel_size, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(grad, x, *layout)
        ctx.geometry = (kernel_size, stride, padding, dilation, groups)

    def weight_grad_backward(ctx, gv):
        grad, x, *layout = ctx.saved_tensors
        gv = gv.contiguous()
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = conv(x, gv, *layout, None, *ctx.geometry)
        if ctx.needs_input_grad[1]:
            d_x = input_grad(grad, gv, *layout, list(x.shape[2:]), *ctx.geometry)
        return (d_grad, d_x, *([None] * 6), None, None, None, None, None)

    name = f"sparsekern::{family}_conv2d"
    torch.library.register_autograd(name, conv2d_backward, setup_context=conv2d_setup, lib=_lib)
    torch.library.register_autograd(name + "_input_grad", input_grad_backward, setup_context=input_grad_setup,
                                    lib=_lib)
    torch.library.register_autograd(name + "_weight_grad", weight_grad_backward, setup_context=weight_grad_setup,
                                    lib=_lib)


register_conv_autograd("csr", csr_conv2d, csr_conv2d_input_grad, csr_conv2d_weight_grad)
