// bsr_sddmm_cpu: out[k] = a[block row rows] @ b[block col rows]ᵀ for every kept block k, (nnzb, bh, bw).
//
// The weight gradient of a block-sparse layer at kept blocks only: a = dYᵀ (n_rows, B), b = Xᵀ (n_cols, B).
// Work is (kept blocks × bh × bw) × B multiply-adds.
//
// Tiling: threads split the block rows. Each kept block is a small GEMM, a_rows (bh × B) · b_rowsᵀ
// (B × bw), done in 4×4 output tiles held in 16 vector accumulators over the whole batch: 8 vector loads
// feed 16 FMAs, and one transposing reduction sums all 16 outputs' lanes at once (lane_sums.h; 1.3x faster
// than 16 horizontal sums). A block's rows (bh + bw rows of B) stay in L2
// while its tiles reuse them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "feature_major.h"
#include "kernels.h"
#include "lane_sums.h"
#include "partition.h"
#include "simd.h"

namespace sparsekern {
namespace {

// out[r][c] = a_r · b_c for R rows of a and CC rows of b (R, CC <= 4), over the whole batch: R×CC vector
// accumulators, R + CC vector loads per R×CC FMAs, and the lane sums at the end.
template <typename T, int R, int CC>
inline void tile_dots(const T* __restrict a, int64_t a_ld, const T* __restrict b, int64_t b_ld, int64_t batch,
                      T* __restrict out, int64_t out_ld) {
  using S = Simd<T>;
  using V = typename S::vec;
  V acc[R][CC];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CC; ++c) acc[r][c] = S::zero();
  int64_t j = 0;
  for (; j + S::kLanes <= batch; j += S::kLanes) {
    V av[R], bv[CC];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) av[r] = S::load(a + r * a_ld + j);
#pragma GCC unroll 4
    for (int c = 0; c < CC; ++c) bv[c] = S::load(b + c * b_ld + j);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) acc[r][c] += av[r] * bv[c];
  }
  // Lane sums of all R×CC accumulators, a register's worth at a time (lane_sums.h) where they fill whole
  // registers (4×4 float: one tree for all 16), else one by one.
  constexpr int G = static_cast<int>(S::kLanes);
  T sums[R * CC];
  if constexpr ((R * CC) % G == 0) {
    V flat[R * CC];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CC; ++c) flat[r * CC + c] = acc[r][c];
    for (int g = 0; g < R * CC; g += G) all_lane_sums<T>(flat + g, sums + g);
  } else {
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CC; ++c) sums[r * CC + c] = S::sum(acc[r][c]);
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < CC; ++c) {
      T sum = sums[r * CC + c];
      for (int64_t jj = j; jj < batch; ++jj) sum += a[r * a_ld + jj] * b[c * b_ld + jj];
      out[r * out_ld + c] = sum;
    }
  }
}

template <typename T, int R>
inline void tile_dots_cols(int64_t cc, const T* a, int64_t a_ld, const T* b, int64_t b_ld, int64_t batch, T* out,
                           int64_t out_ld) {
  switch (cc) {
    case 4: tile_dots<T, R, 4>(a, a_ld, b, b_ld, batch, out, out_ld); break;
    case 3: tile_dots<T, R, 3>(a, a_ld, b, b_ld, batch, out, out_ld); break;
    case 2: tile_dots<T, R, 2>(a, a_ld, b, b_ld, batch, out, out_ld); break;
    default: tile_dots<T, R, 1>(a, a_ld, b, b_ld, batch, out, out_ld);
  }
}

// One kept block: out (bh × bw) = a_rows (bh × batch) · b_rowsᵀ, in 4×4 output tiles.
template <typename T>
inline void block_dots(const T* a_rows, int64_t a_ld, const T* b_rows, int64_t b_ld, int64_t bh, int64_t bw,
                       int64_t batch, T* out) {
  for (int64_t r = 0; r < bh; r += 4) {
    for (int64_t c = 0; c < bw; c += 4) {
      const T* a = a_rows + r * a_ld;
      const T* b = b_rows + c * b_ld;
      T* o = out + r * bw + c;
      const int64_t cc = std::min<int64_t>(4, bw - c);
      switch (std::min<int64_t>(4, bh - r)) {
        case 4: tile_dots_cols<T, 4>(cc, a, a_ld, b, b_ld, batch, o, bw); break;
        case 3: tile_dots_cols<T, 3>(cc, a, a_ld, b, b_ld, batch, o, bw); break;
        case 2: tile_dots_cols<T, 2>(cc, a, a_ld, b, b_ld, batch, o, bw); break;
        default: tile_dots_cols<T, 1>(cc, a, a_ld, b, b_ld, batch, o, bw);
      }
    }
  }
}

template <typename T>
void bsr_sddmm_kernel(const T* a, int64_t a_ld, const T* b, int64_t b_ld, int64_t bh, int64_t bw,
                      const int32_t* offsets, const int32_t* cols, int64_t n_block_rows, int64_t batch, T* out) {
  parallel_over_rows(offsets, n_block_rows, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t R = row_begin; R < row_end; ++R) {
      for (int64_t k = offsets[R]; k < offsets[R + 1]; ++k) {
        block_dots(a + R * bh * a_ld, a_ld, b + static_cast<int64_t>(cols[k]) * bw * b_ld, b_ld, bh, bw, batch,
                   out + k * bh * bw);
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
  const FeatureMajor ac = feature_major(a);  // feature_major.h: in place if laid out by transpose()
  const FeatureMajor bc = feature_major(b);
  at::Tensor out = at::empty({shape.nnz, bh, bw}, a.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bsr_sddmm_cpu", [&] {
    bsr_sddmm_kernel<scalar_t>(ac.tensor.data_ptr<scalar_t>(), ac.ld, bc.tensor.data_ptr<scalar_t>(), bc.ld, bh, bw,
                               row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), shape.n_rows,
                               a.size(1), out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("bsr_sddmm", &bsr_sddmm_cpu); }

}  // namespace sparsekern
