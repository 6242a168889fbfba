"""Sparsity layouts: a boolean mask turned, once, into the index metadata the kernels walk.

A layout describes *where* the kept weights of a 2-D weight ``W`` of shape ``(n_rows, n_cols)`` are; the
values themselves live elsewhere (a module parameter). Every layout carries the metadata of its transpose
(CSC of ``W`` = CSR of ``Wᵀ``) so that the input gradient ``dX = dY W`` walks ``Wᵀ`` row by row without
re-sorting anything during training.

Value order is the mask's row-major order (``dense[mask]``) for CSR, and block order for BSR; a BSR layout
also holds ``from_elements``, the gather that turns row-major kept values into block order.

Index dtypes: offsets and indices are int32 (what the kernels read), permutations are int64 (what
``index_select`` wants).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .validation import check_mask

_INT32_MAX = 2**31 - 1


def _offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return offsets


def _inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inv


def _compressed(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int):
    """CSR offsets/indices from row-major sorted (rows, cols), plus the CSC side and the permutation."""
    if rows.numel() > _INT32_MAX or max(n_rows, n_cols) > _INT32_MAX:
        raise ValueError(f"mask: at most {_INT32_MAX} kept entries and rows/cols supported, got "
                         f"{rows.numel()} kept in a {n_rows}x{n_cols} weight")
    offsets = _offsets_from_counts(torch.bincount(rows, minlength=n_rows))
    # A stable sort by column keeps rows ascending inside each column: that is the CSC order.
    t_perm = torch.sort(cols, stable=True).indices
    t_offsets = _offsets_from_counts(torch.bincount(cols, minlength=n_cols))
    return (offsets.to(torch.int32), cols.to(torch.int32), t_offsets.to(torch.int32),
            rows[t_perm].to(torch.int32), t_perm, _inverse_permutation(t_perm))


@dataclass(frozen=True)
class CSRLayout:
    """Compressed-sparse-row metadata of a ``(n_rows, n_cols)`` mask, with its transpose precomputed.

    ``row_offsets`` (n_rows+1, int32) and ``col_indices`` (nnz, int32) index the kept entries in row-major
    order. ``t_row_offsets`` (n_cols+1) and ``t_col_indices`` (nnz) are the same for ``maskᵀ``;
    ``values_t = values[t_perm]`` reorders values for the transpose and ``t_perm_inv`` undoes it.
    """

    shape: tuple[int, int]
    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    t_row_offsets: torch.Tensor
    t_col_indices: torch.Tensor
    t_perm: torch.Tensor
    t_perm_inv: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "CSRLayout":
        mask = check_mask(mask, "mask")
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(tuple(mask.shape), *_compressed(rows, cols, *mask.shape))

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    @property
    def density(self) -> float:
        n = self.shape[0] * self.shape[1]
        return self.nnz / n if n else 1.0

    @property
    def device(self) -> torch.device:
        return self.col_indices.device

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The six index tensors, in the order the ``sparsekern::csr_*`` ops take them."""
        return (self.row_offsets, self.col_indices, self.t_row_offsets, self.t_col_indices,
                self.t_perm, self.t_perm_inv)

    def transpose(self) -> "CSRLayout":
        return CSRLayout((self.shape[1], self.shape[0]), self.t_row_offsets, self.t_col_indices,
                         self.row_offsets, self.col_indices, self.t_perm_inv, self.t_perm)

    def to(self, device) -> "CSRLayout":
        return CSRLayout(self.shape, *(t.to(device) for t in self.tensors()))

    def to_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        rows = row_ids(self.row_offsets)
        mask[rows, self.col_indices.long()] = True
        return mask

    def validate(self) -> "CSRLayout":
        """Check every invariant the kernels rely on; raise ValueError naming the broken one."""
        n_rows, n_cols = self.shape
        check_compressed("row_offsets", "col_indices", self.row_offsets, self.col_indices, n_rows, n_cols)
        check_compressed("t_row_offsets", "t_col_indices", self.t_row_offsets, self.t_col_indices,
                          n_cols, n_rows)
        check_transpose_metadata(*self.tensors())
        return self


