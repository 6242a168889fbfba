"""Test helpers: the tolerance rule of DESIGN.md, masks, and dense <-> block conversions.

Imported by the test modules as ``helpers`` (pytest's default "prepend" import mode puts ``tests/`` on
``sys.path`` because the directory has no ``__init__.py``).
"""
from __future__ import annotations

import torch

from sparsekern.layout import BSRLayout, row_ids

# --------------------------------------------------------------------------------------------- tolerance

# The absolute floor: FLOOR_EPS * eps(dtype) * max|ref|, i.e. one unit in the last place of the largest
# result element (1.2e-7 relative in float32, 2.2e-16 in float64).
#
# Why a floor at all: the rule "error(op) <= k * error(plain PyTorch)" breaks down when the plain-PyTorch
# baseline happens to be (nearly) *exact* on a given draw: tiny problems (batch 1, one row, one column, a
# handful of kept entries) where every output is a sum of one or two products, or outputs that are exactly
# zero. A kernel that sums in another order, or contracts a*b+c into one FMA where the BLAS did not, is then
# an ulp off an exact baseline and fails "err <= k * 0" although it is as accurate as float arithmetic
# allows. Measured: with no floor, ~20 of the small cases fail by a fraction of an ulp, in both directions
# (op and reference implementations alike); with one ulp of the largest element, all pass. One ulp is far
# below any real bug (a wrong index or a dropped entry is an O(1) relative error; accumulating in a lower
# precision is ~2^29 ulps for float64) and, on the big cases, below the baseline's own error, so there the
# 2x / 3x rule is what decides.
#
# When ref is identically 0 (everything pruned, empty batch) the floor is 0, so the op must return exact 0.
FLOOR_EPS = 1.0


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def max_err(x: torch.Tensor, ref64: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return (x.double() - ref64.double()).abs().max().item()


def assert_error_budget(out: torch.Tensor, baseline: torch.Tensor, ref64: torch.Tensor, factor: float = 2.0,
                        what: str = "output") -> None:
    """DESIGN.md: error(out vs float64 reference) <= factor * error(baseline vs the same reference) + floor.

    ``baseline`` is the same quantity computed with plain PyTorch (dense GEMMs) in ``out``'s dtype; factor is 2
    for forward results and 3 for gradients.
    """
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    assert baseline.shape == ref64.shape, f"{what}: baseline shape {tuple(baseline.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == baseline.dtype, f"{what}: dtype {out.dtype} != baseline dtype {baseline.dtype}"
    if out.numel() == 0:
        return
    assert bool(torch.isfinite(out).all()), f"{what}: non-finite values in the output"
    err = max_err(out, ref64)
    base = max_err(baseline, ref64)
    floor = FLOOR_EPS * _eps(out.dtype) * ref64.abs().max().item()
    assert err <= factor * base + floor, (
        f"{what}: max error {err:.3e} vs float64 reference exceeds {factor}x the plain-PyTorch {out.dtype} error "
        f"{base:.3e} (+ floor {floor:.3e})")


# ------------------------------------------------------------------------------------ an exact oracle
# A float64 op cannot be judged against a float64 reference: the reference rounds as much as the op, and
# which of the two happens to sit closer to the truth is noise. For float64 we therefore compute the oracle
# in double-double arithmetic (~106 bits): every product split exactly into hi + lo (Dekker's TwoProduct),
# then a pairwise tree of error-free additions (Knuth's TwoSum). The result, rounded once to float64, is
# the correctly rounded value up to a relative error ~k * 2^-104: exact for any test here.

_SPLITTER = 134217729.0  # 2^27 + 1


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def exact_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for float64 ``a`` (m, k) and ``b`` (k, n), accurate to the last bit (see above).

    Runs on one intra-op thread: ~30 small elementwise ops per tree level gain nothing from threads, and on a
    busy 2-core machine each parallel region can stall for a scheduler tick (measured 20x slower).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _exact_mm(a.double(), b.double())
    finally:
        torch.set_num_threads(previous)


def _exact_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[1]
    if k == 0:
        return a.new_zeros(m, n)
    hi, lo = _two_prod(a[:, :, None], b[None, :, :])  # (m, k, n), hi + lo == a_ik * b_kj exactly
    while hi.shape[1] > 1:
        if hi.shape[1] % 2:
            hi = torch.cat([hi, hi.new_zeros(m, 1, n)], 1)
            lo = torch.cat([lo, lo.new_zeros(m, 1, n)], 1)
        s, e = _two_sum(hi[:, 0::2], hi[:, 1::2])
        e = e + (lo[:, 0::2] + lo[:, 1::2])
        hi = s + e
        lo = e - (hi - s)
    return (hi + lo)[:, 0]


def oracle_mm(a: torch.Tensor, b: torch.Tensor, exact: bool | None = None) -> torch.Tensor:
    """The float64 reference product for data of ``a``'s dtype: plain float64 for float32 data (29 more bits
    than the data), exact_mm for float64 data. ``exact`` overrides the choice (for already-cast operands)."""
    if exact is None:
        exact = a.dtype == torch.float64
    return exact_mm(a, b) if exact else a.double() @ b.double()


# ----------------------------------------------------------------------------------------------- masks

def exact_mask(shape, sparsity: float, generator=None) -> torch.Tensor:
    """Bool mask with exactly round((1 - sparsity) * numel) kept entries, drawn from torch's global RNG.

    Independent of sparsekern.masks, so the kernel tests do not rest on the code under test in test_masks.
    """
    n = shape[0] * shape[1]
    kept = round((1.0 - sparsity) * n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:kept]] = True
    return mask.view(shape)


