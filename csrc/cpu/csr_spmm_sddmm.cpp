// csr_spmm_sddmm_bt_cpu: one pass over the stored entries of S (n_rows, n_cols) computes both
//   out     = (S @ dense)ᵀ                      (B, n_rows), batch-major
//   dots[i] = other[row(i)] · dense[col(i)]     (nnz,), in S's entry order
// with dense (n_cols, B) and other (n_rows, B) feature-major.
//
// Why: a sparse layer's backward needs dX = dY W (an SpMM over Wᵀ) and dW = dYᵀ X at the kept weights (an
// SDDMM), and both read one slice of dYᵀ per kept weight from a random row: the L2 traffic that bounds each
// kernel. Walking Wᵀ row by row (S = Wᵀ, dense = dYᵀ, other = Xᵀ), each loaded slice dense[col, chunk]
// feeds the FMAs of out[:, row] and the dot product with other[row, chunk], which stays in registers for
// the whole row: half the slice traffic of the two kernels run one after the other.
//
// Tiling as in csr_spmm.cpp (threads split rows, packed 64-column batch chunks, output through a sink);
// within a row, entries go in groups (one register's lanes; 4 with AVX2 floats, see dot_group) whose
// dot-product accumulators are summed together by one transposing reduction (lane_sums.h), and the slices
// of upcoming entries are prefetched (prefetch.h). Batch columns past the last full chunk are done by the
// two separate kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "feature_major.h"
#include "kernels.h"
#include "lane_sums.h"
#include "output_sink.h"
#include "packing.h"
#include "partition.h"
#include "prefetch.h"
#include "simd.h"

