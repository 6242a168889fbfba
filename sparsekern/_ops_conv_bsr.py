"""The block-sparse convolution family of the op registry: schemas, checks, fakes, references and autograd.

Registered on the same ``sparsekern`` library as ``_ops.py`` (which imports this module after
``_ops_conv.py``); the CSR family's file holds the conventions this one shares (NCHW activations of any
strides, symmetric zero padding, a closed op set whose gradients are the three ops again).

    bsr_conv2d(x, values, layout..., bias?, kernel_size, stride, padding, dilation, groups)
        -> y (N, C_out, OH, OW) = conv2d(x, W) + bias                              forward
    bsr_conv2d_input_grad(grad, values, layout..., input_size, kernel_size, ...)
        -> dx (N, C_in, H, W)                                                       input gradient
    bsr_conv2d_weight_grad(grad, x, layout..., kernel_size, ...)
        -> dW at the kept blocks (nnzb, bh, bw)                                    weight gradient (SDDMM)

**The weight is viewed tap-major**: ``W.permute(0, 2, 3, 1).reshape(C_out, kH·kW·Cg)`` (Cg = C_in/groups),
column ``t·Cg + c`` for tap ``t = kh·kW + kw`` and input channel ``c`` of the group, and that matrix is a
BSR matrix of ``(bh, bw)`` blocks (``BSRLayout.from_mask(mask.permute(0, 2, 3, 1).reshape(C_out, -1),
(bh, bw))``), ``values`` its kept blocks in block order. ``bh`` divides ``C_out/groups`` and ``bw`` divides
``Cg``, so a block is bh output channels of one group times bw input channels at one tap: the tile an
implicit-GEMM kernel multiplies with bw channels of the input shifted by that tap (the Triton kernels,
sparsekern/triton/bsr_conv2d.py, on CUDA). The CSR family views the weight channel-major instead, as
``F.unfold`` orders its rows; there a block of consecutive columns would mix channels and taps.

**Memory format**: y is channels_last when x is (``activation_format``), dx when grad is, otherwise
contiguous NCHW: a channels_last network stays channels_last, the layout in which the GPU kernels' gathers
along the channels are contiguous (and cuDNN's preferred one).

Every device runs the reference (``reference.bsr_conv2d*``, unfold-based) unless a kernel is registered for
its dispatch key; on CPU, ``SparseConv2d`` runs a block mask through the CSR conv kernels instead.
"""
from __future__ import annotations

import torch

from . import reference
from .reference import activation_format
from ._ops import _LAYOUT_ARGS, _check_layout, _check_values_dtype, _lib
from ._ops_conv import (_GEOMETRY, _check_activation, _check_bias, _check_geometry_args, _check_output_size,
                        _check_input_grad_activations, _check_weight_grad_activations, register_conv_autograd,
                        register_conv_references)

SCHEMAS = {
    "bsr_conv2d": f"(Tensor x, Tensor values, {_LAYOUT_ARGS}, Tensor? bias, {_GEOMETRY}) -> Tensor",
    "bsr_conv2d_input_grad": f"(Tensor grad, Tensor values, {_LAYOUT_ARGS}, int[2] input_size, {_GEOMETRY}) -> Tensor",
    "bsr_conv2d_weight_grad": f"(Tensor grad, Tensor x, {_LAYOUT_ARGS}, {_GEOMETRY}) -> Tensor",
}
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


# ----------------------------------------------------------------------------------------------- checks

