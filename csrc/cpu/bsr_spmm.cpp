// bsr_spmm_cpu: out = S @ dense, with S made of kept bh×bw blocks (BSR) and dense feature-major (n_cols, B).
//
// Forward (Yᵀ = W Xᵀ) and, on the transposed layout with transposed blocks, the input gradient.
// Work is (kept blocks × bh × bw) × B multiply-adds; pruned blocks are never visited.
//
// Tiling: threads split the block rows. For a batch chunk of four vectors (64 floats), kRows output rows of
// a block row are accumulated in registers (4 rows × 4 vectors: 16 AVX-512 registers); for each kept block
// and each of its bw columns j, one row dense[c·bw + j, chunk] is loaded once and feeds kRows FMAs. So a
// block mask reuses every load kRows times, where an unstructured mask reuses it once: that is why blocks
// pay at lower sparsity than CSR.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "feature_major.h"
#include "kernels.h"
#include "output_sink.h"
#include "partition.h"
#include "simd.h"

namespace sparsekern {
namespace {

constexpr int64_t kRows = 4;  // output rows per register tile
constexpr int kWide = 4;      // vectors per batch chunk: 4 rows × 4 vectors = 16 accumulators

// Rows [r0, r0+R) of one block row, batch columns [0, NV·lanes), over its kept blocks [begin, end).
template <typename T, int64_t R, int NV>
inline void block_rows_times_dense(const T* __restrict values, int64_t bh, int64_t bw, const int32_t* __restrict cols,
                                   int64_t begin, int64_t end, int64_t r0, const T* __restrict dense, int64_t ld,
                                   T* __restrict out, int64_t out_ld) {
  using S = Simd<T>;
  using V = typename S::vec;
  V acc[R][NV];
#pragma GCC unroll 4
  for (int64_t r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
  for (int64_t k = begin; k < end; ++k) {
    const T* block = values + k * bh * bw + r0 * bw;
    const T* x_block = dense + static_cast<int64_t>(cols[k]) * bw * ld;
    for (int64_t c = 0; c < bw; ++c) {
      const T* x = x_block + c * ld;
      V xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[v] = S::load(x + v * S::kLanes);
#pragma GCC unroll 4
      for (int64_t r = 0; r < R; ++r) {
        const V w = S::broadcast(block[r * bw + c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += w * xv[v];
      }
    }
  }
#pragma GCC unroll 4
  for (int64_t r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(out + r * out_ld + v * S::kLanes, acc[r][v]);
}

// The same for the last batch columns that do not fill a vector, one row at a time.
template <typename T>
inline void block_row_times_dense_tail(const T* values, int64_t bh, int64_t bw, const int32_t* cols, int64_t begin,
                                       int64_t end, int64_t r, const T* dense, int64_t ld, int64_t width, T* out) {
  for (int64_t j = 0; j < width; ++j) out[j] = T(0);
  for (int64_t k = begin; k < end; ++k) {
    const T* x_block = dense + static_cast<int64_t>(cols[k]) * bw * ld;
    for (int64_t c = 0; c < bw; ++c) {
      const T w = values[(k * bh + r) * bw + c];
      for (int64_t j = 0; j < width; ++j) out[j] += w * x_block[c * ld + j];
    }
  }
}

template <typename T, int NV>
inline void block_row_chunk(const T* values, int64_t bh, int64_t bw, const int32_t* cols, int64_t begin, int64_t end,
                            const T* dense, int64_t ld, T* out, int64_t out_ld) {
  for (int64_t r0 = 0; r0 < bh; r0 += kRows) {
    T* o = out + r0 * out_ld;
    switch (std::min(kRows, bh - r0)) {
      case 4: block_rows_times_dense<T, 4, NV>(values, bh, bw, cols, begin, end, r0, dense, ld, o, out_ld); break;
      case 3: block_rows_times_dense<T, 3, NV>(values, bh, bw, cols, begin, end, r0, dense, ld, o, out_ld); break;
      case 2: block_rows_times_dense<T, 2, NV>(values, bh, bw, cols, begin, end, r0, dense, ld, o, out_ld); break;
      default: block_rows_times_dense<T, 1, NV>(values, bh, bw, cols, begin, end, r0, dense, ld, o, out_ld);
    }
  }
}

template <typename T, typename Sink>
void bsr_spmm_kernel(const T* values, int64_t bh, int64_t bw, const int32_t* offsets, const int32_t* cols,
                     int64_t n_block_rows, const T* dense, int64_t batch, int64_t ld, const Sink& sink) {
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t block_rows_per_tile = std::max<int64_t>(1, kSinkRows / std::max<int64_t>(bh, 1));
  parallel_over_rows(offsets, n_block_rows, [&](int64_t part_begin, int64_t part_end) {
    in_row_blocks(part_begin, part_end, block_rows_per_tile, [&](int64_t row_begin, int64_t row_end) {
      // Sink rows are element rows (output_sink.h).
      const int64_t e_begin = row_begin * bh, e_end = row_end * bh, n_full = batch / (kWide * L);
      for (int64_t b0 = 0; b0 < n_full * kWide * L; b0 += kWide * L) {
        const SinkRows<T> out = sink.chunk(e_begin, e_end, b0, b0 + kWide * L, batch);
        for (int64_t R = row_begin; R < row_end; ++R) {
          block_row_chunk<T, kWide>(values, bh, bw, cols, offsets[R], offsets[R + 1], dense + b0, ld,
                                    out.at(R * bh, b0), out.ld);
        }
        sink.done(out, e_begin, e_end, b0, b0 + kWide * L);
      }
      if (n_full * kWide * L == batch) return;
      // The last columns, fewer than a chunk: vectors, then scalars.
      const SinkRows<T> out = sink.chunk(e_begin, e_end, n_full * kWide * L, batch, batch);
      int64_t b0 = n_full * kWide * L;
      for (; b0 + L <= batch; b0 += L) {
        for (int64_t R = row_begin; R < row_end; ++R) {
          block_row_chunk<T, 1>(values, bh, bw, cols, offsets[R], offsets[R + 1], dense + b0, ld,
                                out.at(R * bh, b0), out.ld);
        }
      }
      if (b0 < batch) {
        for (int64_t R = row_begin; R < row_end; ++R) {
          for (int64_t r = 0; r < bh; ++r) {
            block_row_times_dense_tail(values, bh, bw, cols, offsets[R], offsets[R + 1], r, dense + b0, ld,
                                       batch - b0, out.at(R * bh + r, b0));
          }
        }
      }
      sink.done(out, e_begin, e_end, n_full * kWide * L, batch);
    });
  });
}

}  // namespace

namespace {

// The checks and the dispatch shared by both output layouts (output_sink.h).
template <typename Output>
at::Tensor bsr_spmm_run(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                        const Output& output) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_float(values, "values");
  TORCH_CHECK_VALUE(values.dim() == 3 && values.size(0) == shape.nnz, "values: expected (nnzb=", shape.nnz,
                    ", bh, bw), got shape ", values.sizes());
  const int64_t bh = values.size(1), bw = values.size(2);
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols * bw);
  const at::Tensor v = values.contiguous();
  const FeatureMajor d = feature_major(dense);  // feature_major.h: in place if laid out by transpose()
  const int64_t batch = dense.size(1);
  at::Tensor out = output.allocate(shape.n_rows * bh, batch, dense.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "bsr_spmm_cpu", [&] {
    bsr_spmm_kernel<scalar_t>(v.data_ptr<scalar_t>(), bh, bw, row_offsets.data_ptr<int32_t>(),
                              col_indices.data_ptr<int32_t>(), shape.n_rows, d.tensor.data_ptr<scalar_t>(), batch,
                              d.ld, output.template sink<scalar_t>(out, shape.n_rows * bh));
  });
  return out;
}

}  // namespace

at::Tensor bsr_spmm_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense) {
  return bsr_spmm_run(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                      FeatureMajorOutput{});
}

at::Tensor bsr_spmm_bt_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                           const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                           const std::optional<at::Tensor>& bias) {
  const int64_t n_rows = (row_offsets.numel() - 1) * (values.dim() == 3 ? values.size(1) : 0);
  return bsr_spmm_run(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                      BatchMajorOutput{checked_bias(bias, values, n_rows)});
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) {
  m.impl("bsr_spmm", &bsr_spmm_cpu);
  m.impl("bsr_spmm_bt", &bsr_spmm_bt_cpu);
}

}  // namespace sparsekern
