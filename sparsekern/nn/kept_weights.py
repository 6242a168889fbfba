"""What every sparse module shares: its trainable state is the kept weights only.

A subclass holds ``weight_values`` (Parameter, one entry per kept weight in the mask's row-major order),
``mask`` (bool buffer of the dense weight's shape), ``backend``, ``layout_kind`` (its key in
backend.CPU_MIN_SPARSITY), ``dense_weight()`` and ``_build_layout(mask)``, which registers the layout's
index tensors as the buffers ``_layout_<name>`` for ``name`` in ``LAYOUT_BUFFERS``. This base adds the
mask's life cycle (``set_mask``, checkpoints holding a different mask, dense checkpoints), the counts and
the backend resolution, written once for SparseLinear and SparseConv2d.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_mask
from .backend import resolve_backend

# The layout tensors every sparse op takes (CSRLayout.tensors(), or a BSR layout's block-grid CSR), in order.
LAYOUT_BUFFERS = ("row_offsets", "col_indices", "t_row_offsets", "t_col_indices", "t_perm", "t_perm_inv")


class KeptWeightsModule(nn.Module):
    def _layout_tensors(self):
        buffers = self._buffers  # read directly: nn.Module.__getattr__ is a slow fallback, once per layer call
        return tuple(buffers["_layout_" + name] for name in LAYOUT_BUFFERS)

    def set_mask(self, mask) -> None:
        """Replace the mask: weights kept in both masks keep their values, newly kept weights start at 0.

        The ``weight_values`` Parameter object stays the same (its data is resized), so rebuild optimizer
        state after calling this.
        """
        mask = check_mask(mask, "mask", shape=tuple(self.mask.shape), device=self.mask.device)
        new_values = self.dense_weight().detach()[mask]
        self.mask = mask.clone()
        self._build_layout(self.mask)
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
                self.mask = mask.to(self.mask.device).clone()
                self._build_layout(self.mask)
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