namespace sparsekern {
namespace {

constexpr int kWide = 4;  // vectors per batch chunk (64 floats with AVX-512)

// Entries per dot-product group: a register's lanes (one transposing reduction per group, lane_sums.h),
// except with AVX2 floats: 8 dot accumulators + 4 output + 4 `other` vectors would take all 16 registers,
// and GCC spilled `other` to the stack. Groups of 4 leave registers free; measured 3-5% faster than groups
// of 8 at 95-98% sparsity (2048x2048, batch 256, Zen 3, interleaved in one process).
template <typename T>
constexpr int dot_group() {
  constexpr int lanes = static_cast<int>(Simd<T>::kLanes);
  return (kVectorBytes == 32 && lanes == 8) ? 4 : lanes;
}

// Pins v to a register. Without it GCC folds the slice load into both FMAs that use it (a memory operand
// each), issuing every load twice; the second hits L1, so the time changed within noise, but the load
// slots are not wasted.
template <typename V>
inline void in_register(V& v) {
#if defined(__x86_64__) && defined(__AVX__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// Entries [g, g + count) of one row: acc += values · dense[col], dots (+)= other_row · dense[col].
// Each entry prefetches the slice of the entry kPrefetchDistance ahead, across row ends, up to the last
// entry below prefetch_end (prefetch.h).
template <typename T, int G, bool kFull>
inline void fused_group(const T* __restrict values, const int32_t* __restrict cols, int64_t g, int count,
                        int64_t prefetch_end, const T* __restrict slab, int64_t ld, const typename Simd<T>::vec* o,
                        bool first_chunk, typename Simd<T>::vec* acc, T* __restrict dots) {
  using S = Simd<T>;
  using V = typename S::vec;
  V dot[G];
#pragma GCC unroll 16
  for (int k = 0; k < G; ++k) {
    dot[k] = S::zero();
    if (kFull || k < count) {
      prefetch_slice<T, kWide * kVectorBytes>(slab, cols, g + k, prefetch_end, ld);
      const T* x = slab + static_cast<int64_t>(cols[g + k]) * ld;
      const V w = S::broadcast(values[g + k]);
#pragma GCC unroll 4
      for (int v = 0; v < kWide; ++v) {
        V xv = S::load(x + v * S::kLanes);
        in_register(xv);
        acc[v] += w * xv;
        dot[k] += o[v] * xv;
      }
    }
  }
  T sums[G];
  group_lane_sums<T, G>(dot, sums);
  const int n = kFull ? G : count;
  for (int k = 0; k < n; ++k) dots[g + k] = first_chunk ? sums[k] : dots[g + k] + sums[k];
}

// Row r over one batch chunk: out_row (+)= Σ values[i] · dense[col(i)]; dots[i] (+)= other_row · dense[col(i)].
template <typename T>
inline void fused_row(const T* __restrict values, const int32_t* __restrict cols, int64_t begin, int64_t end,
                      int64_t prefetch_end, const T* __restrict slab, int64_t ld, const T* __restrict other_row,
                      bool first_chunk, T* __restrict out_row, T* __restrict dots) {
  using S = Simd<T>;
  using V = typename S::vec;
  constexpr int G = dot_group<T>();
  V o[kWide], acc[kWide];
#pragma GCC unroll 4
  for (int v = 0; v < kWide; ++v) {
    o[v] = S::load(other_row + v * S::kLanes);
    acc[v] = S::zero();
  }
  int64_t g = begin;
  for (; g + G <= end; g += G) {
    fused_group<T, G, true>(values, cols, g, G, prefetch_end, slab, ld, o, first_chunk, acc, dots);
  }
  if (g < end) {
    const int count = static_cast<int>(end - g);
    fused_group<T, G, false>(values, cols, g, count, prefetch_end, slab, ld, o, first_chunk, acc, dots);
  }
#pragma GCC unroll 4
  for (int v = 0; v < kWide; ++v) S::store(out_row + v * S::kLanes, acc[v]);
}

// Does the full batch chunks and returns how many batch columns that covered.
template <typename T>
int64_t fused_kernel(const T* values, const int32_t* offsets, const int32_t* cols, int64_t n_rows, int64_t n_cols,
                     const T* dense, int64_t dense_ld, const T* other, int64_t other_ld, int64_t batch,
                     const BatchMajorSink<T>& sink, T* dots) {
  constexpr int64_t C = kWide * Simd<T>::kLanes;
  const int64_t n_full = batch / C;
  if (n_rows == 0 || n_full == 0) return 0;
  const ChunkedOperand<T> operand = chunked_operand(dense, n_cols, batch, dense_ld, C);  // packing.h
  parallel_over_rows(offsets, n_rows, [&](int64_t part_begin, int64_t part_end) {
    in_row_blocks(part_begin, part_end, kSinkRows, [&](int64_t row_begin, int64_t row_end) {  // output_sink.h
      for (int64_t c = 0; c < n_full; ++c) {
        const T* slab = operand.chunk(c, n_cols, C);
        const SinkRows<T> out = sink.chunk(row_begin, row_end, c * C, (c + 1) * C, batch);
        for (int64_t r = row_begin; r < row_end; ++r) {
          fused_row<T>(values, cols, offsets[r], offsets[r + 1], offsets[row_end], slab, operand.ld,
                       other + r * other_ld + c * C, c == 0, out.at(r, c * C), dots);
        }
        sink.done(out, row_begin, row_end, c * C, (c + 1) * C);
      }
    });
  });
  return n_full * C;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> csr_spmm_sddmm_bt_cpu(
    const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
    const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices, const at::Tensor& t_perm,
    const at::Tensor& t_perm_inv, const at::Tensor& dense, const at::Tensor& other) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_values(values, shape.nnz);
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols);
  check_dense(other, "other", values.scalar_type(), shape.n_rows);
  TORCH_CHECK_VALUE(dense.size(1) == other.size(1), "dense, other: batch sizes differ: ", dense.size(1), " and ",
                    other.size(1));
  const at::Tensor v = values.contiguous();
  const FeatureMajor d = feature_major(dense);  // feature_major.h: in place if laid out by transpose()
  const FeatureMajor o = feature_major(other);
  const int64_t batch = dense.size(1);
  const BatchMajorOutput output{};  // output_sink.h
  at::Tensor out = output.allocate(shape.n_rows, batch, dense.options());
  at::Tensor dots = at::zeros({shape.nnz}, dense.options());  // an empty batch gives exact zeros
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "csr_spmm_sddmm_bt_cpu", [&] {
    done = fused_kernel<scalar_t>(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(),
                                  col_indices.data_ptr<int32_t>(), shape.n_rows, shape.n_cols,
                                  d.tensor.data_ptr<scalar_t>(), d.ld, o.tensor.data_ptr<scalar_t>(), o.ld, batch,
                                  output.sink<scalar_t>(out, shape.n_rows), dots.data_ptr<scalar_t>());
  });
  if (done < batch) {  // the last columns (or all, for an empty S): the two kernels, separately
    const at::Tensor d_tail = d.tensor.narrow(1, done, batch - done).contiguous();
    const at::Tensor o_tail = o.tensor.narrow(1, done, batch - done).contiguous();
    out.narrow(0, done, batch - done)
        .copy_(csr_spmm_cpu(v, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, d_tail).t());
    dots.add_(csr_sddmm_cpu(o_tail, d_tail, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                            t_perm_inv));
  }
  return {out, dots};
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_spmm_sddmm_bt", &csr_spmm_sddmm_bt_cpu); }

}  // namespace sparsekern
