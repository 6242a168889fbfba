"""Argument checks shared by layouts, ops and modules: errors name the argument, what was expected and
what was given (ValueError for wrong values and shapes, TypeError for wrong types and dtypes)."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
# A SparseLinear or SparseConv2d may also hold 16-bit weights: the Triton kernels (block masks) and the CUDA C++
# kernels (CSR) serve them on CUDA with float32 accumulation; the compiled CPU kernels take float32/float64 only
# and say so, and the dense backend runs any of them.
LAYER_DTYPES = FLOAT_DTYPES + (torch.float16, torch.bfloat16)


def check_mask(mask, name: str = "mask", shape=None, device=None) -> torch.Tensor:
    """Return ``mask`` as a bool tensor after checking it is 2-D (or ``shape``), 0/1 valued and finite.

    Accepts bool, integer and floating masks; a float mask must hold only 0 and 1 (no NaN).
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")
    if shape is None and mask.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D mask, got {mask.dim()}-D with shape {tuple(mask.shape)}")
    if device is not None and mask.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on {torch.device(device)}, got one on {mask.device}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name}: expected a bool, integer or floating tensor, got {mask.dtype}")
    if mask.is_floating_point() and bool(torch.isnan(mask).any()):
        raise ValueError(f"{name}: contains NaN; expected only 0 and 1")
    if bool(((mask != 0) & (mask != 1)).any()):
        bad = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
        raise ValueError(f"{name}: expected only 0 and 1 (or a bool tensor), found the value {bad}")
    return mask != 0


def check_float_tensor(t, name: str, dtype=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if dtype is None and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {t.dtype}")
