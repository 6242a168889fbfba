"""CSRLayout / BSRLayout: invariants of from_mask, transpose, to_mask, from_elements, validate()."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import block_mask, dense_to_blocks, exact_mask, mask_with_pruned_lines
from sparsekern import BSRLayout, CSRLayout

MASKS = {
    "random": lambda: exact_mask((13, 29), 0.6),
    "pruned_lines": lambda: mask_with_pruned_lines((13, 29)),
    "full": lambda: torch.ones(5, 7, dtype=torch.bool),
    "empty": lambda: torch.zeros(5, 7, dtype=torch.bool),
    "one_row": lambda: exact_mask((1, 17), 0.5),
    "one_col": lambda: exact_mask((17, 1), 0.5),
    "zero_size": lambda: torch.zeros(0, 4, dtype=torch.bool),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_csr_from_mask_invariants(name):
    mask = MASKS[name]()
    n_rows, n_cols = mask.shape
    layout = CSRLayout.from_mask(mask)

    assert layout.shape == (n_rows, n_cols)
    assert layout.nnz == int(mask.sum())
    assert layout.density == (layout.nnz / mask.numel() if mask.numel() else 1.0)
    for t in (layout.row_offsets, layout.col_indices, layout.t_row_offsets, layout.t_col_indices):
        assert t.dtype == torch.int32 and t.dim() == 1
    for t in (layout.t_perm, layout.t_perm_inv):
        assert t.dtype == torch.int64 and t.dim() == 1
    # Row-major CSR of the mask, exactly what nonzero() lists.
    rows, cols = mask.nonzero(as_tuple=True)
    assert torch.equal(layout.row_offsets.long(),
                       torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)]))
    assert torch.equal(layout.col_indices.long(), cols)
    # The transpose half is the CSR of mask.T ...
    t_rows, t_cols = mask.T.nonzero(as_tuple=True)
    assert torch.equal(layout.t_row_offsets.long(),
                       torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(0).cumsum(0)]))
    assert torch.equal(layout.t_col_indices.long(), t_cols)
    # ... and t_perm reorders row-major values of W into row-major values of W.T; t_perm_inv undoes it.
    w = torch.randn(mask.shape)
    values = w[mask]
    assert torch.equal(values[layout.t_perm], w.T[mask.T])
    assert torch.equal(values[layout.t_perm][layout.t_perm_inv], values)
    assert layout.validate() is layout
    assert torch.equal(layout.to_mask(), mask)
    assert tuple(layout.tensors()) == (layout.row_offsets, layout.col_indices, layout.t_row_offsets,
                                       layout.t_col_indices, layout.t_perm, layout.t_perm_inv)


@pytest.mark.parametrize("name", list(MASKS))
def test_csr_transpose(name):
    mask = MASKS[name]()
    layout = CSRLayout.from_mask(mask)
    t = layout.transpose()
    assert t.shape == (mask.shape[1], mask.shape[0])
    assert torch.equal(t.to_mask(), mask.T)
    t.validate()
    # Same as building the layout of mask.T from scratch.
    fresh = CSRLayout.from_mask(mask.T.contiguous())
    for a, b in zip(t.tensors(), fresh.tensors()):
        assert torch.equal(a, b)
    tt = t.transpose()
    assert tt.shape == layout.shape
    for a, b in zip(tt.tensors(), layout.tensors()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32, torch.float64])
def test_from_mask_accepts_0_1_masks_of_any_real_dtype(dtype):
    mask = exact_mask((6, 9), 0.5)
    layout = CSRLayout.from_mask(mask.to(dtype))
    assert torch.equal(layout.to_mask(), mask)


def test_from_mask_accepts_non_contiguous_mask():
    base = exact_mask((9, 6), 0.5)
    layout = CSRLayout.from_mask(base.T)
    assert torch.equal(layout.to_mask(), base.T)
    layout.validate()


# ------------------------------------------------------------------------------------- validate() catches

def _corruptions(layout: CSRLayout):
    ro, ci = layout.row_offsets, layout.col_indices
    tro, tci = layout.t_row_offsets, layout.t_col_indices
    swapped = layout.t_perm.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    perm_outside = layout.t_perm.clone()
    perm_outside[0] = layout.nnz + 5
    cols_out = ci.clone()
    cols_out[-1] = layout.shape[1]
    cols_neg = ci.clone()
    cols_neg[0] = -1
    decreasing = ro.clone()
    decreasing[1] = int(ro[2]) + 1
    unsorted = ci.clone()
    r0 = (ro[1:] - ro[:-1] >= 2).nonzero()[0, 0]
    i = int(ro[r0])
    unsorted[[i, i + 1]] = unsorted[[i + 1, i]]
    t_cols_out = tci.clone()
    t_cols_out[0] = layout.shape[0] + 3
    # Same nnz, other positions: move the first kept entry to the first pruned position. (A flip of
    # the rows could give back the same mask, as it did once in CI.)
    other_mask = layout.to_mask().clone()
    kept, pruned = other_mask.flatten().nonzero()[0], (~other_mask).flatten().nonzero()[0]
    other_mask.view(-1)[kept], other_mask.view(-1)[pruned] = False, True
    assert not torch.equal(other_mask, layout.to_mask())
    other = CSRLayout.from_mask(other_mask)
    return {
        "col_out_of_range": (dict(col_indices=cols_out), r"col_indices must lie in \[0, 11\)"),
        "col_negative": (dict(col_indices=cols_neg), r"col_indices must lie in \[0, 11\)"),
        "offsets_not_ending_at_nnz": (dict(row_offsets=torch.cat([ro[:-1], ro[-1:] - 1])),
                                      r"row_offsets must run from 0 to nnz="),
        "offsets_not_starting_at_0": (dict(row_offsets=torch.cat([ro[:1] + 1, ro[1:]])),
                                      r"row_offsets must run from 0 to nnz="),
        "offsets_wrong_length": (dict(row_offsets=ro[:-1]), r"row_offsets must have 8 entries, got 7"),
        "offsets_decreasing": (dict(row_offsets=decreasing), r"row_offsets must be non-decreasing"),
        "cols_not_increasing": (dict(col_indices=unsorted), r"col_indices must be strictly increasing"),
        "int64_offsets": (dict(row_offsets=ro.long()), r"row_offsets must be a 1-D int32 tensor, got torch.int64"),
        "t_offsets_not_ending_at_nnz": (dict(t_row_offsets=torch.cat([tro[:-1], tro[-1:] + 1])),
                                        r"t_row_offsets must run from 0 to nnz="),
        "t_col_out_of_range": (dict(t_col_indices=t_cols_out), r"t_col_indices must lie in \[0, 7\)"),
        "perm_not_inverse": (dict(t_perm=swapped), r"t_perm_inv is not the inverse of t_perm"),
        "perm_out_of_range": (dict(t_perm=perm_outside), r"t_perm must lie in \[0, \d+\)"),
        "perm_wrong_length": (dict(t_perm=layout.t_perm[:-1]), r"t_perm/t_perm_inv must have nnz="),
        # Each half valid on its own, but the transpose half belongs to another mask with the same nnz.
        "transpose_describes_other_positions": (
            dict(zip(("t_row_offsets", "t_col_indices", "t_perm", "t_perm_inv"), other.tensors()[2:])),
            r"transpose metadata \(t_\*\) does not describe the same kept positions"),
    }


CORRUPTIONS = list(_corruptions(CSRLayout.from_mask(mask_with_pruned_lines((7, 11), 0.2))))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_csr_validate_catches_corruption(corruption):
    layout = CSRLayout.from_mask(mask_with_pruned_lines((7, 11), 0.2))
    changes, message = _corruptions(layout)[corruption]
    bad = dataclasses.replace(layout, **changes)
    with pytest.raises(ValueError, match=message):
        bad.validate()


# ------------------------------------------------------------------------------------------------- BSR

BLOCK_CASES = [((2, 3), (4, 5)), ((4, 4), (3, 3)), ((1, 8), (6, 2)), ((16, 16), (2, 3)), ((3, 1), (1, 1))]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("block_size,grid", BLOCK_CASES, ids=str)
def test_bsr_from_mask(block_size, grid, sparsity):
    mask = block_mask(grid, block_size, sparsity)
    layout = BSRLayout.from_mask(mask, block_size)
    bh, bw = block_size

    assert layout.shape == tuple(mask.shape)
    assert layout.block_size == block_size
    assert layout.block.shape == grid
    assert layout.nnz == int(mask.sum()) == layout.block.nnz * bh * bw
    assert layout.density == pytest.approx(float(mask.float().mean()))
    assert torch.equal(layout.block.to_mask(), mask[::bh, ::bw])
    assert torch.equal(layout.to_mask(), mask)
    assert layout.validate() is layout
    assert tuple(layout.tensors()) == tuple(layout.block.tensors())
    # from_elements: row-major kept values -> block order, each block row-major.
    assert layout.from_elements.dtype == torch.int64
    w = torch.randn(mask.shape) * mask
    values = w[mask]
    assert torch.equal(values[layout.from_elements].view(-1, bh, bw), dense_to_blocks(w, layout))
    assert torch.equal(torch.sort(layout.from_elements).values, torch.arange(layout.nnz))


def test_bsr_from_elements_explicit_example():
    """A hand-checked case: 2x2 blocks, mask keeps blocks (0,1) and (1,0) of a 4x4 weight."""
    mask = torch.tensor([[0, 0, 1, 1],
                         [0, 0, 1, 1],
                         [1, 1, 0, 0],
                         [1, 1, 0, 0]], dtype=torch.bool)
    layout = BSRLayout.from_mask(mask, 2)
    w = torch.arange(16.0).view(4, 4) + 1
    values = w[mask]  # [3, 4, 7, 8, 9, 10, 13, 14]
    assert values.tolist() == [3, 4, 7, 8, 9, 10, 13, 14]
    blocks = values[layout.from_elements].view(-1, 2, 2)
    assert blocks.tolist() == [[[3, 4], [7, 8]], [[9, 10], [13, 14]]]
    assert layout.block.col_indices.tolist() == [1, 0]
    assert layout.block.row_offsets.tolist() == [0, 1, 2]


def test_bsr_from_elements_with_wide_blocks_interleaving_rows():
    """Several kept blocks in one block row: row-major element order interleaves them, block order must not."""
    mask = block_mask((2, 3), (2, 2), 0.0)
    mask[:2, 2:4] = False  # block (0, 1) pruned
    layout = BSRLayout.from_mask(mask, (2, 2))
    w = torch.randn(mask.shape) * mask
    blocks = w[mask][layout.from_elements].view(-1, 2, 2)
    expected = torch.stack([w[0:2, 0:2], w[0:2, 4:6], w[2:4, 0:2], w[2:4, 2:4], w[2:4, 4:6]])
    assert torch.equal(blocks, expected)


def test_bsr_validate_catches_corruption():
    mask = block_mask((3, 4), (2, 3), 0.5)
    layout = BSRLayout.from_mask(mask, (2, 3))
    with pytest.raises(ValueError, match=r"from_elements has \d+ entries, expected"):
        dataclasses.replace(layout, from_elements=layout.from_elements[:-1]).validate()
    with pytest.raises(ValueError, match=r"block grid \(3, 4\) does not match shape \(6, 12\) with blocks 3x3"):
        dataclasses.replace(layout, block_size=(3, 3), shape=(6, 12)).validate()
    bad_block = dataclasses.replace(layout.block, col_indices=layout.block.col_indices + 10)
    with pytest.raises(ValueError, match=r"col_indices must lie in \[0, 4\)"):
        dataclasses.replace(layout, block=bad_block).validate()


def test_bsr_int_block_size_means_square():
    mask = block_mask((2, 2), (3, 3), 0.5)
    assert BSRLayout.from_mask(mask, 3).block_size == (3, 3)


def test_layout_to_device_round_trip():
    mask = mask_with_pruned_lines((6, 8))
    layout = CSRLayout.from_mask(mask).to("cpu")
    assert layout.device == torch.device("cpu")
    assert torch.equal(layout.to_mask(), mask)
    blayout = BSRLayout.from_mask(block_mask((2, 2), (2, 2), 0.5), (2, 2)).to("cpu")
    assert blayout.device == torch.device("cpu")
    blayout.validate()
