"""Block-sampled dense-dense product in Triton: ``out[k] = a_rows(k) @ b_rows(k)ᵀ`` at the kept blocks only.

This is the weight gradient of a block-sparse layer: with ``y = W x`` (feature-major, batch ``B``),
``dW = (dy @ xᵀ) ⊙ M``, and only the kept ``(bh, bw)`` blocks of ``dW`` are ever wanted. Block k of the layout,
at block row r and block column c, needs the ``bh`` rows ``r·bh : (r+1)·bh`` of ``a`` (n_block_rows·bh, B)
and the ``bw`` rows ``c·bw : (c+1)·bw`` of ``b`` (n_block_cols·bw, B), reduced over the batch.

Tiling
------
One program per tile of ``(TILE_M, TILE_N)`` of a kept block, ``grid = (nnzb · bh/TILE_M · bw/TILE_N,)``,
with ``TILE_M = min(bh, BLOCK_M)`` and ``TILE_N = min(bw, BLOCK_N)``: blocks up to 64x64 are usually one
tile, a 128-wide block may be split so that layers with few kept blocks still fill the GPU (a 1024x1024
layer of 128-blocks at 90% sparsity keeps 6 blocks: 6 programs unsplit). The tile is the program's float32
accumulator, and the reduction over the batch is cut into chunks of ``BLOCK_B`` columns::

          a rows of the tile               b rows of the tile
        ┌──────┬──────┬────┐             ┌──────┬──────┬────┐
        │ B0   │ B1   │ B2 │ (TILE_M, B) │ B0   │ B1   │ B2 │ (TILE_N, B)
        └──────┴──────┴────┘             └──────┴──────┴────┘
    acc (TILE_M, TILE_N) += a[:, chunk] (TILE_M, BLOCK_B) @ b[:, chunk]ᵀ (BLOCK_B, TILE_N)   for each chunk

The last chunk is masked (other=0: padded batch columns add nothing), so any B works, 1 and 7 included. The
tile is stored once, rounded to the input dtype, into ``out[k]``; programs write disjoint tiles, and with
B = 0 the loop is empty and the block is exact zeros, as a sum over nothing should be. The tiles of a block
are neighbours in the grid, so they share the block's rows of ``a`` and ``b`` through L2.

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

from . import tuning
from .bsr_spmm import check_block_size, check_dense, check_float, check_index, check_offsets

# BLOCK_B = 32 so that the tests' batch sizes cover a partial chunk (1, 7) and several chunks (50); caps of 64
# so that the tests' 128-wide blocks take the split path. Used under the interpreter and with
# SPARSEKERN_TRITON_AUTOTUNE=0; 3 · (64 + 64) · 32 · 4 B = 48 KB of shared memory fits every GPU.
FIXED_CONFIG = tuning.config(4, 3, BLOCK_B=32, BLOCK_M=64, BLOCK_N=64)

TUNED_CONFIGS = [
    # The reduction runs over the batch: longer chunks mean fewer, larger loads per tile; deeper pipelines
    # (num_stages) hide the latency of the next chunk behind the dot of this one.
    tuning.config(4, 3, BLOCK_B=32, BLOCK_M=64, BLOCK_N=64),
    tuning.config(4, 4, BLOCK_B=64, BLOCK_M=64, BLOCK_N=64),
    tuning.config(4, 3, BLOCK_B=128, BLOCK_M=64, BLOCK_N=64),
    # Whole 128x128 blocks: Ampere-style 4 warps with 32-wide chunks, 4 stages (48 KB at 16 bits compiled
    # for sm_80); Hopper 8 warps, 64-wide chunks, 3 stages (96 KB at 16 bits for sm_90; in float32 the
    # estimate exceeds Ampere's 163 KB, so there it is pruned).
    tuning.config(4, 4, BLOCK_B=32, BLOCK_M=128, BLOCK_N=128),
    tuning.config(8, 3, BLOCK_B=64, BLOCK_M=128, BLOCK_N=128),
    tuning.config(8, 3, BLOCK_B=128, BLOCK_M=128, BLOCK_N=64),
]


def _tile(config, args):
    """(TILE_M, TILE_N, BLOCK_B) of a config on this launch, and the shared memory its stages need."""
    if "BH" not in args or "BW" not in args:
        return None
    m = tuning.capped(config.kwargs["BLOCK_M"], args["BH"])
    n = tuning.capped(config.kwargs["BLOCK_N"], args["BW"])
    b = config.kwargs["BLOCK_B"]
    return (m, n, b), config.num_stages * (m + n) * b * args["a_ptr"].element_size()


@triton.autotune(configs=tuning.choose(FIXED_CONFIG, TUNED_CONFIGS), key=["batch", "BH", "BW"],
                 prune_configs_by={"early_config_prune": tuning.make_prune(_tile)})
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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # A config's BLOCK_M / BLOCK_N are caps: the tile never exceeds the block (see tuning.py).
    TILE_M: tl.constexpr = BH if BH < BLOCK_M else BLOCK_M
    TILE_N: tl.constexpr = BW if BW < BLOCK_N else BLOCK_N
    M_SPLIT: tl.constexpr = BH // TILE_M
    N_SPLIT: tl.constexpr = BW // TILE_N

    pid = tl.program_id(0)
    k = pid // (M_SPLIT * N_SPLIT)  # the kept block this program works in
    m0 = (pid // N_SPLIT) % M_SPLIT * TILE_M  # and the tile's first row / column within it
    n0 = pid % N_SPLIT * TILE_N

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

    offs_m = m0 + tl.arange(0, TILE_M)
    offs_n = n0 + tl.arange(0, TILE_N)
    rows_a = block_row * BH + offs_m
    rows_b = block_col * BW + offs_n
    offs_b = tl.arange(0, BLOCK_B)
    a_ptrs = a_ptr + rows_a[:, None] * stride_a + offs_b[None, :]  # (TILE_M, BLOCK_B)
    b_ptrs = b_ptr + rows_b[:, None] * stride_b + offs_b[None, :]  # (TILE_N, BLOCK_B)

    acc = tl.zeros((TILE_M, TILE_N), dtype=tl.float32)
    for start in range(0, batch, BLOCK_B):
        in_batch = (start + offs_b) < batch
        x = tl.load(a_ptrs, mask=in_batch[None, :], other=0.0)
        y = tl.load(b_ptrs, mask=in_batch[None, :], other=0.0)
        # ieee: true float32 products for float32 inputs (no TF32); ignored for 16-bit inputs.
        acc = tl.dot(x, tl.trans(y), acc, input_precision="ieee")
        a_ptrs += BLOCK_B
        b_ptrs += BLOCK_B

    offs_out = offs_m[:, None] * BW + offs_n[None, :]
    tl.store(out_ptr + k.to(tl.int64) * (BH * BW) + offs_out, acc.to(out_ptr.dtype.element_ty))


def bsr_sddmm(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """``out[k] = a_rows(k) @ b_rows(k)ᵀ`` (a dot over the batch) at every kept block; (nnzb, bh, bw).

    a (n_block_rows·bh, B), b (n_block_cols·bw, B), the same dtype (float32, float16 or bfloat16; float32
    accumulation, result in that dtype). Same arguments and result as ``sparsekern.reference.bsr_sddmm``;
    bh and bw, derived from the row counts, must be 16, 32, 64 or 128. Of the ``t_*`` tensors only the length of
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

    def grid(meta):
        tiles = (bh // tuning.capped(meta["BLOCK_M"], bh)) * (bw // tuning.capped(meta["BLOCK_N"], bw))
        return (nnzb * tiles,)

    _bsr_sddmm_kernel[grid](a, b, row_offsets, col_indices, out, batch, n_block_rows, search_steps,
                            a.stride(0), b.stride(0), BH=bh, BW=bw)
    return out