def _check_block_geometry(layout, bh, bw, kernel_size, stride, padding, dilation, groups):
    """Validates the geometry against the block layout; returns (C_out, C_in) of the convolution."""
    _check_geometry_args(kernel_size, stride, padding, dilation, groups)
    n_block_rows, n_block_cols, _ = _check_layout(*layout)
    if n_block_rows < 1 or n_block_cols < 1:
        raise ValueError(f"layout: expected a grid of at least one block row and column, got "
                         f"{n_block_rows}x{n_block_cols}")
    c_out, columns = n_block_rows * bh, n_block_cols * bw
    taps = kernel_size[0] * kernel_size[1]
    if columns % taps:
        raise ValueError(f"layout: its {columns} columns ({n_block_cols} blocks of {bw}) are not a multiple of "
                         f"kH·kW = {taps} (kernel {list(kernel_size)}): not a tap-major (C_out, kH·kW·C_in/groups) "
                         f"weight")
    group_channels = columns // taps
    if c_out % groups:
        raise ValueError(f"groups: {groups} does not divide the {c_out} output channels of the layout")
    if (c_out // groups) % bh:
        raise ValueError(f"values: block height {bh} does not divide the {c_out // groups} output channels of a "
                         f"group (C_out={c_out}, groups={groups})")
    if group_channels % bw:
        raise ValueError(f"values: block width {bw} does not divide the {group_channels} input channels of a group "
                         f"(a block must not straddle two kernel taps)")
    return c_out, group_channels * groups


def _check_block_values(values, layout):
    _check_values_dtype("values", values)
    nnzb = layout[1].shape[0]
    if values.dim() != 3 or values.shape[0] != nnzb or min(values.shape[1:]) < 1:
        raise ValueError(f"values: expected (nnzb={nnzb}, bh, bw) blocks, got shape {tuple(values.shape)}")
    return values.shape[1], values.shape[2]


def _check_bsr_conv(x, values, layout, bias, kernel_size, stride, padding, dilation, groups):
    """Checks a bsr_conv2d call; returns the output shape (N, C_out, OH, OW)."""
    bh, bw = _check_block_values(values, layout)
    c_out, c_in = _check_block_geometry(layout, bh, bw, kernel_size, stride, padding, dilation, groups)
    _check_activation("x", x, values.dtype, c_in)
    _check_bias(bias, values.dtype, c_out)
    return (x.shape[0], c_out, *_check_output_size(x.shape[2:], kernel_size, stride, padding, dilation))


def _check_bsr_conv_input_grad(grad, values, layout, input_size, kernel_size, stride, padding, dilation, groups):
    """Checks a bsr_conv2d_input_grad call; returns dx's shape (N, C_in, H, W)."""
    bh, bw = _check_block_values(values, layout)
    c_out, c_in = _check_block_geometry(layout, bh, bw, kernel_size, stride, padding, dilation, groups)
    _check_input_grad_activations(grad, values.dtype, c_out, input_size, kernel_size, stride, padding, dilation)
    return (grad.shape[0], c_in, *input_size)


def _check_bsr_conv_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups):
    """Checks a bsr_conv2d_weight_grad call; returns dW's shape (nnzb, bh, bw), the blocks read off the
    channel counts: bh = C_out / block rows, bw = kH·kW·C_in/groups / block columns. (The schema carries no
    block size, as bsr_sddmm's does not: channel counts that are other multiples of the grid give other
    blocks. Autograd always passes the forward's tensors.)"""
    _check_geometry_args(kernel_size, stride, padding, dilation, groups)
    n_block_rows, n_block_cols, nnzb = _check_layout(*layout)
    _check_values_dtype("x", x)
    for name, t in (("x", x), ("grad", grad)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D (N, C, H, W) tensor, got shape {tuple(t.shape)}")
    taps = kernel_size[0] * kernel_size[1]
    if x.shape[1] % groups:
        raise ValueError(f"x: groups={groups} does not divide its {x.shape[1]} channels")
    columns = taps * (x.shape[1] // groups)
    if n_block_rows < 1 or grad.shape[1] % n_block_rows:
        raise ValueError(f"grad: {grad.shape[1]} channels do not split into the layout's {n_block_rows} block rows")
    if n_block_cols < 1 or columns % n_block_cols:
        raise ValueError(f"x: kH·kW·C_in/groups = {columns} columns do not split into the layout's {n_block_cols} "
                         f"block columns")
    bh, bw = grad.shape[1] // n_block_rows, columns // n_block_cols
    c_out, c_in = _check_block_geometry(layout, bh, bw, kernel_size, stride, padding, dilation, groups)
    _check_weight_grad_activations(grad, x, c_in, c_out, kernel_size, stride, padding, dilation)
    return (nnzb, bh, bw)


# ------------------------------------------------------------------------------------ reference and fakes

register_conv_references("bsr", (_check_bsr_conv, _check_bsr_conv_input_grad, _check_bsr_conv_weight_grad),
                         (reference.bsr_conv2d, reference.bsr_conv2d_input_grad, reference.bsr_conv2d_weight_grad),
                         output_format=activation_format)

bsr_conv2d = torch.ops.sparsekern.bsr_conv2d.default
bsr_conv2d_input_grad = torch.ops.sparsekern.bsr_conv2d_input_grad.default
bsr_conv2d_weight_grad = torch.ops.sparsekern.bsr_conv2d_weight_grad.default


# The CSR family's formulas (they do not depend on how W is stored), over the three block ops.
register_conv_autograd("bsr", bsr_conv2d, bsr_conv2d_input_grad, bsr_conv2d_weight_grad)
