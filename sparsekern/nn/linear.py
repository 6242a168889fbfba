"""SparseLinear: a drop-in ``nn.Linear`` whose pruned weights are never stored, multiplied or updated.

Trainable state is ``weight_values`` (one entry per kept weight, in the mask's row-major order, i.e.
``dense_weight[mask]``) and ``bias``; gradients and optimizer state are therefore sized by the kept count.
The ``mask`` buffer (bool, weight-shaped) is saved with the state_dict; the layout index tensors are derived
from it (non-persistent buffers, rebuilt whenever the mask changes).

The sparse kernels work on feature-major activations: the layer transposes its input to ``(in, B)``
(``sparsekern::transpose``, AVX-512 register blocks), and the SpMM writes ``Y = X Wᵀ + b`` back in the
ordinary ``(B, out)`` layout one cache-resident tile at a time, as the input-gradient SpMM writes ``dX``.
So the layer takes and returns contiguous ``(B, ...)`` tensors like ``nn.Linear``; see ``_ops.csr_linear``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ops
from ..layout import BSRLayout, CSRLayout
from ..validation import LAYER_DTYPES, check_mask
from .backend import check_backend
from .dense_fallback import DenseMaskedLinear, prefers_functional_fallback
from .kept_weights import LAYOUT_BUFFERS, KeptWeightsModule


class SparseLinear(KeptWeightsModule):
    """``y = x Wᵀ + b`` with ``W`` zero outside ``mask``; the zeros are skipped in all three GEMMs.

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.
        mask: bool (or 0/1) tensor of shape ``(out_features, in_features)``; ``True`` keeps a weight.
            ``None`` keeps every weight.
        block_size: ``None`` for an unstructured mask (CSR kernels), or ``(bh, bw)`` / ``b`` when the mask is
            made of whole ``bh×bw`` blocks (BSR kernels); ``bh``/``bw`` must divide the weight's shape.
        backend: ``"auto"`` (sparse kernels above the measured crossover sparsity, dense below),
            ``"sparse"`` or ``"dense"`` (the named dense fallback: expand the kept values into a dense weight,
            dense GEMMs; see dense_fallback.py).

    Input ``(*, in_features)`` float32/float64 → output ``(*, out_features)``. Initialisation matches
    ``nn.Linear`` (Kaiming-uniform over the dense fan-in), restricted to the kept weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 mask=None, block_size=None, backend: str = "auto", _skip_init: bool = False):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
        dtype = dtype or torch.get_default_dtype()
        if dtype not in LAYER_DTYPES:
            raise TypeError(f"dtype: expected float32, float64, float16 or bfloat16, got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.backend = check_backend(backend)
        self.block_size = None if block_size is None else _pair(block_size)
        shape = (out_features, in_features)
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
            nn.init.kaiming_uniform_(dense, a=math.sqrt(5))  # nn.Linear's init, then keep the masked entries
            self.weight_values = nn.Parameter(dense[mask])
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
            if not _skip_init:
                bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)
        self._build_layout(mask)

    # ------------------------------------------------------------------------------------------ layout
    def _layout_buffers(self, mask: torch.Tensor) -> dict:
        """The kernel index buffers of ``mask`` (KeptWeightsModule installs them)."""
        elements = CSRLayout.from_mask(mask)  # element-level CSR: the dense fallback's index
        if self.block_size is None:
            tensors, from_elements = elements.tensors(), None
        else:
            layout = BSRLayout.from_mask(mask, self.block_size)
            tensors, from_elements = layout.tensors(), layout.from_elements
        buffers = {"_layout_" + name: tensor for name, tensor in zip(LAYOUT_BUFFERS, tensors)}
        # BSR: from_elements (row-major kept values -> block order) as a gather of whole runs. A mask of whole
        # blocks keeps each block's bw columns of one row next to each other in row-major order, at an offset
        # that is a multiple of bw, so block order is a permutation of the rows of values.view(-1, bw): one
        # bw-long copy each, not bw single gathers.
        from_runs = to_runs = None
        if from_elements is not None:
            from_runs = from_elements.view(-1, self.block_size[1])[:, 0] // self.block_size[1]
            to_runs = torch.argsort(from_runs)  # its inverse
        buffers["_layout_from_runs"] = from_runs
        buffers["_layout_to_runs"] = to_runs
        buffers["_element_row_offsets"] = None if self.block_size is None else elements.row_offsets
        buffers["_element_col_indices"] = None if self.block_size is None else elements.col_indices
        return buffers

    # ---------------------------------------------------------------------------------------- properties
    @property
    def layout_kind(self) -> str:
        return "csr" if self.block_size is None else "bsr"

    def dense_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weight with zeros at pruned positions (differentiable).

        For inspection, export and the dense backend; the sparse path never calls it.
        """
        if self.nnz == self.mask.numel():
            return self.weight_values.view(self.out_features, self.in_features)
        return _ops.csr_to_dense(self.weight_values, *self._element_index(), self.in_features)

    def _element_index(self):
        """Element-level CSR (row_offsets, col_indices) of the mask: the CSR layout itself, or for BSR its own."""
        if self.block_size is None:
            return self._layout_row_offsets, self._layout_col_indices
        return self._element_row_offsets, self._element_col_indices

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        leading = x.shape[:-1]
        x2d = x.reshape(math.prod(leading), self.in_features)
        if self.resolved_backend(x.device.type) == "dense":
            y2d = self._dense_forward(x2d)
        else:
            y2d = self._sparse_forward(x2d)
        return y2d.reshape(*leading, self.out_features)

    def _dense_forward(self, x2d: torch.Tensor) -> torch.Tensor:
        """The named dense fallback (dense_fallback.py); functional under torch.compile and for small weights."""
        if (self.nnz == self.mask.numel() or torch.compiler.is_compiling()
                or prefers_functional_fallback(self.mask.numel(), x2d.device.type)):
            return F.linear(x2d, self.dense_weight(), self.bias)
        index = self._element_index()
        weight = self._dense_cache.weight(self.weight_values, index[0], self.mask)
        return DenseMaskedLinear.apply(x2d, self.weight_values, self.bias, weight, *index, self.mask)

    def _sparse_forward(self, x2d: torch.Tensor) -> torch.Tensor:
        # One op per layer (_ops.csr_linear / bsr_linear): it transposes x to feature-major for the kernels,
        # which write the (B, out_features) output, bias added, and in the backward dx, batch-major.
        layout = self._layout_tensors()
        if self.block_size is None:
            return _ops.csr_linear(x2d, self.weight_values, *layout, self.bias)[0]
        bh, bw = self.block_size
        runs = self.weight_values.view(-1, bw)
        blocks = _ops.permute(runs, self._layout_from_runs, self._layout_to_runs).view(-1, bh, bw)
        return _ops.bsr_linear(x2d, blocks, *layout, self.bias)[0]

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input: expected last dimension in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != self.weight_values.dtype:
            raise TypeError(f"input: expected dtype {self.weight_values.dtype} (the layer's), got {x.dtype}")
        if x.device != self.weight_values.device:
            raise ValueError(f"input: expected a tensor on {self.weight_values.device}, got one on {x.device}")

    # ------------------------------------------------------------------------------------ dense interop
    @classmethod
    def from_dense(cls, linear: nn.Linear, mask=None, *, block_size=None, backend: str = "auto") -> "SparseLinear":
        """A SparseLinear holding ``linear``'s weights at the kept positions of ``mask`` (and its bias)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype, mask=mask, block_size=block_size, backend=backend,
                    _skip_init=True)
        with torch.no_grad():
            layer.weight_values.copy_(weight[layer.mask])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same function (zeros at pruned positions)."""
        weight = self.weight_values
        # skip_init: every value is overwritten below, so no random init (and no draw from the global RNG).
        linear = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        block = "" if self.block_size is None else f", block_size={self.block_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density:.4f}{block}, backend={self.backend!r}")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    try:
        bh, bw = value
        return (int(bh), int(bw))
    except (TypeError, ValueError):
        raise TypeError(f"block_size: expected an int or a pair of ints, got {value!r}") from None
