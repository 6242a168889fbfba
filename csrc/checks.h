// Argument checks for the compiled kernels. Each message names the argument, what was expected and what
// was given. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace sparsekern {

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
}

inline void check_index(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  check_cpu(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.dim() == 1, name, ": expected a 1-D ", dtype,
                   " tensor, got ", t.scalar_type(), " with shape ", t.sizes());
}

inline void check_float(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   ": expected float32 or float64, got ", t.scalar_type());
}

// The kept values of a CSR layout: a 1-D float tensor with one entry per stored entry.
inline void check_values(const at::Tensor& values, int64_t nnz) {
  check_float(values, "values");
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == nnz, "values: expected shape (", nnz, ",), got ",
                    values.sizes());
}

inline void check_dense(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected a 2-D (features, batch) tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == rows, name, ": expected ", rows, " rows, got shape ", t.sizes());
}

// An optional bias for an output with n_rows features: undefined if absent, else a contiguous 1-D tensor
// of n_rows entries with the dtype of `like`.
inline at::Tensor checked_bias(const std::optional<at::Tensor>& bias, const at::Tensor& like, int64_t n_rows) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_cpu(*bias, "bias");
  TORCH_CHECK_TYPE(bias->scalar_type() == like.scalar_type(), "bias: expected dtype ", like.scalar_type(), ", got ",
                   bias->scalar_type());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n_rows, "bias: expected shape (", n_rows, ",), got ",
                    bias->sizes());
  return bias->contiguous();
}

// Checks one compressed index (CSR, or the CSC half): offsets run 0..nnz without decreasing and every
// index lies in [0, n_cols). O(rows + nnz), cheap next to the O(nnz * batch) kernels, and it turns a
// corrupt layout into an error instead of an out-of-bounds read.
inline void check_compressed(const at::Tensor& offsets, const at::Tensor& indices, int64_t n_cols,
                             const char* offsets_name, const char* indices_name) {
  check_index(offsets, offsets_name, at::kInt);
  check_index(indices, indices_name, at::kInt);
  TORCH_CHECK_VALUE(offsets.is_contiguous() && indices.is_contiguous(), offsets_name, ", ", indices_name,
                    ": expected contiguous tensors");
  TORCH_CHECK_VALUE(offsets.numel() >= 1, offsets_name, ": expected at least one entry");
  const int32_t* off = offsets.data_ptr<int32_t>();
  const int64_t n_rows = offsets.numel() - 1;
  const int64_t nnz = indices.numel();
  TORCH_CHECK_VALUE(off[0] == 0 && off[n_rows] == nnz, offsets_name, ": expected to run from 0 to nnz=", nnz,
                    ", got ", off[0], "..", off[n_rows]);
  for (int64_t r = 0; r < n_rows; ++r) {
    TORCH_CHECK_VALUE(off[r] <= off[r + 1], offsets_name, ": decreases at row ", r);
  }
  const int32_t* idx = indices.data_ptr<int32_t>();
  int32_t lo = 0, hi = 0;
  for (int64_t i = 0; i < nnz; ++i) {
    lo = idx[i] < lo ? idx[i] : lo;
    hi = idx[i] > hi ? idx[i] : hi;
  }
  TORCH_CHECK_VALUE(nnz == 0 || (lo >= 0 && hi < n_cols), indices_name, ": expected indices in [0, ", n_cols,
                    "), got range [", lo, ", ", hi, "]");
}

// The six layout tensors every op takes; returns (n_rows, n_cols, nnz) of the (block) grid.
struct LayoutShape {
  int64_t n_rows, n_cols, nnz;
};

inline LayoutShape check_layout(const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                const at::Tensor& t_perm, const at::Tensor& t_perm_inv) {
  check_index(t_row_offsets, "t_row_offsets", at::kInt);
  check_index(t_col_indices, "t_col_indices", at::kInt);
  check_index(t_perm, "t_perm", at::kLong);
  check_index(t_perm_inv, "t_perm_inv", at::kLong);
  TORCH_CHECK_VALUE(t_row_offsets.numel() >= 1, "t_row_offsets: expected at least one entry (n_cols + 1), got 0");
  const int64_t n_cols = t_row_offsets.numel() - 1;
  check_compressed(row_offsets, col_indices, n_cols, "row_offsets", "col_indices");
  const int64_t nnz = col_indices.numel();
  TORCH_CHECK_VALUE(t_col_indices.numel() == nnz && t_perm.numel() == nnz && t_perm_inv.numel() == nnz,
                    "layout: col_indices, t_col_indices, t_perm and t_perm_inv must all have nnz=", nnz,
                    " entries, got ", t_col_indices.numel(), ", ", t_perm.numel(), ", ", t_perm_inv.numel());
  return {row_offsets.numel() - 1, n_cols, nnz};
}

}  // namespace sparsekern
