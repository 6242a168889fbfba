"""Block-sparse times dense in Triton: ``out = S @ dense``, ``out = Sᵀ @ dense`` and the batch-major
``out = (S @ dense)ᵀ + bias`` for a BSR matrix ``S``.

``S`` is an ``(n_block_rows·bh, n_block_cols·bw)`` matrix of which only some ``(bh, bw)`` blocks are kept
(``sparsekern.layout.BSRLayout``): ``values`` (nnzb, bh, bw) holds them in block order (block row by block
row, columns ascending), ``row_offsets``/``col_indices`` index them as a CSR matrix over the grid of blocks,
and ``t_row_offsets``/``t_col_indices``/``t_perm`` are the same for the transposed grid (CSC order), where
``values[t_perm]`` would be the blocks in CSC order. Dense operands are feature-major ``(features, B)``.
bh and bw are each 16, 32, 64 or 128 (rectangular blocks too).

Tiling
------
The output is cut into tiles of ``TILE_M`` rows of one block row by ``BLOCK_B`` batch columns; each program
of the launch grid

    grid = (n_block_rows · bh / TILE_M, cdiv(B, BLOCK_B))

owns one tile, so no two programs ever write the same element and no atomics are needed::

              dense (n_block_cols·bw, B)
                     ┌───┬───┬───┐
                     │   │ ▒ │   │  block col 0     out tile (TILE_M, BLOCK_B) =
                     ├───┼───┼───┤                    Σ over the kept blocks k of block row r,
                     │   │ ▒ │   │  block col 1       Σ over the TILE_K-wide slices j of the block:
                     └───┴───┴───┘                      values[k][rows, j] @ dense[col_k·bw + j, tile]
      S (block row r)     ↑ BLOCK_B
    ┌────┬────┐
    │ k0 │ k1 │   →   out rows r·bh + (TILE_M rows), the same BLOCK_B columns
    └────┴────┘

``TILE_M = min(bh, BLOCK_M)`` and ``TILE_K = min(bw, BLOCK_K)``: blocks up to 64 wide are usually one tile
(the whole block is loaded at once), a 128-wide block is walked in slices so that the pipelined operand
tiles stay within shared memory (a whole 128x128 float32 block and its dense slice are 128 KB per pipeline
stage), and a tall block may be split between ``bh / TILE_M`` programs, which gives small batches more
programs to spread over the GPU. The slices of a block are a ``tl.static_range`` (unrolled), so the loop
over kept blocks stays the one loop Triton software-pipelines.

The program walks its block row's kept blocks ``row_offsets[r] .. row_offsets[r+1]``, accumulating the
``tl.dot`` of each block slice with the ``(TILE_K, BLOCK_B)`` slice of ``dense`` in a float32
``(TILE_M, BLOCK_B)`` accumulator. The work of a program is proportional to the kept blocks of its row
only; a row with no kept blocks runs no iteration and stores its zero accumulator (plus the bias), so every
output element is written exactly once and the output can be allocated uninitialised.

The batch edge (B not a multiple of BLOCK_B, e.g. B = 1 or 7) is handled by masked loads (other=0, so the
padded columns contribute nothing) and a masked store. The block dimensions need no mask: bh, bw and the
tiles are compile-time powers of two that tile S exactly.

The transposed product (the input gradient ``dx = Sᵀ dy`` of ``y = S x``) is the same program over the
transposed grid: one program per block *column* c of S, walking ``t_row_offsets[c] .. t_row_offsets[c+1]``.
Position p there names the block ``k = t_perm[p]`` of ``values`` (block order) and its block row
``t_col_indices[p]``; the program loads its slice of ``values[k]`` as usual and transposes it in registers
(``tl.trans``) before the dot, so no transposed, CSC-ordered copy of the values is ever materialised and the
backward never re-sorts. The ``TRANSPOSED`` constexpr selects between the two at compile time.

The batch-major product ``bsr_spmm_bt`` (the layer's forward output ``y = x Wᵀ + b``, shape (B, n_rows)) is
the plain product with a different epilogue: the bias of the tile's rows is added to the float32
accumulator, and the tile is stored through the output's strides (row stride 1, batch stride n_rows), i.e.
transposed on the way out; there is no separate transpose pass and no (n_rows, B) intermediate.

Precision: ``tl.dot`` gets ``input_precision="ieee"``: float32 inputs then use true float32 FMAs, not TF32
tensor cores, whose 10-bit mantissa would break the tolerance rule of the tests (at most twice the error of
PyTorch's float32 GEMM); the option does not apply to float16/bfloat16 inputs, which run on tensor cores
with a float32 accumulator. The result (bias included) is rounded once, to the input dtype, at the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tuning
from .tuning import INTERPRET

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_SIZES = (16, 32, 64, 128)  # tl.dot wants every dimension >= 16; powers of two for the tiles

# BLOCK_B = 32 so that the tests' batch sizes cover one partial tile (1, 7) and several tiles (50); caps of 64
# so that the tests' 128-wide blocks take the split-rows and sliced-block paths. Used under the interpreter
# and with SPARSEKERN_TRITON_AUTOTUNE=0; it fits every GPU: 3 · (64·64 + 64·32) · 4 B = 72 KB.
FIXED_CONFIG = tuning.config(4, 3, BLOCK_B=32, BLOCK_M=64, BLOCK_K=64)

TUNED_CONFIGS = [
    # Small batches: few batch tiles, so split tall blocks over more programs and keep tiles narrow.
    tuning.config(4, 3, BLOCK_B=32, BLOCK_M=64, BLOCK_K=64),
    tuning.config(4, 3, BLOCK_B=32, BLOCK_M=128, BLOCK_K=64),
    tuning.config(4, 4, BLOCK_B=64, BLOCK_M=64, BLOCK_K=64),
    tuning.config(4, 3, BLOCK_B=64, BLOCK_M=128, BLOCK_K=64),
    # Large batches. Ampere: 128x128 tiles with 4 warps and K slices of 32, 4 stages (64 KB of its 163 KB
    # at 16 bits, as compiled for sm_80). Hopper: 8 warps (two warpgroups for wgmma), K slices of 64, and
    # 128x256 tiles, which take 192 KB of its 227 KB at 16 bits and 3 stages (compiled for sm_90).
    tuning.config(4, 4, BLOCK_B=128, BLOCK_M=128, BLOCK_K=32),
    tuning.config(8, 3, BLOCK_B=128, BLOCK_M=128, BLOCK_K=64),
    tuning.config(8, 4, BLOCK_B=128, BLOCK_M=64, BLOCK_K=64),
    tuning.config(8, 3, BLOCK_B=256, BLOCK_M=128, BLOCK_K=64),
]


def _tile(config, args):
    """(TILE_M, TILE_K, BLOCK_B) of a config on this launch, and the shared memory its stages need."""
    if "BH" not in args or "BW" not in args:
        return None
    transposed = bool(args.get("TRANSPOSED", False))
    in_block, out_block = (args["BH"], args["BW"]) if transposed else (args["BW"], args["BH"])
    m = tuning.capped(config.kwargs["BLOCK_M"], out_block)
    k = tuning.capped(config.kwargs["BLOCK_K"], in_block)
    b = config.kwargs["BLOCK_B"]
    element = args["values_ptr"].element_size()
    return (m, k, b), config.num_stages * (m * k + k * b) * element


# ------------------------------------------------------------------------------------------------ kernel

# The key: stride_out_row is 1 for the batch-major store (bsr_spmm_bt) and the batch for the others, so
# with the batch it tells the two store patterns apart without keying on the layer's size.
@triton.autotune(configs=tuning.choose(FIXED_CONFIG, TUNED_CONFIGS),
                 key=["batch", "BH", "BW", "TRANSPOSED", "stride_out_row"],
                 prune_configs_by={"early_config_prune": tuning.make_prune(_tile)})
@triton.jit
def _bsr_spmm_kernel(
    values_ptr,  # (nnzb, BH, BW) contiguous, block order
    offsets_ptr,  # (n_out_blocks + 1,): row_offsets, or t_row_offsets when TRANSPOSED
    indices_ptr,  # (nnzb,): the block column of each entry (col_indices), or its block row (t_col_indices)
    perm_ptr,  # (nnzb,) t_perm when TRANSPOSED (entry p of the transposed grid is block t_perm[p]); else unused
    dense_ptr,  # (n_in_blocks · IN_BLOCK, batch), unit column stride
    bias_ptr,  # (n_out_blocks · OUT_BLOCK,) when HAS_BIAS; else unused
    out_ptr,  # element (row, column b) at row · stride_out_row + b · stride_out_b
    batch,
    stride_dense,  # row stride of dense, in elements
    stride_out_row,
    stride_out_b,
    BH: tl.constexpr,
    BW: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # S @ dense: a block maps BW input rows to BH output rows. Sᵀ @ dense: the other way round.
    IN_BLOCK: tl.constexpr = BH if TRANSPOSED else BW
    OUT_BLOCK: tl.constexpr = BW if TRANSPOSED else BH
    # A config's BLOCK_M / BLOCK_K are caps: the tiles never exceed the block (see tuning.py).
    TILE_M: tl.constexpr = OUT_BLOCK if OUT_BLOCK < BLOCK_M else BLOCK_M
    TILE_K: tl.constexpr = IN_BLOCK if IN_BLOCK < BLOCK_K else BLOCK_K
    M_SPLIT: tl.constexpr = OUT_BLOCK // TILE_M

    # Programs of the same block row are neighbours in the grid: they read the same dense slices, which
    # then come from L2.
    out_block = tl.program_id(0) // M_SPLIT  # the block row of the output this program works in
    offs_m = (tl.program_id(0) % M_SPLIT) * TILE_M + tl.arange(0, TILE_M)  # its rows within the block
    tile = tl.program_id(1)  # and which BLOCK_B batch columns

    offs_b = tile * BLOCK_B + tl.arange(0, BLOCK_B)
    in_batch = offs_b < batch  # the batch edge mask
    offs_k = tl.arange(0, TILE_K)

    # int64 positions: nnzb · bh · bw, and the dense offsets, can exceed 2^31 on large layers.
    start = tl.load(offsets_ptr + out_block).to(tl.int64)
    n_kept = tl.load(offsets_ptr + out_block + 1) - start  # 0 for a fully pruned block row

    acc = tl.zeros((TILE_M, BLOCK_B), dtype=tl.float32)
    for i in range(0, n_kept):
        p = start + i  # position in the (transposed) grid's entry order
        in_block = tl.load(indices_ptr + p).to(tl.int64)
        if TRANSPOSED:
            k = tl.load(perm_ptr + p).to(tl.int64)  # ... names block k of values (block order)
        else:
            k = p
        block_ptr = values_ptr + k * (BH * BW)  # the block, row-major (BH, BW)
        for j in tl.static_range(0, IN_BLOCK, TILE_K):
            if TRANSPOSED:
                # Rows j.. of the block, the columns this program outputs; transposed in registers.
                a = tl.trans(tl.load(block_ptr + (j + offs_k)[:, None] * BW + offs_m[None, :]))
            else:
                a = tl.load(block_ptr + offs_m[:, None] * BW + (j + offs_k)[None, :])  # (TILE_M, TILE_K)
            rows = in_block * IN_BLOCK + j + offs_k
            x = tl.load(dense_ptr + rows[:, None] * stride_dense + offs_b[None, :], mask=in_batch[None, :],
                        other=0.0)  # (TILE_K, BLOCK_B)
            acc = tl.dot(a, x, acc, input_precision="ieee")  # see "Precision" above

    out_rows = out_block.to(tl.int64) * OUT_BLOCK + offs_m
    if HAS_BIAS:
        acc += tl.load(bias_ptr + out_rows).to(tl.float32)[:, None]
    out_ptrs = out_ptr + out_rows[:, None] * stride_out_row + offs_b.to(tl.int64)[None, :] * stride_out_b
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=in_batch[None, :])


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

def _check_values(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """The checks every product shares; returns the layout tensors made contiguous and the block shape."""
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
    return (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm), bh, bw


def _launch(values, offsets, indices, t_perm, dense, bias, out, n_out, out_block, transposed):
    """One program per (TILE_M rows of an output block row, BLOCK_B batch columns); out (rows, batch) is
    addressed through its strides, so a (batch, rows) tensor viewed transposed gets the batch-major store."""
    batch = dense.shape[1]
    bh, bw = values.shape[1:]

    def grid(meta):
        m_split = out_block // tuning.capped(meta["BLOCK_M"], out_block)
        return (n_out * m_split, triton.cdiv(batch, meta["BLOCK_B"]))

    _bsr_spmm_kernel[grid](values.contiguous(), offsets, indices, t_perm, dense,
                           bias if bias is not None else values, out, batch, dense.stride(0), out.stride(0),
                           out.stride(1), BH=bh, BW=bw, TRANSPOSED=transposed, HAS_BIAS=bias is not None)


def _spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
          transposed):
    (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm), bh, bw = _check_values(
        values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    if transposed:
        # Walk the transposed grid: block columns of S become the output's block rows.
        offsets, indices, n_in, n_out, in_block, out_block = (t_row_offsets, t_col_indices, n_block_rows,
                                                               n_block_cols, bh, bw)
    else:
        offsets, indices, n_in, n_out, in_block, out_block = (row_offsets, col_indices, n_block_cols,
                                                               n_block_rows, bw, bh)
    dense = check_dense("dense", dense, values.dtype, values.device, n_in * in_block)
    out = torch.empty(n_out * out_block, dense.shape[1], dtype=values.dtype, device=values.device)
    if out.numel():
        _launch(values, offsets, indices, t_perm, dense, None, out, n_out, out_block, transposed)
    return out


def bsr_spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """``S @ dense``: values (nnzb, bh, bw), dense (n_block_cols·bw, B) → (n_block_rows·bh, B).

    Same arguments and result as ``sparsekern.reference.bsr_spmm``; bh, bw in {16, 32, 64, 128}; float32,
    float16 or bfloat16 (float32 accumulation, result in the input dtype).
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


