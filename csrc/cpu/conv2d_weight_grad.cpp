// csr_conv2d_weight_grad_cpu: dW of y = conv2d(x, W) at the kept weights only (SDDMM).
//
// dW[o, c, i, j] = Σ over output pixels p and samples of dy[o, p, :] · x_pad[c, p·s + (i, j)·d, :]: one
// long dot product per kept weight, kept weights × output pixels × N multiply-adds in all. Pruned weights
// get no work and no storage.
//
// Tiling: threads split the output channels (balanced by kept weights). Each keeps vectors of partial
// sums per kept weight of its channels (scratch of 2 × nnz vectors) and walks the output rows in the outer
// loop, so for one row the input window (all channels × the kernel's rows) is reused by every channel
// before the next row; the lanes of each partial sum are added once at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "conv_geometry.h"
#include "conv_plane.h"
#include "kernels.h"
#include "partition.h"
#include "prefetch.h"

namespace sparsekern {
namespace {

// One output pixel of one channel (dy's NV vectors already loaded) against every kept weight of the
// channel: sums[e - first] += Σ_v dy[v] · x[offs[e] + v].
template <typename T, int NV>
inline void pixel_dots(const typename Simd<T>::vec* dyv, const int64_t* __restrict offs, int64_t begin,
                       int64_t end, const T* __restrict in, int64_t first, typename Simd<T>::vec* __restrict sums) {
  using S = Simd<T>;
  using V = typename S::vec;
  for (int64_t e = begin; e < end; ++e) {
    prefetch_bytes<NV * kVectorBytes>(in + offs[prefetch_entry(e, end)]);  // prefetch.h
    const T* x = in + offs[e];
    V s = dyv[0] * S::load(x);
    if constexpr (NV == 4) {
      const V t = dyv[1] * S::load(x + S::kLanes);
      s += dyv[2] * S::load(x + 2 * S::kLanes);
      s += t + dyv[3] * S::load(x + 3 * S::kLanes);
    }
    sums[e - first] += s;
  }
}

template <typename T>
void conv2d_weight_grad_kernel(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                               const T* x, int64_t hp, int64_t wp, int64_t np, T* out) {
  using S = Simd<T>;
  using V = typename S::vec;
  const std::vector<int64_t> offs = tap_offsets(offsets, cols, g, hp, wp, np);  // as in the forward
  parallel_over_rows(offsets, g.c_out, [&](int64_t row_begin, int64_t row_end) {
    const int64_t first = offsets[row_begin], count = offsets[row_end] - first;
    if (count == 0) return;
    // Two-level sums: one output row's partial sums, added to the totals after the row, so the float32
    // error grows with OH + OW rather than OH · OW (one running sum over every pixel was 3-5x F.conv2d's).
    std::vector<V> sums(count, S::zero()), row_sums(count);
    for (int64_t r = 0; r < g.oh; ++r) {
      std::fill(row_sums.begin(), row_sums.end(), S::zero());
      for (int64_t o = row_begin; o < row_end; ++o) {
        if (offsets[o] == offsets[o + 1]) continue;
        for (int64_t q = 0; q < g.ow; ++q) {
          const T* grad = dy + ((o * g.oh + r) * g.ow + q) * np;
          const T* in = x + (r * g.sh * wp + q * g.sw) * np;
          for_each_lane_chunk<T>(np, [&](auto vectors, int64_t lane) {
            constexpr int NV = decltype(vectors)::value;
            V dyv[NV];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) dyv[v] = S::load(grad + lane + v * S::kLanes);
            pixel_dots<T, NV>(dyv, offs.data(), offsets[o], offsets[o + 1], in + lane, first, row_sums.data());
          });
        }
      }
      for (int64_t e = 0; e < count; ++e) sums[e] += row_sums[e];
    }
    for (int64_t e = 0; e < count; ++e) out[first + e] = S::sum(sums[e]);
  });
}

}  // namespace

at::Tensor csr_conv2d_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& row_offsets,
                                      const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                                      const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                                      const at::Tensor& t_perm_inv, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_float(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D (N, C, H, W) tensor, got shape ", x.sizes());
  const ConvGeometry g = conv_geometry(x.size(0), x.size(2), x.size(3), shape.n_rows, shape.n_cols, kernel_size,
                                       stride, padding, dilation, groups);
  check_activation(x, "x", x.scalar_type(), g.c_in);
  check_activation(grad, "grad", x.scalar_type(), g.c_out);
  TORCH_CHECK_VALUE(grad.size(0) == g.n && grad.size(2) == g.oh && grad.size(3) == g.ow, "grad: expected shape [",
                    g.n, ", ", g.c_out, ", ", g.oh, ", ", g.ow, "] (the output of x ", x.sizes(), "), got ",
                    grad.sizes());
  at::Tensor out = at::empty({shape.nnz}, x.options());
  if (shape.nnz == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_conv2d_weight_grad_cpu", [&] {
    if (g.n == 0) {
      out.zero_();
      return;
    }
    const ConvAlgorithm algorithm = conv_algorithm<scalar_t>(g);
    if (algorithm != ConvAlgorithm::kBatch) {  // both NCHW as it comes
      const at::Tensor xc = x.contiguous(), dy = grad.contiguous();
      const auto kernel = algorithm == ConvAlgorithm::kDepthwise ? depthwise_conv2d_weight_grad<scalar_t>
                                                                 : plane_conv2d_weight_grad<scalar_t>;
      kernel(row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), g, dy.data_ptr<scalar_t>(),
             xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
      return;
    }
    const int64_t np = batch_lanes<scalar_t>(g.n);
    const at::Tensor xp = to_batch_innermost<scalar_t>(x, g.ph, g.pw);
    const at::Tensor dyt = to_batch_innermost<scalar_t>(grad, 0, 0);
    conv2d_weight_grad_kernel<scalar_t>(row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), g,
                                        dyt.data_ptr<scalar_t>(), xp.data_ptr<scalar_t>(), xp.size(1), xp.size(2),
                                        np, out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_conv2d_weight_grad", &csr_conv2d_weight_grad_cpu); }

}  // namespace sparsekern
