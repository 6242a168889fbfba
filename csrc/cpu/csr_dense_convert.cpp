// csr_to_dense_cpu / csr_from_dense_cpu: move kept values between compact (CSR order) and a dense matrix.
//
// These serve the *dense fallback* (backend="dense", below the measured crossover) and export, never a
// sparse path. They are each other's gradient. Threads split rows; each row is written (or read) front
// to back, so both run at memory bandwidth, unlike generic index_put/index_select.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "kernels.h"
#include "partition.h"

namespace sparsekern {

at::Tensor csr_to_dense_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                            int64_t n_cols) {
  TORCH_CHECK_VALUE(n_cols >= 0, "n_cols: expected a non-negative int, got ", n_cols);
  check_compressed(row_offsets, col_indices, n_cols, "row_offsets", "col_indices");
  check_values(values, col_indices.numel());
  const at::Tensor v = values.contiguous();
  const int64_t n_rows = row_offsets.numel() - 1;
  at::Tensor out = at::empty({n_rows, n_cols}, v.options());
  if (out.numel() == 0) return out;
  const int32_t* off = row_offsets.data_ptr<int32_t>();
  const int32_t* cols = col_indices.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "csr_to_dense_cpu", [&] {
    const scalar_t* src = v.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    parallel_over_rows(off, n_rows, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t r = row_begin; r < row_end; ++r) {
        scalar_t* row = dst + r * n_cols;
        std::fill(row, row + n_cols, scalar_t(0));
        for (int64_t i = off[r]; i < off[r + 1]; ++i) row[cols[i]] = src[i];
      }
    });
  });
  return out;
}

at::Tensor csr_from_dense_cpu(const at::Tensor& dense, const at::Tensor& row_offsets, const at::Tensor& col_indices) {
  check_float(dense, "dense");
  TORCH_CHECK_VALUE(dense.dim() == 2 && dense.size(0) == row_offsets.numel() - 1, "dense: expected shape (",
                    row_offsets.numel() - 1, ", n_cols), got ", dense.sizes());
  const int64_t n_cols = dense.size(1);
  check_compressed(row_offsets, col_indices, n_cols, "row_offsets", "col_indices");
  const at::Tensor d = dense.contiguous();
  const int64_t nnz = col_indices.numel();
  at::Tensor out = at::empty({nnz}, d.options());
  if (nnz == 0) return out;
  const int32_t* off = row_offsets.data_ptr<int32_t>();
  const int32_t* cols = col_indices.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "csr_from_dense_cpu", [&] {
    const scalar_t* src = d.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    parallel_over_rows(off, d.size(0), [&](int64_t row_begin, int64_t row_end) {
      for (int64_t r = row_begin; r < row_end; ++r) {
        const scalar_t* row = src + r * n_cols;
        for (int64_t i = off[r]; i < off[r + 1]; ++i) dst[i] = row[cols[i]];
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) {
  m.impl("csr_to_dense", &csr_to_dense_cpu);
  m.impl("csr_from_dense", &csr_from_dense_cpu);
}

}  // namespace sparsekern
