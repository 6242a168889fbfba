"""What every sparse module shares: its trainable state is the kept weights only.

A subclass holds ``weight_values`` (Parameter, one entry per kept weight in the mask's row-major order),
``mask`` (bool buffer of the dense weight's shape), ``backend``, ``layout_kind`` (its key in
backend.LINEAR_MIN_SPARSITY), ``dense_weight()`` and ``_layout_buffers(mask)``, which derives the layout's
index tensors from a mask (the buffers ``_layout_<name>`` for ``name`` in ``LAYOUT_BUFFERS``, and whatever
else the subclass's kernels need) and raises on a mask the layer cannot take. This base adds the mask's
life cycle (``set_mask``, checkpoints holding a different mask, dense checkpoints), the counts and the
backend resolution, written once for SparseLinear and SparseConv2d. A new mask's buffers are all derived
before anything is replaced, so a mask that is refused leaves the layer as it was.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_mask
from .backend import resolve_backend
from .dense_fallback import DenseWeightCache

# The layout tensors every sparse op takes (CSRLayout.tensors(), or a BSR layout's block-grid CSR), in order.
LAYOUT_BUFFERS = ("row_offsets", "col_indices", "t_row_offsets", "t_col_indices", "t_perm", "t_perm_inv")


class KeptWeightsModule(nn.Module):
    def _layout_tensors(self):
        buffers = self._buffers  # read directly: nn.Module.__getattr__ is a slow fallback, once per layer call
        return tuple(buffers["_layout_" + name] for name in LAYOUT_BUFFERS)

    def _build_layout(self, mask: torch.Tensor) -> None:
        """Derive the kernel index buffers from ``mask`` (once per mask, never per step) and install them."""
        self._install_layout(self._layout_buffers(mask))

    def _install_layout(self, buffers: dict) -> None:
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor, persistent=False)
        self._dense_cache = DenseWeightCache()  # the dense fallback's weight; its zeros follow the new mask

    def set_mask(self, mask) -> None:
        """Replace the mask: weights kept in both masks keep their values, newly kept weights start at 0.

        The ``weight_values`` Parameter object stays the same (its data is resized), so rebuild optimizer
        state after calling this.
        """
        mask = check_mask(mask, "mask", shape=tuple(self.mask.shape), device=self.mask.device)
        buffers = self._layout_buffers(mask)  # may refuse the mask: before anything changes
        new_values = self.dense_weight().detach()[mask]
        self.mask = mask.clone(memory_format=torch.contiguous_format)  # the kernels view it flat
        self._install_layout(buffers)
        self.weight_values.data = new_values

    @property
    def nnz(self) -> int:
        return self.weight_values.numel()

    @property
    def density(self) -> float:
        total = self.mask.numel()
        return self.nnz / total if total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def resolved_backend(self, device_type: str | None = None) -> str:
        """What ``backend`` means for this layer on ``device_type`` (default: where the weights are)."""
        device_type = device_type or self.weight_values.device.type
        return resolve_backend(self.backend, self.layout_kind, self.sparsity, device_type)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        mask_key, values_key, dense_key = prefix + "mask", prefix + "weight_values", prefix + "weight"
        if mask_key in state_dict:
            mask = check_mask(state_dict[mask_key], mask_key, shape=self.mask.shape)
            if not torch.equal(mask.to(self.mask.device), self.mask):
                mask = mask.to(self.mask.device).clone(memory_format=torch.contiguous_format)
                buffers = self._layout_buffers(mask)
                self.mask = mask
                self._install_layout(buffers)
                self.weight_values.data = self.weight_values.data.new_empty(int(self.mask.sum()))
        if dense_key in state_dict and values_key not in state_dict:
            # A dense checkpoint (nn.Linear / nn.Conv2d): keep its weights at this layer's kept positions.
            dense = state_dict.pop(dense_key)
            if tuple(dense.shape) != tuple(self.mask.shape):
                error_msgs.append(f"{dense_key}: expected shape {tuple(self.mask.shape)}, got {tuple(dense.shape)}")
                return
            state_dict[values_key] = dense.to(self.mask.device)[self.mask]
            state_dict.setdefault(mask_key, self.mask)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
