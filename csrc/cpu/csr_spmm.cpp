// csr_spmm_cpu: out = S @ dense, with S in CSR (unstructured mask) and dense feature-major (n_cols, B).
//
// Used for the forward pass (Yᵀ = W Xᵀ) and, on the transposed layout, the input gradient (dXᵀ = Wᵀ dYᵀ).
// Only stored entries are touched: work is nnz × B multiply-adds.
//
// Tiling: threads split the rows (balanced by stored entries). Each thread walks the batch in chunks of
// kChunk columns; for one row and one chunk the output lives in registers (two accumulator sets, even and
// odd entries, so two independent FMA chains hide latency), and every stored entry (r, c) adds
// value · dense[c, chunk] to it: one broadcast and kChunk/16 vector FMAs per entry. Walking all rows
// for one chunk before the next keeps dense[:, chunk] (n_cols × kChunk) hot in L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "kernels.h"
#include "partition.h"

namespace sparsekern {
namespace {

template <typename T>
constexpr int64_t kChunk = 256 / sizeof(T);  // 64 floats / 32 doubles: 4 AVX-512 registers per set

// One row, one batch chunk of `width` <= kChunk<T> columns. `Full` lets the compiler drop the bound.
template <typename T, bool Full>
inline void row_times_dense(const T* __restrict values, const int32_t* __restrict cols, int64_t begin,
                            int64_t end, const T* __restrict dense, int64_t ld, int64_t width,
                            T* __restrict out) {
  constexpr int64_t C = kChunk<T>;
  const int64_t n = Full ? C : width;
  T even[C], odd[C];
  for (int64_t j = 0; j < C; ++j) even[j] = odd[j] = T(0);
  int64_t i = begin;
  for (; i + 1 < end; i += 2) {
    const T v0 = values[i], v1 = values[i + 1];
    const T* x0 = dense + static_cast<int64_t>(cols[i]) * ld;
    const T* x1 = dense + static_cast<int64_t>(cols[i + 1]) * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      even[j] += v0 * x0[j];
      odd[j] += v1 * x1[j];
    }
  }
  if (i < end) {
    const T v = values[i];
    const T* x = dense + static_cast<int64_t>(cols[i]) * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) even[j] += v * x[j];
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = even[j] + odd[j];
}

template <typename T>
void csr_spmm_kernel(const T* values, const int32_t* offsets, const int32_t* cols, int64_t n_rows,
                     const T* dense, int64_t batch, T* out) {
  constexpr int64_t C = kChunk<T>;
  parallel_over_rows(offsets, n_rows, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t b0 = 0; b0 < batch; b0 += C) {
      const int64_t width = std::min(C, batch - b0);
      for (int64_t r = row_begin; r < row_end; ++r) {
        T* o = out + r * batch + b0;
        if (width == C) {
          row_times_dense<T, true>(values, cols, offsets[r], offsets[r + 1], dense + b0, batch, C, o);
        } else {
          row_times_dense<T, false>(values, cols, offsets[r], offsets[r + 1], dense + b0, batch, width, o);
        }
      }
    }
  });
}

}  // namespace

at::Tensor csr_spmm_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_float(values, "values");
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == shape.nnz, "values: expected shape (", shape.nnz,
                    ",), got ", values.sizes());
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols);
  const at::Tensor v = values.contiguous();
  const at::Tensor d = dense.contiguous();
  const int64_t batch = d.size(1);
  at::Tensor out = at::empty({shape.n_rows, batch}, d.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "csr_spmm_cpu", [&] {
    csr_spmm_kernel<scalar_t>(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(),
                              col_indices.data_ptr<int32_t>(), shape.n_rows, d.data_ptr<scalar_t>(), batch,
                              out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_spmm", &csr_spmm_cpu); }

}  // namespace sparsekern