def mask_with_pruned_lines(shape, sparsity: float = 0.3) -> torch.Tensor:
    """A random mask with some rows and some columns fully pruned (first, last and one in the middle)."""
    mask = exact_mask(shape, sparsity)
    n_rows, n_cols = shape
    for r in {0, n_rows // 2, n_rows - 1} if n_rows > 2 else {0}:
        mask[r] = False
    for c in {0, n_cols // 2, n_cols - 1} if n_cols > 2 else {0}:
        mask[:, c] = False
    return mask


def grid_mask(grid_shape, density: float, pruned_row=None, pruned_col=None) -> torch.Tensor:
    """A random block-grid mask keeping round(density * blocks) blocks, with one block row and/or column
    fully pruned when asked."""
    n = grid_shape[0] * grid_shape[1]
    grid = torch.zeros(n, dtype=torch.bool)
    grid[torch.randperm(n)[:round(density * n)]] = True
    grid = grid.view(grid_shape)
    if pruned_row is not None:
        grid[pruned_row] = False
    if pruned_col is not None:
        grid[:, pruned_col] = False
    return grid


def block_mask(grid_shape, block_size, sparsity: float, prune_lines: bool = False) -> torch.Tensor:
    """An element mask made of whole blocks: a random mask over the block grid, blown up to elements."""
    grid = mask_with_pruned_lines(grid_shape, sparsity) if prune_lines else exact_mask(grid_shape, sparsity)
    bh, bw = block_size
    return grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)


def tap_block_mask(c_out, group_in, kernel_size, block_size, sparsity: float, prune_lines: bool = False):
    """A conv mask (c_out, group_in, kH, kW) made of whole (bh out x bw in channels) blocks at each kernel tap,
    i.e. whole blocks of the tap-major view (c_out, kH*kW*group_in) that the bsr_conv2d ops take."""
    kh, kw = kernel_size
    bh, bw = block_size
    tap_major = block_mask((c_out // bh, kh * kw * group_in // bw), block_size, sparsity, prune_lines)
    return tap_major.view(c_out, kh, kw, group_in).permute(0, 3, 1, 2).contiguous()


def tap_major(w: torch.Tensor) -> torch.Tensor:
    """A conv weight or mask (C_out, Cg, kH, kW) viewed as (C_out, kH*kW*Cg), column t*Cg + c."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def from_tap_major(w2d: torch.Tensor, group_in: int, kernel_size) -> torch.Tensor:
    """The inverse of tap_major."""
    return w2d.view(w2d.shape[0], *kernel_size, group_in).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------ blocks
# Written with plain reshapes and the block grid's (row, col) coordinates, independent of from_elements.

def _block_coords(layout: BSRLayout):
    return row_ids(layout.block.row_offsets), layout.block.col_indices.long()


def dense_to_blocks(w: torch.Tensor, layout: BSRLayout) -> torch.Tensor:
    """The kept blocks of a dense (n_rows, n_cols) matrix, in block order: (nnzb, bh, bw)."""
    bh, bw = layout.block_size
    nbr, nbc = layout.block.shape
    grid = w.reshape(nbr, bh, nbc, bw).permute(0, 2, 1, 3)
    rows, cols = _block_coords(layout)
    return grid[rows, cols]


def blocks_to_dense(blocks: torch.Tensor, layout: BSRLayout) -> torch.Tensor:
    """The dense (n_rows, n_cols) matrix whose kept blocks are ``blocks`` and which is zero elsewhere."""
    bh, bw = layout.block_size
    nbr, nbc = layout.block.shape
    grid = blocks.new_zeros(nbr, nbc, bh, bw)
    rows, cols = _block_coords(layout)
    grid[rows, cols] = blocks
    return grid.permute(0, 2, 1, 3).reshape(nbr * bh, nbc * bw)


def train_beside_twin(model, opt, twin, opt_twin, x, y, steps: int) -> list[float]:
    """``steps`` steps of MSE regression of x onto y for a model and its masked-dense twin, interleaved step by
    step (each with its own optimizer); returns the model's loss before each step."""
    losses = []
    for _ in range(steps):
        for m, o in ((model, opt), (twin, opt_twin)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()
            if m is model:
                losses.append(loss.item())
    return losses


def config_params(configs):
    """pytest params of Triton configs, one id per config (its tiles, warps and stages)."""
    import pytest
    return [pytest.param(c, id=f"{'-'.join(f'{k}{v}' for k, v in c.kwargs.items())}-w{c.num_warps}-s{c.num_stages}")
            for c in configs]
