// Mask -> layout tensors, built exactly as sparsekern/layout.py builds them, so the C++ tests feed the
// kernels what the Python package feeds them:
//
//   row_offsets   (n_rows+1) int32   CSR offsets of the kept entries in row-major order
//   col_indices   (nnz)      int32
//   t_row_offsets (n_cols+1) int32   the same for maskᵀ (CSC of the mask)
//   t_col_indices (nnz)      int32   rows[t_perm]
//   t_perm        (nnz)      int64   stable sort of the entries by column: values_t = values[t_perm]
//   t_perm_inv    (nnz)      int64   its inverse
//
// For BSR the same is built over the grid of blocks (BSRLayout.block in layout.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace skt {

// Row-major boolean mask.
struct Mask {
  int64_t n_rows = 0, n_cols = 0;
  std::vector<uint8_t> keep;
  bool at(int64_t r, int64_t c) const { return keep[r * n_cols + c] != 0; }
};

struct Layout {
  int64_t n_rows = 0, n_cols = 0;
  at::Tensor row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv;
  // Host copies, for the reference and for building bad inputs.
  std::vector<int32_t> offsets, cols, rows;  // rows: the row of every stored entry
  std::vector<int64_t> perm;

  int64_t nnz() const { return static_cast<int64_t>(cols.size()); }
  // The layout of the transpose: CSR and CSC halves swapped, permutation swapped with its inverse
  // (CSRLayout.transpose() / _ops._transposed).
  Layout transposed() const;
};

Layout layout_from_mask(const Mask& mask);

// The tensors for a std::vector (copied; size 0 is fine).
at::Tensor to_tensor(const std::vector<int32_t>& v);
at::Tensor to_tensor(const std::vector<int64_t>& v);

}  // namespace skt
