"""Block-sparse times dense in Triton: ``out = S @ dense`` and ``out = Sᵀ @ dense`` for a BSR matrix ``S``.

``S`` is an ``(n_block_rows·bh, n_block_cols·bw)`` matrix of which only some ``(bh, bw)`` blocks are kept
(``sparsekern.layout.BSRLayout``): ``values`` (nnzb, bh, bw) holds them in block order (block row by block
row, columns ascending), ``row_offsets``/``col_indices`` index them as a CSR matrix over the grid of blocks,
and ``t_row_offsets``/``t_col_indices``/``t_perm`` are the same for the transposed grid (CSC order), where
``values[t_perm]`` would be the blocks in CSC order. Dense operands are feature-major ``(features, B)``.

Tiling
------
The output is cut into tiles of one block row by ``BLOCK_B`` batch columns; each program of the launch grid

    grid = (n_block_rows, cdiv(B, BLOCK_B))

owns one tile, so no two programs ever write the same element and no atomics are needed::

              dense (n_block_cols·bw, B)
                     ┌───┬───┬───┐
                     │   │ ▒ │   │  block col 0     out tile (bh, BLOCK_B) =
                     ├───┼───┼───┤                    Σ over the kept blocks k of block row r:
                     │   │ ▒ │   │  block col 1         values[k] (bh, bw) @ dense[col_k·bw : +bw, tile]
                     └───┴───┴───┘
      S (block row r)     ↑ BLOCK_B
    ┌────┬────┐
    │ k0 │ k1 │   →   out rows r·bh : (r+1)·bh, the same BLOCK_B columns
    └────┴────┘

The program walks its block row's kept blocks ``row_offsets[r] .. row_offsets[r+1]``; for each one it
loads the whole ``(bh, bw)`` block (bh, bw ≤ 64, so a block is at most 4096 elements and fits in registers)
and the ``(bw, BLOCK_B)`` slice of ``dense`` at the block's column, and accumulates their ``tl.dot`` in a
float32 ``(bh, BLOCK_B)`` accumulator. The work of a program is proportional to the kept blocks of its row
only; a row with no kept blocks runs no iteration and stores its zero accumulator, so every output element is
written exactly once and the output can be allocated uninitialised.

The batch edge (B not a multiple of BLOCK_B, e.g. B = 1 or 7) is handled by masked loads (other=0, so the
padded columns contribute nothing) and a masked store. The block dimensions need no mask: bh and bw are
compile-time constants, powers of two, that tile S exactly.

The transposed product (the input gradient ``dx = Sᵀ dy`` of ``y = S x``) is the same program over the
transposed grid: one program per block *column* c of S, walking ``t_row_offsets[c] .. t_row_offsets[c+1]``.
Position p there names the block ``k = t_perm[p]`` of ``values`` (block order) and its block row
``t_col_indices[p]``; the program loads ``values[k]`` as usual and transposes it in registers
(``tl.trans``) before the dot, so no transposed, CSC-ordered copy of the values is ever materialised and the
backward never re-sorts. The ``TRANSPOSED`` constexpr selects between the two at compile time.

Precision: ``tl.dot`` gets ``input_precision="ieee"``: float32 inputs then use true float32 FMAs, not TF32
tensor cores, whose 10-bit mantissa would break the tolerance rule of the tests (at most twice the error of
PyTorch's float32 GEMM); the option does not apply to float16/bfloat16 inputs, which run on tensor cores
with a float32 accumulator. The result is rounded once, to
the input dtype, at the store.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 every config of an autotuner would be benchmarked by the (slow) interpreter, so
# there we use a single config; on a GPU a small list covering Ampere and Hopper.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_SIZES = (16, 32, 64)  # tl.dot wants every dimension >= 16; powers of two for the block layout


def _configs():
    if INTERPRET:
        # BLOCK_B = 32 so that the tests' batch sizes cover one partial tile (1, 7) and several tiles (50).
        return [triton.Config({"BLOCK_B": 32}, num_warps=4, num_stages=1)]
    return [
        # Small batches / many block rows: more programs in flight.
        triton.Config({"BLOCK_B": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 64}, num_warps=4, num_stages=4),
        # Large batches: wider tiles amortise each block load over more columns (Hopper likes 8 warps here).
        triton.Config({"BLOCK_B": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_B": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_B": 256}, num_warps=8, num_stages=3),
    ]


# ------------------------------------------------------------------------------------------------ kernel

@triton.autotune(configs=_configs(), key=["batch", "BH", "BW", "TRANSPOSED"])
@triton.jit
def _bsr_spmm_kernel(
    values_ptr,  # (nnzb, BH, BW) contiguous, block order
    offsets_ptr,  # (n_out_blocks + 1,): row_offsets, or t_row_offsets when TRANSPOSED
    indices_ptr,  # (nnzb,): the block column of each entry (col_indices), or its block row (t_col_indices)
    perm_ptr,  # (nnzb,) t_perm when TRANSPOSED (entry p of the transposed grid is block t_perm[p]); else unused
    dense_ptr,  # (n_in_blocks · IN_BLOCK, batch), unit column stride
    out_ptr,  # (n_out_blocks · OUT_BLOCK, batch), contiguous
    batch,
    stride_dense,  # row stride of dense, in elements
    BH: tl.constexpr,
    BW: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    # S @ dense: a block maps BW input rows to BH output rows. Sᵀ @ dense: the other way round.
    IN_BLOCK: tl.constexpr = BH if TRANSPOSED else BW
    OUT_BLOCK: tl.constexpr = BW if TRANSPOSED else BH

    out_block = tl.program_id(0)  # the block row of the output this program owns
    tile = tl.program_id(1)  # and which BLOCK_B batch columns of it

    offs_b = tile * BLOCK_B + tl.arange(0, BLOCK_B)
    in_batch = offs_b < batch  # the batch edge mask
    offs_in = tl.arange(0, IN_BLOCK)
    offs_h = tl.arange(0, BH)
    offs_w = tl.arange(0, BW)
    # Offsets of one block's elements, row-major (bh, bw): the same for every block, only the base moves.
    block_offs = offs_h[:, None] * BW + offs_w[None, :]

    # int64 positions: nnzb · bh · bw, and the dense offsets, can exceed 2^31 on large layers.
    start = tl.load(offsets_ptr + out_block).to(tl.int64)
    n_kept = tl.load(offsets_ptr + out_block + 1) - start  # 0 for a fully pruned block row

    acc = tl.zeros((OUT_BLOCK, BLOCK_B), dtype=tl.float32)
    for i in range(0, n_kept):
        p = start + i  # position in the (transposed) grid's entry order
        in_block = tl.load(indices_ptr + p).to(tl.int64)
        if TRANSPOSED:
            k = tl.load(perm_ptr + p).to(tl.int64)  # ... names block k of values (block order)
        else:
            k = p
        block = tl.load(values_ptr + k * (BH * BW) + block_offs)  # (BH, BW)
        if TRANSPOSED:
            block = tl.trans(block)  # (BW, BH), in registers
        rows = in_block * IN_BLOCK + offs_in
        x = tl.load(dense_ptr + rows[:, None] * stride_dense + offs_b[None, :], mask=in_batch[None, :],
                    other=0.0)  # (IN_BLOCK, BLOCK_B)
        acc = tl.dot(block, x, acc, input_precision="ieee")  # see "Precision" above

    out_rows = out_block.to(tl.int64) * OUT_BLOCK + tl.arange(0, OUT_BLOCK)
    tl.store(out_ptr + out_rows[:, None] * batch + offs_b[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=in_batch[None, :])


# ----------------------------------------------------------------------------------------------- checks
# Shared with bsr_sddmm.py. Only shapes, dtypes and devices are checked (no device sync): the index
# *contents* are the layout's promise (BSRLayout.validate()).

def check_float(name, t, dtype=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.float64:
        raise TypeError(f"{name}: float64 is not supported by the Triton kernels (float32, float16, bfloat16 "
                        "only); use sparsekern.reference for float64")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the same as the other operand), got {t.dtype}")
    if not INTERPRET and t.device.type != "cuda":
        raise ValueError(f"{name}: the Triton kernels need GPU tensors (or TRITON_INTERPRET=1 set before "
                         f"triton is imported), got one on {t.device}")


def check_index(name, t, device, numel=None):
    """A 1-D int32/int64 tensor on ``device`` (with ``numel`` entries if given), made contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise TypeError(f"{name}: expected a 1-D int32 or int64 tensor, got {t.dtype} with shape "
                        f"{tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where the values are), got one on {t.device}")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{name}: expected {numel} entries (one per kept block), got {t.numel()}")
    return t.contiguous()


