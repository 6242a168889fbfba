"""Block-sparse Conv2d in Triton, as implicit GEMMs: the forward ``y = conv2d(x, W) + b``, the input gradient
``dx`` and the weight gradient ``dW`` at the kept blocks only. No im2col buffer is ever built: each program
gathers the input pixels its tile needs straight from ``x`` (or ``dy``), through the tensor's strides.

The operand convention
----------------------
The weight ``W`` (C_out, Cg, kH, kW), ``Cg = C_in / groups``, is seen **tap-major** as the matrix

    Wt = W.permute(0, 2, 3, 1).reshape(C_out, T · Cg),      T = kH · kW,   column k = t · Cg + c

(tap ``t = kh · kW + kw``, input channel ``c``), and ``Wt`` is block-sparse with ``(bh, bw)`` blocks
(``sparsekern.layout.BSRLayout``: ``values`` (nnzb, bh, bw) in block order, each block row-major, CSR
``row_offsets``/``col_indices`` over the grid of blocks and the CSC ``t_*`` transpose metadata). ``bw``
divides ``Cg``, so a block column never straddles two taps: block column ``j`` is tap ``t = j // (Cg/bw)``
and the ``bw`` consecutive channels from ``c0 = (j % (Cg/bw)) · bw``. A kept block therefore multiplies one
shifted window of ``bw`` input channels, the same shift for every element of the block: that is what makes
the gather cheap (one address computation per pixel per block, not per element).

Geometry: ``kernel_size (kH, kW)``, ``stride (sh, sw)``, symmetric zero ``padding (ph, pw)``, ``dilation
(dh, dw)``; output pixel ``(oh, ow)`` reads input pixel ``(oh·sh − ph + kh·dh, ow·sw − pw + kw·dw)`` at tap
``(kh, kw)``, zero where that falls outside the image. The kernels do ``groups == 1`` (the dispatcher sends
grouped layers to the reference); float32, float16, bfloat16; bh, bw each 16, 32, 64 or 128.

As GEMMs: M = output channels, N = output pixels ``N·OH·OW`` (flattened ``(n, oh, ow)``), K = ``T·Cg``.

Forward: one program per (TILE_M rows of block row r, BLOCK_P output pixels)
-------------------------------------------------------------------------------
::

      x (N, C_in, H, W), any strides                          y tile (TILE_M, BLOCK_P) =
        ┌──────────────┐                                        bias[rows]
        │  ▒▒ ▒▒ ▒▒    │  ← tap (kh, kw) of block k: the          + Σ over kept blocks k of block row r:
        │  ▒▒ ▒▒ ▒▒    │    tile's pixels shifted by                 values[k][rows, :] (TILE_M, bw)
        └──────────────┘    (kh·dh − ph, kw·dw − pw)                 @ x[n, c0 : c0+bw, ih, iw] (bw, BLOCK_P)

The pixel coordinates ``(n, oh, ow)`` of the tile are decoded once per program; each kept block of the row
(``row_offsets[r] .. row_offsets[r+1]``, the one loop Triton software-pipelines) then costs two scalar
divisions (its tap and first channel), a shifted, masked gather of ``(bw, BLOCK_P)`` input elements (zero
for padding taps and past the pixel edge), and a ``tl.dot`` into the float32 accumulator. Blocks 128 wide
are walked in ``TILE_K``-wide slices (an unrolled ``tl.static_range``), 128-tall ones split between
``bh / TILE_M`` programs, as in bsr_spmm.py. The epilogue adds the bias and stores ``y[n, r·bh + i, oh, ow]``
(contiguous NCHW: consecutive pixels of the tile are consecutive addresses). A block row with no kept
block stores just its bias, so every element of ``y`` is written exactly once.

The grid is one-dimensional, block rows fastest: the programs that run at the same time share their pixel
tiles, whose ``x`` windows then come from L2, and a large image never hits the 65535 limit of grid axes 1/2.

Input gradient: gather form, one program per (TILE_M of the bw channels of channel block cb, BLOCK_P input
pixels of one stride phase)
-----------------------------------------------------------------------------------------------------------
``dx[n, c, ih, iw] = Σ_{t, o} W[o, c, kh, kw] · dy[n, o, oh, ow]`` over the taps with ``ih + ph − kh·dh =
oh·sh`` (divisible, and ``0 <= oh < OH``; likewise for w). Rather than scattering ``Wᵀ dy`` with atomics,
each program owns a tile of ``dx`` and gathers what lands on it: for each tap ``t``, block column ``j = t ·
(Cg/bw) + cb`` of Wt holds exactly the weights from channels ``cb·bw ..`` at that tap, and its transposed
entries ``t_row_offsets[j] .. t_row_offsets[j+1]`` name the kept blocks ``k = t_perm[p]`` and their block rows
``r = t_col_indices[p]``; ``acc (TILE_M, BLOCK_P) += values[k]ᵀ (transposed in registers) @ dy[n, r·bh .., oh,
ow]``. Each dx element is written exactly once (zeros where nothing reaches it), so no atomics, no zero-fill.

Stride phases: with stride ``s``, only the taps with ``(ih + ph − kh·dh) % s == 0`` reach input row ``ih``,
and which taps those are depends on ``ih % s`` only. The input pixels are therefore tiled *per phase*
``(ih % sh, iw % sw)``: program tiles enumerate ``(n, q, u)`` with ``ih = q·sh + a``, ``iw = u·sw + b`` for one
phase ``(a, b)``, and a tap whose phase does not match runs zero iterations, instead of loading dy tiles that
are entirely masked. For a 3x3 stride-2 layer that is 4x fewer dots than the plain gather; for stride 1 there
is one phase and the tiling is the plain one. ``oh = q + (a + ph − kh·dh) / sh`` is then exact.

Weight gradient (SDDMM at the kept blocks), split over pixels
-------------------------------------------------------------
``dW[k][i, j] = Σ_{n, oh, ow} dy[n, r·bh + i, oh, ow] · x[n, c0 + j, oh·sh − ph + kh·dh, ow·sw − pw + kw·dw]``.
The reduction (all output pixels, e.g. 128·32·32 = 131072) is long, while a 99 %-sparse layer may keep a
handful of blocks: one program per block would leave a GPU almost idle. So the pixels are split: grid
``(nnzb · tiles per block, SPLIT)``, program ``(k, s)`` reducing the pixels ``s·P_s .. (s+1)·P_s`` of block k
into a float32 ``(TILE_M, TILE_N)`` accumulator (``tl.dot(dy tile, x tileᵀ)`` per ``BLOCK_P`` pixels) and
storing it to ``partials[s, k]`` (SPLIT, nnzb, bh, bw) float32; ``partials.sum(0)`` then adds the splits in
a fixed order, and the sum is rounded once to the input dtype: deterministic, no atomics. ``SPLIT`` is
chosen on the host (``_split_pixels``) so that ``nnzb · SPLIT`` is about ``TARGET_PROGRAMS`` (several
programs per SM of a 132-SM GPU), but with at least ``MIN_PIXELS_PER_SPLIT`` pixels per split so each
program's loop is still a few tiles long. With ``SPLIT == 1`` (many kept blocks, or a short reduction) the
kernel stores straight into the output in its dtype: no partial buffer, no extra pass. The block row of
block k is found by a binary search of ``row_offsets`` inside the kernel, as in bsr_sddmm.py.

Precision: ``tl.dot(..., input_precision="ieee")``: true float32 products for float32 (no TF32); 16-bit inputs
run on tensor cores; float32 accumulation always, one rounding at the store (bias included).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import activation_format
from . import tuning

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_SIZES = (16, 32, 64, 128)

# ------------------------------------------------------------------------------------------------ configs
# FIXED: used under the interpreter and with SPARSEKERN_TRITON_AUTOTUNE=0. BLOCK_P = 32 so that the tests'
# few pixels still make several tiles with a partial last one; caps of 64 so that 128-wide blocks take the
# split and sliced paths. 3 · (64·64 + 64·32) · 4 B = 72 KB: fits every GPU.
#
# The pixel tiles are gathers (per-pixel addresses), so they are not as cheap to pipeline as bsr_spmm's
# contiguous batch tiles; the tuned lists cover narrow and wide pixel tiles. Ampere (sm_80): 4 warps, K
# slices of 32, 4 stages; Hopper (sm_90): 8 warps (two warpgroups), 128x128 / 128x256 tiles, 3 stages.

FORWARD_FIXED = tuning.config(4, 3, BLOCK_P=32, BLOCK_M=64, BLOCK_K=64)
FORWARD_CONFIGS = [
    tuning.config(4, 3, BLOCK_P=32, BLOCK_M=64, BLOCK_K=64),
    tuning.config(4, 3, BLOCK_P=64, BLOCK_M=64, BLOCK_K=64),
    tuning.config(4, 3, BLOCK_P=128, BLOCK_M=64, BLOCK_K=32),
    tuning.config(4, 4, BLOCK_P=128, BLOCK_M=128, BLOCK_K=32),
    tuning.config(8, 3, BLOCK_P=128, BLOCK_M=128, BLOCK_K=64),
    tuning.config(8, 3, BLOCK_P=256, BLOCK_M=128, BLOCK_K=64),
]
# The input gradient is the same GEMM shape with the block transposed (M = the bw channels, K = bh).
INPUT_GRAD_FIXED = FORWARD_FIXED
INPUT_GRAD_CONFIGS = FORWARD_CONFIGS

# Weight gradient: (TILE_M, TILE_N) of a block, BLOCK_P pixels per step of the reduction.
WEIGHT_GRAD_FIXED = tuning.config(4, 3, BLOCK_P=32, BLOCK_M=64, BLOCK_N=64)
WEIGHT_GRAD_CONFIGS = [
    tuning.config(4, 3, BLOCK_P=32, BLOCK_M=64, BLOCK_N=64),
    tuning.config(4, 4, BLOCK_P=64, BLOCK_M=64, BLOCK_N=64),
    tuning.config(4, 3, BLOCK_P=128, BLOCK_M=64, BLOCK_N=64),
    tuning.config(4, 4, BLOCK_P=32, BLOCK_M=128, BLOCK_N=128),
    tuning.config(8, 3, BLOCK_P=64, BLOCK_M=128, BLOCK_N=128),
    tuning.config(8, 3, BLOCK_P=128, BLOCK_M=128, BLOCK_N=64),
]

# The weight gradient's pixel split (see the module docstring): about this many programs in all...
TARGET_PROGRAMS = 512
# ... but no split shorter than this many pixels (4 tiles of the largest BLOCK_P). Module attributes, so the
# tests can shrink them to make the interpreter's few pixels split.
MIN_PIXELS_PER_SPLIT = 1024
# Split lengths are rounded up to a multiple of this (every config's BLOCK_P divides it: no split ends in a
# partial tile except the last).
SPLIT_GRANULE = 256


def _gemm_tile(config, args):
    """Forward / input gradient: (TILE_M, TILE_K, BLOCK_P) and the shared memory of the pipelined tiles."""
    if "BH" not in args or "BW" not in args or "TRANSPOSED" not in args:
        return None
    in_block, out_block = (args["BH"], args["BW"]) if args["TRANSPOSED"] else (args["BW"], args["BH"])
    m = tuning.capped(config.kwargs["BLOCK_M"], out_block)
    k = tuning.capped(config.kwargs["BLOCK_K"], in_block)
    p = config.kwargs["BLOCK_P"]
    return (m, k, p), config.num_stages * (m * k + k * p) * args["values_ptr"].element_size()


def _weight_grad_tile(config, args):
    if "BH" not in args or "BW" not in args:
        return None
    m = tuning.capped(config.kwargs["BLOCK_M"], args["BH"])
    n = tuning.capped(config.kwargs["BLOCK_N"], args["BW"])
    p = config.kwargs["BLOCK_P"]
    return (m, n, p), config.num_stages * (m + n) * p * args["x_ptr"].element_size()


# ---------------------------------------------------------------------------------------------- kernels
# Autotune keys: the block shape, the direction, and coarse size classes passed as plain ints that the
# kernels never read (``size_class``: the bit length of the pixel count, or of a split's length; ``layout_class``:
# whether the gathered operand is channels-last). Nothing that changes from one training step to the next,
# so a layer is tuned once (and its last, smaller batch at most once more). They are not specialised on, so
# they never cause a recompile either. Dtypes join the key automatically.

@triton.autotune(configs=tuning.choose(FORWARD_FIXED, FORWARD_CONFIGS),
                 key=["size_class", "layout_class", "BH", "BW", "TRANSPOSED"],
                 prune_configs_by={"early_config_prune": tuning.make_prune(_gemm_tile)})
@triton.jit(do_not_specialize=["size_class", "layout_class"])
def _bsr_conv2d_gemm_kernel(
    src_ptr,  # forward: x (N, C_in, H, W); input gradient: dy (N, C_out, OH, OW); any strides
    values_ptr,  # (nnzb, BH, BW) contiguous, block order
    offsets_ptr,  # forward: row_offsets; input gradient: t_row_offsets
    indices_ptr,  # forward: col_indices; input gradient: t_col_indices (the block row of each entry)
    perm_ptr,  # input gradient: t_perm (entry p is block t_perm[p] of values); forward: unused
    bias_ptr,  # (n_block_rows · BH,) when HAS_BIAS
    out_ptr,  # forward: y (N, C_out, OH, OW); input gradient: dx (N, C_in, H, W); NCHW or channels_last
    n_out_blocks,  # forward: block rows; input gradient: channel blocks (Cg / BW)
    N,
    OUT_H, OUT_W,  # spatial size of out (forward: OH, OW; input gradient: H, W)
    SRC_H, SRC_W,  # spatial size of src (forward: H, W; input gradient: OH, OW)
    stride_sn, stride_sc, stride_sh, stride_sw,
    stride_on, stride_oc, stride_oh, stride_ow,
    channel_blocks,  # Cg / BW: block columns per tap
    KH, KW, SH, SW, PH, PW, DH, DW,
    size_class, layout_class,  # autotune key only
    BH: tl.constexpr,
    BW: tl.constexpr,
    TRANSPOSED: tl.constexpr,  # False: forward; True: input gradient
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    IN_BLOCK: tl.constexpr = BH if TRANSPOSED else BW  # the block side the dot reduces over
    OUT_BLOCK: tl.constexpr = BW if TRANSPOSED else BH  # the block side the program outputs
    TILE_M: tl.constexpr = OUT_BLOCK if OUT_BLOCK < BLOCK_M else BLOCK_M
    TILE_K: tl.constexpr = IN_BLOCK if IN_BLOCK < BLOCK_K else BLOCK_K
    M_SPLIT: tl.constexpr = OUT_BLOCK // TILE_M

    pid = tl.program_id(0)
    n_programs_m = n_out_blocks * M_SPLIT
    pid_m = pid % n_programs_m  # output-channel programs fastest: neighbours share their pixel tile
    pid_p = pid // n_programs_m
    out_block = pid_m // M_SPLIT  # forward: block row r; input gradient: channel block cb
    offs_m = (pid_m % M_SPLIT) * TILE_M + tl.arange(0, TILE_M)
    offs_k = tl.arange(0, TILE_K)

    # The tile's pixels of out. Forward: plain flattened (n, oh, ow), one phase (a = b = 0, steps 1).
    # Input gradient: pixels (n, q, u) of the phase grid of (a, b), ih = q·SH + a, iw = u·SW + b.
    if TRANSPOSED:
        grid_h = (OUT_H + SH - 1) // SH
        grid_w = (OUT_W + SW - 1) // SW
        n_tiles = (N * grid_h * grid_w + BLOCK_P - 1) // BLOCK_P  # pixel tiles per phase
        phase = pid_p // n_tiles
        tile = pid_p % n_tiles
        a = phase // SW
        b = phase % SW
    else:
        tile = pid_p
        grid_h = OUT_H
        grid_w = OUT_W
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    in_tile = offs_p < N * grid_h * grid_w
    n = offs_p // (grid_h * grid_w)
    q = (offs_p // grid_w) % grid_h
    u = offs_p % grid_w
    if TRANSPOSED:
        out_h = q * SH + a
        out_w = u * SW + b
        in_tile = in_tile & (out_h < OUT_H) & (out_w < OUT_W)
    else:
        out_h = q
        out_w = u
    # int64 addresses: a batch of activations easily exceeds 2^31 elements.
    src_pixel = n.to(tl.int64) * stride_sn
    src_channel = offs_k.to(tl.int64) * stride_sc

    acc = tl.zeros((TILE_M, BLOCK_P), dtype=tl.float32)
    if TRANSPOSED:
        # For each tap, the kept blocks of block column j = t · channel_blocks + cb (its CSC entries). A tap
        # whose phase does not match this program's runs no iteration. The offsets below are shifted by a
        # multiple of SH (SW) that makes them non-negative, so // and % never see a negative number.
        for t in range(0, KH * KW):
            kh = t // KW
            kw = t % KW
            num_h = a + PH - kh * DH + SH * KH * DH
            num_w = b + PW - kw * DW + SW * KW * DW
            tap_ok = (num_h % SH == 0) & (num_w % SW == 0)
            src_h = q + (num_h // SH - KH * DH)  # oh: exact for a matching tap
            src_w = u + (num_w // SW - KW * DW)
            valid = in_tile & (src_h >= 0) & (src_h < SRC_H) & (src_w >= 0) & (src_w < SRC_W)
            pixel_ptrs = src_pixel + src_h.to(tl.int64) * stride_sh + src_w.to(tl.int64) * stride_sw
            j = t * channel_blocks + out_block
            start = tl.load(offsets_ptr + j).to(tl.int64)
            n_kept = tl.where(tap_ok, tl.load(offsets_ptr + j + 1) - start, 0)
            for i in range(0, n_kept):
                p = start + i
                block_row = tl.load(indices_ptr + p).to(tl.int64)
                k = tl.load(perm_ptr + p).to(tl.int64)
                block_ptr = values_ptr + k * (BH * BW)
                for s in tl.static_range(0, IN_BLOCK, TILE_K):
                    # Rows s.. of the block (output channels of dy), the columns this program outputs.
                    w = tl.trans(tl.load(block_ptr + (s + offs_k)[:, None] * BW + offs_m[None, :]))
                    g = tl.load(src_ptr + (block_row * BH + s) * stride_sc + src_channel[:, None]
                                + pixel_ptrs[None, :], mask=valid[None, :], other=0.0)
                    acc = tl.dot(w, g, acc, input_precision="ieee")
    else:
        base_h = out_h * SH - PH
        base_w = out_w * SW - PW
        start = tl.load(offsets_ptr + out_block).to(tl.int64)
        n_kept = tl.load(offsets_ptr + out_block + 1) - start
        for i in range(0, n_kept):
            p = start + i
            j = tl.load(indices_ptr + p)
            t = j // channel_blocks
            c0 = (j % channel_blocks) * BW
            kh = t // KW
            kw = t % KW
            src_h = base_h + kh * DH
            src_w = base_w + kw * DW
            valid = in_tile & (src_h >= 0) & (src_h < SRC_H) & (src_w >= 0) & (src_w < SRC_W)
            pixel_ptrs = src_pixel + src_h.to(tl.int64) * stride_sh + src_w.to(tl.int64) * stride_sw
            block_ptr = values_ptr + p * (BH * BW)
            for s in tl.static_range(0, IN_BLOCK, TILE_K):
                w = tl.load(block_ptr + offs_m[:, None] * BW + (s + offs_k)[None, :])  # (TILE_M, TILE_K)
                xt = tl.load(src_ptr + (c0 + s).to(tl.int64) * stride_sc + src_channel[:, None]
                             + pixel_ptrs[None, :], mask=valid[None, :], other=0.0)  # (TILE_K, BLOCK_P)
                acc = tl.dot(w, xt, acc, input_precision="ieee")

    channels = out_block.to(tl.int64) * OUT_BLOCK + offs_m
    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels).to(tl.float32)[:, None]
    # Through out's strides: NCHW, or channels_last when the source is (then the channels are contiguous).
    out_pixel = n.to(tl.int64) * stride_on + out_h.to(tl.int64) * stride_oh + out_w.to(tl.int64) * stride_ow
    out_ptrs = out_ptr + channels[:, None] * stride_oc + out_pixel[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=in_tile[None, :])


@triton.autotune(configs=tuning.choose(WEIGHT_GRAD_FIXED, WEIGHT_GRAD_CONFIGS),
                 key=["size_class", "layout_class", "BH", "BW"],
                 prune_configs_by={"early_config_prune": tuning.make_prune(_weight_grad_tile)})
@triton.jit(do_not_specialize=["size_class", "layout_class"])
def _bsr_conv2d_weight_grad_kernel(
    grad_ptr,  # dy (N, C_out, OH, OW), any strides
    x_ptr,  # (N, C_in, H, W), any strides
    offsets_ptr,  # row_offsets (n_block_rows + 1,)
    indices_ptr,  # col_indices (nnzb,)
    out_ptr,  # (SPLIT, nnzb, BH, BW) contiguous: float32 partials, or the result itself when SPLIT == 1
    n_pixels,  # N · OH · OW
    pixels_per_split,
    OH, OW, H, W,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    n_block_rows,
    search_steps,  # ceil(log2(n_block_rows))
    nnzb,
    channel_blocks,  # Cg / BW
    KW, SH, SW, PH, PW, DH, DW,
    size_class, layout_class,  # autotune key only
    BH: tl.constexpr,
    BW: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    TILE_M: tl.constexpr = BH if BH < BLOCK_M else BLOCK_M
    TILE_N: tl.constexpr = BW if BW < BLOCK_N else BLOCK_N
    M_SPLIT: tl.constexpr = BH // TILE_M
    N_SPLIT: tl.constexpr = BW // TILE_N

    pid = tl.program_id(0)
    k = pid // (M_SPLIT * N_SPLIT)  # the kept block
    m0 = (pid // N_SPLIT) % M_SPLIT * TILE_M
    n0 = pid % N_SPLIT * TILE_N
    split = tl.program_id(1)

    # The block row of block k: the last r with row_offsets[r] <= k (bsr_sddmm.py explains the search).
    lo = k * 0
    hi = k * 0 + n_block_rows
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(offsets_ptr + mid) <= k
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    block_row = lo.to(tl.int64)
    j = tl.load(indices_ptr + k)
    t = j // channel_blocks
    c0 = ((j % channel_blocks) * BW).to(tl.int64)
    shift_h = (t // KW) * DH - PH
    shift_w = (t % KW) * DW - PW

    offs_m = m0 + tl.arange(0, TILE_M)
    offs_n = n0 + tl.arange(0, TILE_N)
    grad_rows = (block_row * BH + offs_m).to(tl.int64) * stride_gc  # (TILE_M,)
    x_rows = (c0 + offs_n).to(tl.int64) * stride_xc  # (TILE_N,)
    offs_p = tl.arange(0, BLOCK_P)

    start = split * pixels_per_split
    end = tl.minimum(start + pixels_per_split, n_pixels)
    acc = tl.zeros((TILE_M, TILE_N), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        pix = p0 + offs_p
        in_range = pix < end
        n = (pix // (OH * OW)).to(tl.int64)
        oh = (pix // OW) % OH
        ow = pix % OW
        ih = oh * SH + shift_h
        iw = ow * SW + shift_w
        valid = in_range & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g = tl.load(grad_ptr + grad_rows[:, None] + (n * stride_gn + oh.to(tl.int64) * stride_gh
                                                     + ow.to(tl.int64) * stride_gw)[None, :],
                    mask=in_range[None, :], other=0.0)  # (TILE_M, BLOCK_P)
        xt = tl.load(x_ptr + x_rows[:, None] + (n * stride_xn + ih.to(tl.int64) * stride_xh
                                                + iw.to(tl.int64) * stride_xw)[None, :],
                     mask=valid[None, :], other=0.0)  # (TILE_N, BLOCK_P)
        acc = tl.dot(g, tl.trans(xt), acc, input_precision="ieee")

    out_block = out_ptr + (split.to(tl.int64) * nnzb + k) * (BH * BW)
    tl.store(out_block + offs_m[:, None] * BW + offs_n[None, :], acc.to(out_ptr.dtype.element_ty))


# --------------------------------------------------------------------------------------------- wrappers

def _output_size(input_size, kernel_size, stride, padding, dilation):
    return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                 for i, k, s, p, d in zip(input_size, kernel_size, stride, padding, dilation))


def _groups_one(groups):
    if groups != 1:
        raise ValueError(f"groups: the Triton conv kernels support groups == 1, got {groups} (the dispatcher "
                         "sends grouped convolutions to the reference)")


def _size_class(n: int) -> int:
    return max(int(n), 0).bit_length()


def _layout_class(t: torch.Tensor) -> int:
    """1 for a channels-last activation (unit channel stride), else 0: the gathers' access pattern."""
    return int(t.stride(1) == 1 and t.shape[1] > 1)


