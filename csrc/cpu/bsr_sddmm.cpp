// bsr_sddmm_cpu: out[k] = a[block row rows] @ b[block col rows]ᵀ for every kept block k, (nnzb, bh, bw).
//
// The weight gradient of a block-sparse layer at kept blocks only: a = dYᵀ (n_rows, B), b = Xᵀ (n_cols, B).
// Work is (kept blocks × bh × bw) × B multiply-adds.
//
// Tiling: threads split the block rows; the batch is cut into chunks so one a-row chunk stays in L1 while
// it is dotted with the bw rows of b of every kept block in its block row (four at a time, see dots.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "dots.h"
#include "kernels.h"
#include "partition.h"

namespace sparsekern {
namespace {

template <typename T>
constexpr int64_t kChunk = 512 / sizeof(T);

template <typename T>
void bsr_sddmm_kernel(const T* a, const T* b, int64_t bh, int64_t bw, const int32_t* offsets, const int32_t* cols,
                      int64_t n_block_rows, int64_t batch, T* out) {
  constexpr int64_t C = kChunk<T>;
  parallel_over_rows(offsets, n_block_rows, [&](int64_t row_begin, int64_t row_end) {
    if (batch == 0) {
      std::fill(out + offsets[row_begin] * bh * bw, out + offsets[row_end] * bh * bw, T(0));
      return;
    }
    std::vector<const T*> rows(bw);
    for (int64_t b0 = 0; b0 < batch; b0 += C) {
      const int64_t width = std::min(C, batch - b0);
      for (int64_t R = row_begin; R < row_end; ++R) {
        for (int64_t k = offsets[R]; k < offsets[R + 1]; ++k) {
          for (int64_t c = 0; c < bw; ++c) rows[c] = b + (static_cast<int64_t>(cols[k]) * bw + c) * batch + b0;
          for (int64_t r = 0; r < bh; ++r) {
            dots_into(a + (R * bh + r) * batch + b0, rows.data(), bw, width, b0 == 0, out + (k * bh + r) * bw);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor bsr_sddmm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_offsets,
                         const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                         const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_float(a, "a");
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2, "a, b: expected 2-D (features, batch) tensors, got shapes ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE(shape.n_rows > 0 && a.size(0) % shape.n_rows == 0, "a: ", a.size(0),
                    " rows do not split into ", shape.n_rows, " block rows");
  TORCH_CHECK_VALUE(shape.n_cols > 0 && b.size(0) % shape.n_cols == 0, "b: ", b.size(0),
                    " rows do not split into ", shape.n_cols, " block columns");
  const int64_t bh = a.size(0) / shape.n_rows, bw = b.size(0) / shape.n_cols;
  check_dense(b, "b", a.scalar_type(), shape.n_cols * bw);
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), "a, b: batch sizes differ: ", a.size(1), " and ", b.size(1));
  const at::Tensor ac = a.contiguous();
  const at::Tensor bc = b.contiguous();
  at::Tensor out = at::empty({shape.nnz, bh, bw}, ac.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(ac.scalar_type(), "bsr_sddmm_cpu", [&] {
    bsr_sddmm_kernel<scalar_t>(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), bh, bw,
                               row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), shape.n_rows,
                               ac.size(1), out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("bsr_sddmm", &bsr_sddmm_cpu); }

}  // namespace sparsekern
