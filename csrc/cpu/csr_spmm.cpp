// csr_spmm_cpu: out = S @ dense, with S in CSR (unstructured mask) and dense feature-major (n_cols, B).
//
// Used for the forward pass (Yᵀ = W Xᵀ) and, on the transposed layout, the input gradient (dXᵀ = Wᵀ dYᵀ);
// csr_spmm_bt_cpu writes the product transposed, (B, n_rows) + bias, the layout a layer returns
// (output_sink.h). Only stored entries are touched: work is nnz × B multiply-adds.
//
// Tiling: threads split the rows (balanced by stored entries). Each thread walks the batch in chunks of
// four vectors (64 floats with AVX-512); for one row and one chunk the output lives in registers (two
// accumulator sets, even and odd entries, so consecutive FMAs are independent), and every stored entry
// (r, c) adds value · dense[c, chunk] to it: one broadcast and four vector FMAs per entry. Walking all rows
// for one chunk before the next keeps dense[:, chunk] (n_cols × 64 floats) hot in L2.
//
// Each entry pulls a 256-byte slice of dense from L2 (columns are random): the kernel runs at L2 bandwidth.
// dense is packed into contiguous chunks first (packing.h) so a chunk's slab uses every cache set; column
// bands split the slab only when it would not fit in L2 (column_tiles.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../checks.h"
#include "column_tiles.h"
#include "feature_major.h"
#include "output_sink.h"
#include "packing.h"
#include "kernels.h"
#include "partition.h"
#include "simd.h"

namespace sparsekern {
namespace {

// One row, batch columns [0, NV·lanes): the output stays in 2·NV vector registers (entries alternate
// between two sets so consecutive FMAs are independent).
template <typename T, int NV>
inline void row_times_dense(const T* __restrict values, const int32_t* __restrict cols, int64_t begin,
                            int64_t end, const T* __restrict dense, int64_t ld, bool accumulate, T* __restrict out) {
  using S = Simd<T>;
  using V = typename S::vec;
  V even[NV], odd[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    even[v] = accumulate ? S::load(out + v * S::kLanes) : S::zero();
    odd[v] = S::zero();
  }
  int64_t i = begin;
  for (; i + 1 < end; i += 2) {
    const V w0 = S::broadcast(values[i]), w1 = S::broadcast(values[i + 1]);
    const T* x0 = dense + static_cast<int64_t>(cols[i]) * ld;
    const T* x1 = dense + static_cast<int64_t>(cols[i + 1]) * ld;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      even[v] += w0 * S::load(x0 + v * S::kLanes);
      odd[v] += w1 * S::load(x1 + v * S::kLanes);
    }
  }
  if (i < end) {
    const V w = S::broadcast(values[i]);
    const T* x = dense + static_cast<int64_t>(cols[i]) * ld;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) even[v] += w * S::load(x + v * S::kLanes);
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) S::store(out + v * S::kLanes, even[v] + odd[v]);
}

// The last batch columns that do not fill a vector (fewer than kLanes). A float row is summed in double: one
// sequential scalar sum per column, unlike the vector path's two interleaved ones, was 2.5 ulps off on a
// 40-entry row (batch 1) where an AVX-512 MKL baseline was within half an ulp. These columns are few, so the
// wider sum costs nothing that shows.
template <typename T>
inline void row_times_dense_tail(const T* values, const int32_t* cols, int64_t begin, int64_t end,
                                 const T* dense, int64_t ld, int64_t width, T* out) {
  using Acc = std::conditional_t<std::is_same_v<T, float>, double, T>;
  Acc acc[Simd<T>::kLanes] = {};
  for (int64_t i = begin; i < end; ++i) {
    const Acc w = values[i];
    const T* x = dense + static_cast<int64_t>(cols[i]) * ld;
    for (int64_t j = 0; j < width; ++j) acc[j] += w * static_cast<Acc>(x[j]);
  }
  for (int64_t j = 0; j < width; ++j) out[j] = static_cast<T>(acc[j]);
}