def _geometry(kernel_size, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(int(v) for v in g) for g in
                                              (kernel_size, stride, padding, dilation))
    return kh, kw, sh, sw, ph, pw, dh, dw


def bsr_conv2d(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, bias,
               kernel_size, stride, padding, dilation, groups):
    """y (N, C_out, OH, OW) = conv2d(x, W) + bias, with W the tap-major block-sparse weight; channels_last when
    x is (``reference.activation_format``), else contiguous NCHW.

    x (N, C_in, H, W) of any strides (read in place), values (nnzb, bh, bw) of x's dtype, bias (C_out,) or
    None. Only kept blocks are read or multiplied. groups == 1 only.
    """
    _groups_one(groups)
    geometry = _geometry(kernel_size, stride, padding, dilation)
    _, bh, bw = values.shape
    batch, c_in, height, width = x.shape
    n_block_rows = row_offsets.numel() - 1
    c_out = n_block_rows * bh
    oh, ow = _output_size((height, width), kernel_size, stride, padding, dilation)
    fmt = activation_format(x)
    if batch == 0 or values.shape[0] == 0:  # nothing to gather: the bias (or zeros) everywhere
        y = torch.empty(batch, c_out, oh, ow, dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
        return y.add_(bias.view(1, -1, 1, 1)) if bias is not None else y
    y = torch.empty(batch, c_out, oh, ow, dtype=x.dtype, device=x.device, memory_format=fmt)
    n_pixels = batch * oh * ow

    def grid(meta):
        m_programs = n_block_rows * (bh // tuning.capped(meta["BLOCK_M"], bh))
        return (m_programs * triton.cdiv(n_pixels, meta["BLOCK_P"]),)

    _bsr_conv2d_gemm_kernel[grid](
        x, values.contiguous(), row_offsets.contiguous(), col_indices.contiguous(), col_indices,
        bias.contiguous() if bias is not None else values, y, n_block_rows, batch, oh, ow, height, width,
        *x.stride(), *y.stride(), c_in // bw, *geometry, _size_class(n_pixels), _layout_class(x),
        BH=bh, BW=bw, TRANSPOSED=False, HAS_BIAS=bias is not None)
    return y


def bsr_conv2d_input_grad(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                          t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """dx (N, C_in, H, W) of y = conv2d(x, W) given dy = grad (N, C_out, OH, OW), any strides; channels_last
    when grad is, else contiguous NCHW.

    Gathers, per tile of dx, the kept blocks of each tap's block column through the transpose metadata
    (t_row_offsets, t_col_indices, t_perm): no atomics, no transposed copy of the values. groups == 1 only.
    """
    _groups_one(groups)
    geometry = _geometry(kernel_size, stride, padding, dilation)
    kh, kw, sh, sw = geometry[:4]
    _, bh, bw = values.shape
    batch, c_out, oh, ow = grad.shape
    height, width = (int(v) for v in input_size)
    c_in = (t_row_offsets.numel() - 1) * bw // (kh * kw)
    fmt = activation_format(grad)
    if batch == 0 or values.shape[0] == 0:
        return torch.empty(batch, c_in, height, width, dtype=grad.dtype, device=grad.device,
                           memory_format=fmt).zero_()
    dx = torch.empty(batch, c_in, height, width, dtype=grad.dtype, device=grad.device, memory_format=fmt)
    channel_blocks = c_in // bw
    # Pixels of one stride phase: the phase grid is cdiv(H, sh) x cdiv(W, sw) (the smaller phases masked).
    phase_pixels = batch * triton.cdiv(height, sh) * triton.cdiv(width, sw)

    def grid(meta):
        m_programs = channel_blocks * (bw // tuning.capped(meta["BLOCK_M"], bw))
        return (m_programs * sh * sw * triton.cdiv(phase_pixels, meta["BLOCK_P"]),)

    _bsr_conv2d_gemm_kernel[grid](
        grad, values.contiguous(), t_row_offsets.contiguous(), t_col_indices.contiguous(), t_perm.contiguous(),
        values, dx, channel_blocks, batch, height, width, oh, ow, *grad.stride(), *dx.stride(), channel_blocks,
        *geometry, _size_class(batch * height * width), _layout_class(grad),
        BH=bh, BW=bw, TRANSPOSED=True, HAS_BIAS=False)
    return dx


def _split_pixels(n_pixels: int, nnzb: int) -> tuple[int, int]:
    """(SPLIT, pixels per split) of the weight gradient's reduction: about TARGET_PROGRAMS programs, none
    shorter than MIN_PIXELS_PER_SPLIT pixels (rounded to SPLIT_GRANULE), and SPLIT = 1 when nnzb alone
    fills the GPU."""
    most = max(1, n_pixels // MIN_PIXELS_PER_SPLIT)
    split = max(1, min(most, triton.cdiv(TARGET_PROGRAMS, max(nnzb, 1))))
    per_split = triton.cdiv(triton.cdiv(n_pixels, split), SPLIT_GRANULE) * SPLIT_GRANULE
    return triton.cdiv(n_pixels, per_split), per_split


def bsr_conv2d_weight_grad(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                           kernel_size, stride, padding, dilation, groups):
    """dL/dW at the kept blocks only: (nnzb, bh, bw) in x's dtype, bh = C_out / n_block_rows and
    bw = kH·kW·C_in / n_block_cols. grad (N, C_out, OH, OW) and x (N, C_in, H, W) of any strides.

    Deterministic: the pixel reduction is split into float32 partials summed in a fixed order (no atomics).
    groups == 1 only.
    """
    _groups_one(groups)
    geometry = _geometry(kernel_size, stride, padding, dilation)
    kh, kw = geometry[:2]
    batch, c_in, height, width = x.shape
    _, c_out, oh, ow = grad.shape
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    bh, bw = c_out // n_block_rows, kh * kw * c_in // n_block_cols
    nnzb = col_indices.numel()
    n_pixels = batch * oh * ow
    if nnzb == 0 or n_pixels == 0:  # no block, or a sum over no pixel
        return torch.zeros(nnzb, bh, bw, dtype=x.dtype, device=x.device)
    split, per_split = _split_pixels(n_pixels, nnzb)
    out = torch.empty(nnzb, bh, bw, dtype=x.dtype, device=x.device)
    partials = out if split == 1 else torch.empty(split, nnzb, bh, bw, dtype=torch.float32, device=x.device)
    search_steps = max(0, (n_block_rows - 1).bit_length())  # ceil(log2(n_block_rows))

    def grid(meta):
        tiles = (bh // tuning.capped(meta["BLOCK_M"], bh)) * (bw // tuning.capped(meta["BLOCK_N"], bw))
        return (nnzb * tiles, split)

    _bsr_conv2d_weight_grad_kernel[grid](
        grad, x, row_offsets.contiguous(), col_indices.contiguous(), partials, n_pixels, per_split,
        oh, ow, height, width, *grad.stride(), *x.stride(), n_block_rows, search_steps, nnzb, c_in // bw,
        geometry[1], *geometry[2:], _size_class(per_split), _layout_class(x), BH=bh, BW=bw)
    if split > 1:
        out.copy_(partials.sum(0))  # a fixed-order float32 reduction, rounded once
    return out