def check_offsets(name, t, device):
    t = check_index(name, t, device)
    if t.numel() < 1:
        raise ValueError(f"{name}: offsets need n_blocks + 1 >= 1 entries, got 0")
    return t


def check_block_size(name, bh, bw):
    if bh not in BLOCK_SIZES or bw not in BLOCK_SIZES:
        raise ValueError(f"{name}: the Triton kernels support blocks of {' / '.join(map(str, BLOCK_SIZES))} "
                         f"rows and columns (tl.dot needs >= 16 per dimension), got {bh}x{bw}")


def check_dense(name, t, dtype, device, rows):
    """A 2-D (features, batch) operand; returned with unit column stride (a copy only if it has none)."""
    check_float(name, t, dtype)
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where the values are), got one on {t.device}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (features, batch) tensor, got shape {tuple(t.shape)}")
    if t.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(t.shape)}")
    # The kernels take any row stride (e.g. transpose()'s padded one) but need contiguous rows.
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.contiguous()
    return t


# --------------------------------------------------------------------------------------------- wrappers

def _spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
          transposed):
    check_float("values", values)
    if values.dim() != 3:
        raise ValueError(f"values: expected (nnzb, bh, bw) blocks, got shape {tuple(values.shape)}")
    nnzb, bh, bw = values.shape
    check_block_size("values", bh, bw)
    device = values.device
    row_offsets = check_offsets("row_offsets", row_offsets, device)
    t_row_offsets = check_offsets("t_row_offsets", t_row_offsets, device)
    col_indices = check_index("col_indices", col_indices, device, nnzb)
    t_col_indices = check_index("t_col_indices", t_col_indices, device, nnzb)
    t_perm = check_index("t_perm", t_perm, device, nnzb)
    check_index("t_perm_inv", t_perm_inv, device, nnzb)
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    if transposed:
        # Walk the transposed grid: block columns of S become the output's block rows.
        offsets, indices, n_in, n_out, in_block, out_block = (t_row_offsets, t_col_indices, n_block_rows,
                                                               n_block_cols, bh, bw)
    else:
        offsets, indices, n_in, n_out, in_block, out_block = (row_offsets, col_indices, n_block_cols,
                                                               n_block_rows, bw, bh)
    dense = check_dense("dense", dense, values.dtype, device, n_in * in_block)
    batch = dense.shape[1]
    out = torch.empty(n_out * out_block, batch, dtype=values.dtype, device=device)
    if out.numel() == 0:
        return out
    values = values.contiguous()

    def grid(meta):
        return (n_out, triton.cdiv(batch, meta["BLOCK_B"]))

    _bsr_spmm_kernel[grid](values, offsets, indices, t_perm, dense, out, batch, dense.stride(0),
                           BH=bh, BW=bw, TRANSPOSED=transposed)
    return out


def bsr_spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """``S @ dense``: values (nnzb, bh, bw), dense (n_block_cols·bw, B) → (n_block_rows·bh, B).

    Same arguments and result as ``sparsekern.reference.bsr_spmm``; bh, bw in {16, 32, 64}; float32, float16
    or bfloat16 (float32 accumulation, result in the input dtype).
    """
    return _spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                 transposed=False)


def bsr_spmm_t(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """``Sᵀ @ dense`` with the layout of ``S`` itself: dense (n_block_rows·bh, B) → (n_block_cols·bw, B).

    Equal to ``bsr_spmm(values[t_perm].transpose(1, 2), <transposed layout>, dense)``, but reads each block
    through ``t_perm`` and transposes it in registers: nothing is permuted or copied.
    """
    return _spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                 transposed=True)
