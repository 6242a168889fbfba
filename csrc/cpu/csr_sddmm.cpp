// csr_sddmm_cpu: out[i] = a[row(i)] · b[col(i)], the dot product over the batch at every stored entry.
//
// This is the weight gradient dW = (dYᵀ X) ⊙ M computed only at kept positions: a = dYᵀ (n_rows, B),
// b = Xᵀ (n_cols, B), both feature-major. Work is nnz × B multiply-adds; the dense dYᵀ X is never formed.
//
// Tiling: threads split the rows. The batch is cut into chunks of kChunk columns (1 KB: the whole batch up
// to 256 floats) so a[r, chunk] stays in L1 and each entry reads one contiguous slice of b; column bands
// keep the slices a thread reads within L2 (column_tiles.h). Within a row, a group of 16 stored entries
// (8 for double) is done together: each load of a[r, j] feeds 16 FMAs into 16 independent accumulators,
// and one transposing reduction sums all 16 (dots.h). Chunks after the first accumulate into out.
// Measured (2048x2048, batch 256, 2 threads): 1.8-2x faster than groups of four with per-entry sums over
// 128-float chunks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "column_tiles.h"
#include "feature_major.h"
#include "packing.h"
#include "dots.h"
#include "kernels.h"
#include "partition.h"

namespace sparsekern {
namespace {

template <typename T>
constexpr int64_t kChunk = 1024 / sizeof(T);  // 256 floats / 128 doubles

// Dot products of one row of `a` with the `b` rows of entries [begin, end), into out[begin:end].
template <typename T>
inline void row_dots(const T* a_row, const T* b, int64_t ld, const int32_t* cols, int64_t begin, int64_t end,
                     int64_t width, bool first, T* out) {
  constexpr int64_t G = kDotGroup<T>;
  const T* rows[G];
  for (int64_t g = begin; g < end; g += G) {
    const int count = static_cast<int>(std::min(G, end - g));
    for (int k = 0; k < count; ++k) rows[k] = b + static_cast<int64_t>(cols[g + k]) * ld;
    dot_group(a_row, rows, count, width, first, out + g);
  }
}

template <typename T>
void csr_sddmm_kernel(const T* a, int64_t a_ld, const T* b, int64_t b_ld, const int32_t* offsets,
                      const int32_t* cols, int64_t n_rows, int64_t n_cols, int64_t batch, T* out) {
  constexpr int64_t C = kChunk<T>;
  const int64_t n_full = batch / C;
  const ChunkedOperand<T> operand = chunked_operand(b, n_cols, batch, b_ld, C);  // packing.h
  const ColumnBands bands = choose_column_bands(n_cols, operand.footprint_bytes);  // column_tiles.h
  const int64_t tile = bands.width, n_tiles = bands.count;
  parallel_over_rows(offsets, n_rows, [&](int64_t row_begin, int64_t row_end) {
    if (batch == 0) {
      std::fill(out + offsets[row_begin], out + offsets[row_end], T(0));
      return;
    }
    const std::vector<int32_t> bounds = tile_bounds(offsets, cols, row_begin, row_end, tile, n_tiles);
    for (int64_t b0 = 0; b0 < batch; b0 += C) {
      const int64_t width = std::min(C, batch - b0);
      const bool full_chunk = b0 < n_full * C;  // a partial last chunk is read from b itself
      const T* slab = full_chunk ? operand.chunk(b0 / C, n_cols, C) : b + b0;
      const int64_t ld = full_chunk ? operand.ld : b_ld;
      for (int64_t t = 0; t < n_tiles; ++t) {
        for (int64_t r = row_begin; r < row_end; ++r) {
          const int32_t* bd = bounds.data() + (r - row_begin) * (n_tiles + 1) + t;
          if (bd[1] > bd[0]) row_dots(a + r * a_ld + b0, slab, ld, cols, bd[0], bd[1], width, b0 == 0, out);
        }
      }
    }
  });
}

}  // namespace

at::Tensor csr_sddmm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_offsets,
                         const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                         const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_float(a, "a");
  check_dense(a, "a", a.scalar_type(), shape.n_rows);
  check_dense(b, "b", a.scalar_type(), shape.n_cols);
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), "a, b: batch sizes differ: ", a.size(1), " and ", b.size(1));
  const FeatureMajor ac = feature_major(a);  // feature_major.h: in place if laid out by transpose()
  const FeatureMajor bc = feature_major(b);
  at::Tensor out = at::empty({shape.nnz}, a.options());
  if (shape.nnz == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "csr_sddmm_cpu", [&] {
    csr_sddmm_kernel<scalar_t>(ac.tensor.data_ptr<scalar_t>(), ac.ld, bc.tensor.data_ptr<scalar_t>(), bc.ld,
                               row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), shape.n_rows,
                               shape.n_cols, a.size(1), out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_sddmm", &csr_sddmm_cpu); }

}  // namespace sparsekern