template <typename T, typename Sink>
void csr_spmm_kernel(const T* values, const int32_t* offsets, const int32_t* cols, int64_t n_rows, int64_t n_cols,
                     const T* dense, int64_t batch, int64_t ld, const Sink& sink) {
  constexpr int64_t L = Simd<T>::kLanes;
  constexpr int kWide = 4;  // vectors per chunk: 4 (+4 odd) accumulators, 64 floats with AVX-512
  constexpr int64_t C = kWide * L;
  const int64_t n_full = batch / C;
  const ChunkedOperand<T> operand = chunked_operand(dense, n_cols, batch, ld, C);  // packing.h
  const ColumnBands bands = choose_column_bands(n_cols, operand.footprint_bytes);  // column_tiles.h
  const int64_t tile = bands.width, n_tiles = bands.count;
  parallel_over_rows(offsets, n_rows, [&](int64_t part_begin, int64_t part_end) {
    in_row_blocks(part_begin, part_end, kSinkRows, [&](int64_t row_begin, int64_t row_end) {  // output_sink.h
      const std::vector<int32_t> bounds = tile_bounds(offsets, cols, row_begin, row_end, tile, n_tiles);
      for (int64_t c = 0; c < n_full; ++c) {
        const T* slab = operand.chunk(c, n_cols, C);
        const SinkRows<T> out = sink.chunk(row_begin, row_end, c * C, (c + 1) * C, batch);  // output_sink.h
        // Rows x bands; band 0 writes every row (even empty ones), later bands add.
        for (int64_t t = 0; t < n_tiles; ++t) {
          for (int64_t r = row_begin; r < row_end; ++r) {
            const int32_t* b = bounds.data() + (r - row_begin) * (n_tiles + 1) + t;
            if (t == 0 || b[1] > b[0]) {
              row_times_dense<T, kWide>(values, cols, b[0], b[1], slab, operand.ld, t != 0, out.at(r, c * C));
            }
          }
        }
        sink.done(out, row_begin, row_end, c * C, (c + 1) * C);
      }
      if (n_full * C == batch) return;
      // The last columns, fewer than a chunk: vectors, then scalars.
      const SinkRows<T> out = sink.chunk(row_begin, row_end, n_full * C, batch, batch);
      int64_t b0 = n_full * C;
      for (; b0 + L <= batch; b0 += L) {
        for (int64_t r = row_begin; r < row_end; ++r) {
          row_times_dense<T, 1>(values, cols, offsets[r], offsets[r + 1], dense + b0, ld, false,
                                out.at(r, b0));
        }
      }
      if (b0 < batch) {
        for (int64_t r = row_begin; r < row_end; ++r) {
          row_times_dense_tail(values, cols, offsets[r], offsets[r + 1], dense + b0, ld, batch - b0,
                               out.at(r, b0));
        }
      }
      sink.done(out, row_begin, row_end, n_full * C, batch);
    });
  });
}

}  // namespace

namespace {

// The checks and the dispatch shared by both output layouts (output_sink.h).
template <typename Output>
at::Tensor csr_spmm_run(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                        const Output& output) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_values(values, shape.nnz);
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols);
  const at::Tensor v = values.contiguous();
  const FeatureMajor d = feature_major(dense);  // feature_major.h: in place if laid out by transpose()
  const int64_t batch = dense.size(1);
  at::Tensor out = output.allocate(shape.n_rows, batch, dense.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "csr_spmm_cpu", [&] {
    csr_spmm_kernel<scalar_t>(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(),
                              col_indices.data_ptr<int32_t>(), shape.n_rows, shape.n_cols,
                              d.tensor.data_ptr<scalar_t>(), batch, d.ld,
                              output.template sink<scalar_t>(out, shape.n_rows));
  });
  return out;
}

}  // namespace

at::Tensor csr_spmm_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense) {
  return csr_spmm_run(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                      FeatureMajorOutput{});
}

at::Tensor csr_spmm_bt_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                           const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                           const std::optional<at::Tensor>& bias) {
  return csr_spmm_run(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                      BatchMajorOutput{checked_bias(bias, values, row_offsets.numel() - 1)});
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) {
  m.impl("csr_spmm", &csr_spmm_cpu);
  m.impl("csr_spmm_bt", &csr_spmm_bt_cpu);
}

}  // namespace sparsekern
