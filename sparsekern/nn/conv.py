"""SparseConv2d: a drop-in ``nn.Conv2d`` whose pruned weights are never stored, multiplied or updated.

Trainable state is ``weight_values`` (one entry per kept weight, in the mask's row-major order, i.e.
``dense_weight[mask]``) and ``bias``; gradients and optimizer state are therefore sized by the kept count.
The ``mask`` buffer (bool, of the weight's shape ``(C_out, C_in/groups, kH, kW)``) is saved with the
state_dict; the layout index tensors are derived from it (non-persistent buffers, rebuilt whenever the mask
changes).

The sparse path is one op, ``sparsekern::csr_conv2d`` (``_ops_conv.py``): the weight viewed as the CSR matrix
``(C_out, C_in/groups · kH · kW)``, convolved with NCHW activations of any strides; its autograd runs the
input-gradient and the weight-gradient (SDDMM, kept positions only) ops. The op pads symmetrically, so the
module pads the extra bottom/right pixel of an asymmetric ``padding="same"`` itself.

With ``block_size=(bh, bw)`` the mask is made of whole blocks of ``bh`` output × ``bw`` input channels at one
kernel tap (the weight viewed tap-major, ``_ops_conv_bsr.py``). On CUDA tensors the sparse path is then
``sparsekern::bsr_conv2d`` (Triton implicit-GEMM kernels, ``sparsekern/triton/bsr_conv2d.py``); on CPU,
where the CSR conv kernels are the fast ones, the same mask runs ``csr_conv2d``. Both layouts are built once
per mask; the kept values stay in the mask's row-major order (``weight_values``) and are gathered into block
order by ``sparsekern::permute``, whose gradient scatters them back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension, _ops
from ..layout import BSRLayout, CSRLayout
from ..validation import LAYER_DTYPES, check_mask
from .backend import check_backend, conv_min_sparsity, depthwise_kernels_serve, resolve_backend
from .dense_fallback import DenseMaskedConv2d, prefers_functional_fallback
from .kept_weights import LAYOUT_BUFFERS, KeptWeightsModule


class SparseConv2d(KeptWeightsModule):
    """``y = conv2d(x, W) + b`` with ``W`` zero outside ``mask``; the zeros are skipped in all three products.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, device, dtype: as for
            ``nn.Conv2d`` (ints or pairs; ``padding`` also ``"valid"`` or ``"same"``, the latter with stride 1).
        padding_mode: only ``"zeros"`` is supported.
        mask: bool (or 0/1) tensor of the weight's shape ``(out_channels, in_channels // groups, kH, kW)``;
            ``True`` keeps a weight. ``None`` keeps every weight.
        block_size: ``None`` for any mask, or ``(bh, bw)`` / ``b`` when the mask is made of whole blocks of
            ``bh`` output channels × ``bw`` input channels at each kernel tap (``mask[o:o+bh, c:c+bw, kh, kw]``
            all kept or all pruned, ``o``, ``c`` multiples of bh, bw); ``bh`` must divide
            ``out_channels // groups`` and ``bw`` ``in_channels // groups``. CUDA tensors then run the
            block-sparse Triton kernels; CPU tensors run the CSR kernels as for any mask.
        backend: ``"auto"`` (sparse kernels at and above the crossover sparsity for the layer's shape and input
            size, dense below; ``min_sparsity()``, backend.conv_min_sparsity),
            ``"sparse"`` (``sparsekern::csr_conv2d``) or ``"dense"`` (the named dense fallback: the kept values
            expanded into a dense weight by ``csr_to_dense``, then ``F.conv2d``).

    Input ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, of the layer's dtype (float32/float64; float16 and
    bfloat16 too on CUDA and with the dense backend), any strides → output
    ``(N, C_out, OH, OW)`` (or ``(C_out, OH, OW)``), channels_last when the input is. Initialisation matches
    ``nn.Conv2d`` (Kaiming-uniform over the dense fan-in ``C_in/groups · kH · kW``), restricted to the kept
    weights.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 mask=None, block_size=None, backend: str = "auto", _skip_init: bool = False):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"groups: {name}={value} is not divisible by groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is supported, got {padding_mode!r}")
        dtype = dtype or torch.get_default_dtype()
        if dtype not in LAYER_DTYPES:
            raise TypeError(f"dtype: expected float32, float64, float16 or bfloat16, got {dtype}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = groups
        self.padding_mode = padding_mode
        # ``padding`` as nn.Conv2d keeps it (a pair or the string); the op gets the symmetric part and
        # ``_input_pad`` (F.pad's order: left, right, top, bottom) is what the module pads itself.
        self.padding, self._op_padding, self._input_pad = _padding(padding, self.kernel_size, self.stride,
                                                                   self.dilation)
        self.backend = check_backend(backend)
        self.block_size = None if block_size is None else _block_size(block_size, out_channels // groups,
                                                                     in_channels // groups)
        self._last_input_size = None  # (H, W) of the last input: "auto"'s crossover depends on the map size

        shape = self.weight_shape
        device = torch.device(device) if device is not None else torch.get_default_device()
        if mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=device)
        mask = check_mask(mask, "mask", shape=shape, device=device)

        self.register_buffer("mask", mask.contiguous())  # the kernels view it flat
        # _skip_init (from_dense): the values are about to be overwritten, so neither draw them nor advance
        # the global RNG.
        if _skip_init:
            self.weight_values = nn.Parameter(torch.empty(int(mask.sum()), device=device, dtype=dtype))
        else:
            dense = torch.empty(shape, device=device, dtype=dtype)
            nn.init.kaiming_uniform_(dense, a=math.sqrt(5))  # nn.Conv2d's init, then keep the masked entries
            self.weight_values = nn.Parameter(dense[mask])
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
            if not _skip_init:
                bound = 1 / math.sqrt(self._fan_in)
                nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)
        self._build_layout(mask)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """``(C_out, C_in/groups, kH, kW)``: the shape of ``mask`` and of ``dense_weight()``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def _fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    # ------------------------------------------------------------------------------------------ layout
    def _layout_buffers(self, mask: torch.Tensor) -> dict:
        """The kernel index buffers of ``mask`` (KeptWeightsModule installs them): the CSR layout, and with
        ``block_size`` the tap-major block layout too."""
        layout = CSRLayout.from_mask(mask.reshape(self.out_channels, -1))
        buffers = {"_layout_" + name: tensor for name, tensor in zip(LAYOUT_BUFFERS, layout.tensors())}
        if self.block_size is not None:
            blocks, to_blocks = _tap_major_blocks(mask, self.block_size)
            buffers.update({"_blocks_" + name: tensor for name, tensor in zip(LAYOUT_BUFFERS, blocks.tensors())})
            # weight_values[to_blocks] are the kept blocks in block order; from_blocks is the inverse.
            buffers["_values_to_blocks"] = to_blocks
            buffers["_values_from_blocks"] = torch.argsort(to_blocks)
        return buffers

    # ---------------------------------------------------------------------------------------- properties
    @property
    def layout_kind(self) -> str:
        """"conv2d_csr" (any mask) or "conv2d_bsr" (``block_size`` given): which kernels serve the layer on a
        GPU (on CPU both run the CSR conv kernels; the "auto" crossover there is backend.conv_min_sparsity)."""
        return "conv2d_csr" if self.block_size is None else "conv2d_bsr"

    def min_sparsity(self, input_size=None) -> float:
        """The sparsity from which ``backend="auto"`` runs the sparse kernels on CPU, for inputs of spatial size
        ``input_size`` (H, W); default: the last input this layer saw, or a 4x4 output map before any (the
        most conservative threshold)."""
        size = input_size if input_size is not None else self._last_input_size
        if size is None:
            pixels, own_kernels = 16, False
        else:
            extra = (0, 0) if self._input_pad is None else (self._input_pad[3], self._input_pad[1])
            padded = [s + e for s, e in zip(size, extra)]  # what the op sees
            out = _ops.conv_output_size(padded, self.kernel_size, self.stride, self._op_padding, self.dilation)
            pixels = out[0] * out[1]
            own_kernels = depthwise_kernels_serve(self.in_channels, self.out_channels, self.groups, padded, out,
                                                  self.kernel_size, self.stride, self._op_padding, self.dilation)
        return conv_min_sparsity(self.kernel_size, self.stride, self.groups, self.in_channels, pixels,
                                 depthwise_kernels=own_kernels)

    def resolved_backend(self, device_type: str | None = None, input_size=None) -> str:
        """What ``backend`` means for this layer on ``device_type`` (default: where the weights are) and inputs
        of spatial size ``input_size`` (default: the last input seen)."""
        device_type = device_type or self.weight_values.device.type
        if self.backend == "auto" and device_type == "cuda" and self.groups > 1 and not self._runs_block_kernels(
                device_type):
            return "dense"  # the CSR conv lowering of conv_im2col.py serves groups == 1 only: the rest is reference
        kind = self.layout_kind if device_type != "cuda" or self._runs_block_kernels(device_type) else "conv2d_csr"
        return resolve_backend(self.backend, kind, self.sparsity, device_type, self.min_sparsity(input_size))

    def dense_weight(self) -> torch.Tensor:
        """The ``(C_out, C_in/groups, kH, kW)`` weight with zeros at pruned positions (differentiable).

        For inspection, export and the dense backend; the sparse path never calls it.
        """
        if self.nnz == self.mask.numel():
            return self.weight_values.view(self.weight_shape)
        dense = _ops.csr_to_dense(self.weight_values, self._layout_row_offsets, self._layout_col_indices,
                                  self._fan_in)
        return dense.view(self.weight_shape)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self._last_input_size = tuple(x.shape[-2:])  # before the module's own "same" padding
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        # nn.Conv2d returns channels_last for a channels_last input; the op always writes NCHW.
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self._input_pad is not None:
            x = F.pad(x, self._input_pad)
        if self.resolved_backend(x.device.type) == "dense":
            y = self._dense_forward(x)
        else:
            y = self._sparse_forward(x)
        if channels_last:  # a no-op where F.conv2d already returned channels_last
            y = y.contiguous(memory_format=torch.channels_last)
        return y.squeeze(0) if unbatched else y

    def _geometry(self):
        return (list(self.kernel_size), list(self.stride), list(self._op_padding), list(self.dilation), self.groups)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The named dense fallback (dense_fallback.py): the kept values expanded into a reused dense weight,
        F.conv2d, and ATen's convolution backward whose weight gradient is gathered back at the kept positions.
        Under torch.compile, with every weight kept, and for small weights on CPU (prefers_functional_fallback)
        the functional csr_to_dense + F.conv2d instead."""
        if (self.nnz == self.mask.numel() or torch.compiler.is_compiling()
                or prefers_functional_fallback(self.mask.numel(), x.device.type)):
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self._op_padding, self.dilation,
                            self.groups)
        mask2d = self.mask.view(self.out_channels, -1)
        weight = self._dense_cache.weight(self.weight_values, self._layout_row_offsets, mask2d)
        return DenseMaskedConv2d.apply(x, self.weight_values, self.bias, weight.view(self.weight_shape),
                                       self._layout_row_offsets, self._layout_col_indices, mask2d,
                                       (self.stride, self._op_padding, self.dilation, self.groups))

    def _sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runs_block_kernels(x.device.type):
            return self._block_forward(x)
        return _ops.csr_conv2d(x, self.weight_values, *self._layout_tensors(), self.bias, *self._geometry())

    def _runs_block_kernels(self, device_type: str) -> bool:
        """Whether the sparse path takes the block-sparse ops: for a block mask on CUDA where their Triton
        kernels are registered. Not on CPU, where the CSR conv kernels are the compiled ones, and not on a
        CUDA install without the Triton kernels, where the CSR path (CUDA C++) serves the same mask."""
        return (self.block_size is not None and device_type == "cuda"
                and _extension.has_compiled_kernels("cuda", "conv2d_bsr"))

    def _block_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sparsekern::bsr_conv2d`` over the tap-major blocks (any device; the reference where no kernel)."""
        blocks = _ops.permute(self.weight_values, self._values_to_blocks, self._values_from_blocks)
        layout = tuple(getattr(self, "_blocks_" + name) for name in LAYOUT_BUFFERS)
        return _ops.bsr_conv2d(x, blocks.view(-1, *self.block_size), *layout, self.bias, *self._geometry())

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (3, 4):
            raise ValueError(f"input: expected a 4-D (N, C_in, H, W) or 3-D (C_in, H, W) tensor, got shape "
                             f"{tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected in_channels={self.in_channels} channels (dim {x.dim() - 3}), got "
                             f"shape {tuple(x.shape)}")
        if x.dtype != self.weight_values.dtype:
            raise TypeError(f"input: expected dtype {self.weight_values.dtype} (the layer's), got {x.dtype}")
        if x.device != self.weight_values.device:
            raise ValueError(f"input: expected a tensor on {self.weight_values.device}, got one on {x.device}")
        extra = (0, 0) if self._input_pad is None else (self._input_pad[3], self._input_pad[1])
        size = [s + e for s, e in zip(x.shape[-2:], extra)]
        out = _ops.conv_output_size(size, self.kernel_size, self.stride, self._op_padding, self.dilation)
        if min(out) < 1:
            raise ValueError(f"input: spatial size {tuple(x.shape[-2:])} is too small for kernel_size="
                             f"{self.kernel_size}, dilation={self.dilation}, padding={self.padding} (output "
                             f"size {tuple(out)})")

    # ------------------------------------------------------------------------------------ dense interop
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask=None, *, block_size=None, backend: str = "auto") -> "SparseConv2d":
        """A SparseConv2d holding ``conv``'s weights at the kept positions of ``mask`` (and its bias).

        ``mask=None`` keeps every weight (as ``SparseLinear.from_dense`` does), zeros included.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        weight = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=weight.device, dtype=weight.dtype, mask=mask, block_size=block_size, backend=backend,
                    _skip_init=True)
        with torch.no_grad():
            layer.weight_values.copy_(weight[layer.mask])
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same function (zeros at pruned positions)."""
        weight = self.weight_values
        # skip_init: every value is overwritten below, so no random init (and no draw from the global RNG).
        conv = torch.nn.utils.skip_init(nn.Conv2d, self.in_channels, self.out_channels, self.kernel_size,
                                        stride=self.stride, padding=self.padding, dilation=self.dilation,
                                        groups=self.groups, bias=self.bias is not None,
                                        padding_mode=self.padding_mode, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        block = "" if self.block_size is None else f", block_size={self.block_size}"
        return s + f", bias={self.bias is not None}, density={self.density:.4f}{block}, backend={self.backend!r}"


# -------------------------------------------------------------------------------------- argument parsing

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value, name: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= low, as a pair (nn.Conv2d's ``_pair`` plus the range check)."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) for v in pair)):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(pair) < low:
        raise ValueError(f"{name}: expected values >= {low}, got {value!r}")
    return tuple(pair)


def _padding(padding, kernel_size, stride, dilation):
    """(padding as nn.Conv2d stores it, the op's symmetric padding, F.pad's extra input padding or None).

    ``"same"`` pads ``d·(k−1)`` in total per dimension, half on each side and, when that is odd, the extra
    pixel at the bottom/right, as torch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return padding, (0, 0), None
        if padding != "same":
            raise ValueError(f"padding: expected 'valid', 'same', an int or a pair of ints, got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding: 'same' is not supported for strided convolutions (stride={stride})")
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        symmetric = tuple(t // 2 for t in total)
        extra_h, extra_w = (t % 2 for t in total)
        return padding, symmetric, ((0, extra_w, 0, extra_h) if extra_h or extra_w else None)
    pair = _pair(padding, "padding", 0)
    return pair, pair, None


def _block_size(value, group_out: int, group_in: int) -> tuple[int, int]:
    """``block_size`` as (bh, bw), checked against the channels of a group: a block never straddles groups."""
    bh, bw = _pair(value, "block_size", 1)
    if group_out % bh or group_in % bw:
        raise ValueError(f"block_size: ({bh}, {bw}) must divide the (out, in) channels of a group, "
                         f"({group_out}, {group_in})")
    return bh, bw


def _tap_major_blocks(mask: torch.Tensor, block_size) -> tuple[BSRLayout, torch.Tensor]:
    """The BSR layout of the tap-major weight view (``_ops_conv_bsr.py``), and the gather that takes the kept
    values from the mask's row-major order (``dense[mask]``) to that layout's block order."""
    c_out = mask.shape[0]
    tap_major = mask.permute(0, 2, 3, 1).reshape(c_out, -1)
    grid = _partial_blocks(mask, block_size)
    if grid is not None:
        (o, c, kh, kw), (bh, bw) = grid, block_size
        raise ValueError(f"mask: with block_size={tuple(block_size)} it must be made of whole blocks of {bh} output x "
                         f"{bw} input channels at each kernel tap, but mask[{o}:{o + bh}, {c}:{c + bw}, {kh}, {kw}] "
                         f"is partly kept")
    layout = BSRLayout.from_mask(tap_major, block_size)
    rank = torch.full(mask.shape, -1, dtype=torch.int64, device=mask.device)
    rank[mask] = torch.arange(int(mask.sum()), device=mask.device)
    ranks_tap_major = rank.permute(0, 2, 3, 1).reshape(c_out, -1)[tap_major]  # kept ones, tap-major order
    return layout, ranks_tap_major[layout.from_elements]


def _partial_blocks(mask: torch.Tensor, block_size):
    """(first output channel, first input channel, kh, kw) of the first partly kept block, or None."""
    bh, bw = block_size
    c_out, c_in, kh, kw = mask.shape
    blocks = mask.view(c_out // bh, bh, c_in // bw, bw, kh, kw)
    partial = blocks.any(dim=(1, 3)) & ~blocks.all(dim=(1, 3))
    if not bool(partial.any()):
        return None
    o, c, i, j = partial.nonzero()[0].tolist()
    return o * bh, c * bw, i, j