def bsr_spmm_bt(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                bias=None):
    """``(S @ dense)ᵀ + bias``: dense (n_block_cols·bw, B) → (B, n_block_rows·bh), contiguous, batch-major.

    Same arguments and result as the ``sparsekern::bsr_spmm_bt`` reference; ``bias`` (n_block_rows·bh,) or
    None, of the values' dtype and device. The bias is added to the float32 accumulator and the tile stored
    transposed, in the kernel's epilogue: one pass, one rounding.
    """
    (row_offsets, col_indices, t_row_offsets, _, t_perm), bh, bw = _check_values(
        values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    dense = check_dense("dense", dense, values.dtype, values.device, n_block_cols * bw)
    n_rows = n_block_rows * bh
    if bias is not None:
        check_float("bias", bias, values.dtype)
        if bias.device != values.device:
            raise ValueError(f"bias: expected a tensor on {values.device} (where the values are), got one on "
                             f"{bias.device}")
        if bias.dim() != 1 or bias.shape[0] != n_rows:
            raise ValueError(f"bias: expected shape ({n_rows},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    out = torch.empty(dense.shape[1], n_rows, dtype=values.dtype, device=values.device)
    if out.numel():
        # out.t() is (n_rows, B) with strides (1, n_rows): the kernel's (row, batch) tile lands batch-major.
        _launch(values, row_offsets, col_indices, t_perm, dense, bias, out.t(), n_block_rows, bh, False)
    return out