@dataclass(frozen=True)
class BSRLayout:
    """Block-sparse-row metadata: a mask made of whole ``block_size`` blocks that are kept or pruned.

    ``block`` is a CSRLayout over the grid of blocks (shape ``(n_rows/bh, n_cols/bw)``), transpose
    included. ``from_elements`` (nnz, int64) gathers row-major kept values (``dense[mask]``) into block
    order, so ``values[from_elements].view(nnzb, bh, bw)`` are the kept blocks, each row-major.
    """

    shape: tuple[int, int]
    block_size: tuple[int, int]
    block: CSRLayout
    from_elements: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block_size) -> "BSRLayout":
        mask = check_mask(mask, "mask")
        bh, bw = _check_block_size(block_size, tuple(mask.shape))
        n_rows, n_cols = mask.shape
        grid = mask.view(n_rows // bh, bh, n_cols // bw, bw).permute(0, 2, 1, 3)
        kept_blocks = grid.any(dim=(2, 3))
        partial = kept_blocks & ~grid.all(dim=(2, 3))
        if partial.any():
            br, bc = partial.nonzero()[0].tolist()
            raise ValueError(f"mask: not made of whole {bh}x{bw} blocks: block ({br}, {bc}) at rows "
                             f"{br * bh}:{(br + 1) * bh}, cols {bc * bw}:{(bc + 1) * bw} is partly kept")
        block = CSRLayout.from_mask(kept_blocks)
        # Position of each kept element in row-major order, arranged block by block.
        element_rank = torch.full(mask.shape, -1, dtype=torch.int64, device=mask.device)
        element_rank[mask] = torch.arange(int(mask.sum()), device=mask.device)
        ranks = element_rank.view(n_rows // bh, bh, n_cols // bw, bw).permute(0, 2, 1, 3)[kept_blocks]
        return cls(tuple(mask.shape), (bh, bw), block, ranks.reshape(-1))

    @property
    def nnz(self) -> int:
        return self.from_elements.numel()

    @property
    def density(self) -> float:
        return self.block.density

    @property
    def device(self) -> torch.device:
        return self.from_elements.device

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The block-grid index tensors, in the order the ``sparsekern::bsr_*`` ops take them."""
        return self.block.tensors()

    def to(self, device) -> "BSRLayout":
        return BSRLayout(self.shape, self.block_size, self.block.to(device), self.from_elements.to(device))

    def to_mask(self) -> torch.Tensor:
        bh, bw = self.block_size
        return self.block.to_mask().repeat_interleave(bh, 0).repeat_interleave(bw, 1)

    def validate(self) -> "BSRLayout":
        self.block.validate()
        bh, bw = _check_block_size(self.block_size, self.shape)
        if self.block.shape != (self.shape[0] // bh, self.shape[1] // bw):
            raise ValueError(f"layout: block grid {self.block.shape} does not match shape {self.shape} "
                             f"with blocks {bh}x{bw}")
        if self.nnz != self.block.nnz * bh * bw:
            raise ValueError(f"layout: from_elements has {self.nnz} entries, expected {self.block.nnz * bh * bw}")
        return self


def row_ids(offsets: torch.Tensor) -> torch.Tensor:
    """The row of every stored entry (int64), expanded from CSR offsets."""
    counts = (offsets[1:] - offsets[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)


def _check_block_size(block_size, shape) -> tuple[int, int]:
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    try:
        bh, bw = (int(b) for b in block_size)
    except (TypeError, ValueError):
        raise TypeError(f"block_size: expected an int or a pair of ints, got {block_size!r}") from None
    if bh < 1 or bw < 1:
        raise ValueError(f"block_size: expected positive sizes, got {(bh, bw)}")
    if shape[0] % bh or shape[1] % bw:
        raise ValueError(f"block_size: {bh}x{bw} blocks must tile the weight exactly, but shape is "
                         f"{shape[0]}x{shape[1]}")
    return bh, bw


def check_compressed(offsets_name, indices_name, offsets, indices, n_rows, n_cols):
    """Offsets run 0..nnz without decreasing, indices lie in [0, n_cols) and increase within each row."""
    for name, t in ((offsets_name, offsets), (indices_name, indices)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise ValueError(f"layout: {name} must be a 1-D int32 tensor, got {t.dtype} with shape "
                             f"{tuple(t.shape)}")
    if offsets.numel() != n_rows + 1:
        raise ValueError(f"layout: {offsets_name} must have {n_rows + 1} entries, got {offsets.numel()}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != indices.numel():
        raise ValueError(f"layout: {offsets_name} must run from 0 to nnz={indices.numel()}, got "
                         f"{int(offsets[0])}..{int(offsets[-1])}")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"layout: {offsets_name} must be non-decreasing")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_cols):
        raise ValueError(f"layout: {indices_name} must lie in [0, {n_cols})")
    same_row = row_ids(offsets)
    if indices.numel() > 1:
        step = indices[1:] - indices[:-1]
        if bool(((step <= 0) & (same_row[1:] == same_row[:-1])).any()):
            raise ValueError(f"layout: {indices_name} must be strictly increasing within each row")


def check_transpose_metadata(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """t_perm/t_perm_inv a permutation and its inverse, and the transpose half (t_*) the same kept positions
    as the CSR half (both halves already checked by check_compressed): what a kernel reading the values of
    the transpose through t_perm relies on."""
    _check_permutation(t_perm, t_perm_inv, col_indices.numel())
    rows = row_ids(row_offsets)[t_perm]
    if not torch.equal(rows.to(torch.int32), t_col_indices) or not torch.equal(
            col_indices[t_perm], row_ids(t_row_offsets).to(torch.int32)):
        raise ValueError("layout: transpose metadata (t_*) does not describe the same kept positions")


def _check_permutation(perm, perm_inv, n):
    if perm.numel() != n or perm_inv.numel() != n:
        raise ValueError(f"layout: t_perm/t_perm_inv must have nnz={n} entries")
    for name, p in (("t_perm", perm), ("t_perm_inv", perm_inv)):
        # Before indexing with them: an index out of range is a device-side assert on a GPU, not an error.
        if n and bool(((p < 0) | (p >= n)).any()):
            raise ValueError(f"layout: {name} must lie in [0, {n})")
    arange = torch.arange(n, device=perm.device)
    if n and not torch.equal(perm[perm_inv], arange):
        raise ValueError("layout: t_perm_inv is not the inverse of t_perm")
    if n and not torch.equal(torch.sort(perm).values, arange):
        raise ValueError("layout: t_perm is not a permutation of 0..nnz-1")
