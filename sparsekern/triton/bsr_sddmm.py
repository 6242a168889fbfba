"""Block-sampled dense-dense product in Triton: ``out[k] = a_rows(k) @ b_rows(k)ᵀ`` at the kept blocks only.

This is the weight gradient of a block-sparse layer: with ``y = W x`` (feature-major, batch ``B``),
``dW = (dy @ xᵀ) ⊙ M``, and only the kept ``(bh, bw)`` blocks of ``dW`` are ever wanted. Block k of the layout,
at block row r and block column c, needs the ``bh`` rows ``r·bh : (r+1)·bh`` of ``a`` (n_block_rows·bh, B)
and the ``bw`` rows ``c·bw : (c+1)·bw`` of ``b`` (n_block_cols·bw, B), reduced over the batch.

Tiling
------
One program per kept block, ``grid = (nnzb,)``: the output block ``(bh, bw)`` is the program's float32
accumulator, and the reduction over the batch is cut into chunks of ``BLOCK_B`` columns::

          a rows of block row r            b rows of block col c
        ┌──────┬──────┬────┐             ┌──────┬──────┬────┐
        │ B0   │ B1   │ B2 │ (bh, B)     │ B0   │ B1   │ B2 │ (bw, B)
        └──────┴──────┴────┘             └──────┴──────┴────┘
    acc (bh, bw) += a[:, chunk] (bh, BLOCK_B) @ b[:, chunk]ᵀ (BLOCK_B, bw)   for chunk = B0, B1, B2

The last chunk is masked (other=0: padded batch columns add nothing), so any B works, 1 and 7 included. The
block is stored once, rounded to the input dtype, at ``out[k]``; programs write disjoint blocks, and with
B = 0 the loop is empty and the block is exact zeros, as a sum over nothing should be.

Which block row is block k in?  The layout stores ``row_offsets`` (CSR over the block grid), not the row of
each block. Each program finds it by a binary search of ``row_offsets`` in the kernel: the block row r is the
last one with ``row_offsets[r] <= k`` (empty rows have ``row_offsets[r] == row_offsets[r+1]`` and are
skipped by that rule). ``ceil(log2(n_block_rows))`` dependent scalar loads, from an array a few hundred
bytes long that stays in cache, cost nothing next to the ``B / BLOCK_B`` tile loads of the reduction; and
unlike a host-side ``row_ids(row_offsets)`` it needs no extra buffer, no extra launch and no device sync
(``repeat_interleave`` must learn its output size), so the op stays CUDA-graph friendly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bsr_spmm import INTERPRET, check_block_size, check_dense, check_float, check_index, check_offsets


def _configs():
    if INTERPRET:
        # BLOCK_B = 32 so that the tests' batch sizes cover a partial chunk (1, 7) and several chunks (50).
        return [triton.Config({"BLOCK_B": 32}, num_warps=4, num_stages=1)]
    return [
        # The reduction dimension is the batch: longer chunks mean fewer, larger loads per block; deeper
        # pipelines (num_stages) hide the latency of the next chunk behind the dot of this one.
        triton.Config({"BLOCK_B": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_B": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 128}, num_warps=8, num_stages=3),
    ]


@triton.autotune(configs=_configs(), key=["batch", "BH", "BW"])
@triton.jit
def _bsr_sddmm_kernel(
    a_ptr,  # (n_block_rows · BH, batch), unit column stride
    b_ptr,  # (n_block_cols · BW, batch), unit column stride
    offsets_ptr,  # row_offsets (n_block_rows + 1,)
    indices_ptr,  # col_indices (nnzb,)
    out_ptr,  # (nnzb, BH, BW) contiguous
    batch,
    n_block_rows,
    search_steps,  # ceil(log2(n_block_rows)): iterations of the binary search
    stride_a,
    stride_b,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    k = tl.program_id(0)  # the kept block this program computes

    # Binary search for the block row: invariant row_offsets[lo] <= k < row_offsets[hi]. Each step halves
    # [lo, hi); once hi == lo + 1, mid == lo and nothing moves any more, so running a fixed number of steps
    # is fine.
    lo = k * 0  # int32 tensors from the start: loop-carried values keep one type
    hi = k * 0 + n_block_rows
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(offsets_ptr + mid) <= k
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    block_row = lo.to(tl.int64)
    block_col = tl.load(indices_ptr + k).to(tl.int64)

    rows_a = block_row * BH + tl.arange(0, BH)
    rows_b = block_col * BW + tl.arange(0, BW)
    offs_b = tl.arange(0, BLOCK_B)
    a_ptrs = a_ptr + rows_a[:, None] * stride_a + offs_b[None, :]  # (BH, BLOCK_B)
    b_ptrs = b_ptr + rows_b[:, None] * stride_b + offs_b[None, :]  # (BW, BLOCK_B)

    acc = tl.zeros((BH, BW), dtype=tl.float32)
    for start in range(0, batch, BLOCK_B):
        in_batch = (start + offs_b) < batch
        x = tl.load(a_ptrs, mask=in_batch[None, :], other=0.0)
        y = tl.load(b_ptrs, mask=in_batch[None, :], other=0.0)
        # ieee: true float32 products for float32 inputs (no TF32); ignored for 16-bit inputs.
        acc = tl.dot(x, tl.trans(y), acc, input_precision="ieee")
        a_ptrs += BLOCK_B
        b_ptrs += BLOCK_B

    offs_out = tl.arange(0, BH)[:, None] * BW + tl.arange(0, BW)[None, :]
    tl.store(out_ptr + k.to(tl.int64) * (BH * BW) + offs_out, acc.to(out_ptr.dtype.element_ty))


def bsr_sddmm(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """``out[k] = a_rows(k) @ b_rows(k)ᵀ`` (a dot over the batch) at every kept block; (nnzb, bh, bw).

    a (n_block_rows·bh, B), b (n_block_cols·bw, B), the same dtype (float32, float16 or bfloat16; float32
    accumulation, result in that dtype). Same arguments and result as ``sparsekern.reference.bsr_sddmm``;
    bh and bw, derived from the row counts, must be 16, 32 or 64. Of the ``t_*`` tensors only the length of
    ``t_row_offsets`` (the number of block columns) is used; the others are checked, not read.
    """
    check_float("a", a)
    device = a.device
    row_offsets = check_offsets("row_offsets", row_offsets, device)
    t_row_offsets = check_offsets("t_row_offsets", t_row_offsets, device)
    col_indices = check_index("col_indices", col_indices, device)
    nnzb = col_indices.numel()
    for name, t in (("t_col_indices", t_col_indices), ("t_perm", t_perm), ("t_perm_inv", t_perm_inv)):
        check_index(name, t, device, nnzb)
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    for name, t, n in (("a", a, n_block_rows), ("b", b, n_block_cols)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D (features, batch) tensor, got shape {tuple(t.shape)}")
        if n == 0 or t.shape[0] % n:
            raise ValueError(f"{name}: its {t.shape[0]} rows must be a positive multiple of the "
                             f"{n} block {'rows' if name == 'a' else 'columns'} of the layout")
    bh, bw = a.shape[0] // n_block_rows, b.shape[0] // n_block_cols
    check_block_size("a, b", bh, bw)
    a = check_dense("a", a, None, device, n_block_rows * bh)
    b = check_dense("b", b, a.dtype, device, n_block_cols * bw)
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b: expected the batch of a ({a.shape[1]} columns), got shape {tuple(b.shape)}")
    batch = a.shape[1]
    out = torch.empty(nnzb, bh, bw, dtype=a.dtype, device=device)
    if nnzb == 0:
        return out
    search_steps = max(0, (n_block_rows - 1).bit_length())  # ceil(log2(n_block_rows))
    _bsr_sddmm_kernel[(nnzb,)](a, b, row_offsets, col_indices, out, batch, n_block_rows, search_steps,
                               a.stride(0), b.stride(0), BH=bh, BW=bw)
    return out
