// csr_conv2d_input_grad_cpu: dx of y = conv2d(x, W), given dy, with W given by its kept weights.
//
// Gather form, one input pixel at a time: dx[c, p, :] = Σ over taps (i, j) and over the kept weights
// (o, c, i, j) of w · dy[o, q, :], where q = (p + pad − (i, j)·d) / s must be a whole, in-range output pixel.
// Work is kept weights × output pixels × N multiply-adds (each kept weight meets each output pixel once,
// from the one input pixel its tap reads), with no scatter and no atomics: threads split the input rows and
// each input pixel's sum is accumulated in registers.
//
// The transposed layout (CSC of the flattened weight, precomputed with the mask) lists, for one input
// channel and one tap, the output channels keeping that weight in ascending order; with groups, channel c
// only meets the output channels of its own group, a contiguous sub-range found once per call.
// Tiling: for one input row, every input channel is computed before the next row, so the window of dy it
// reads (all output channels × the rows the kernel reaches) stays in cache.
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

namespace sparsekern {
namespace {

// Entry ranges of the transposed layout per (weight column, group): column k's entries whose output channel
// lies in group gr are [bounds[k·(G+1) + gr], bounds[k·(G+1) + gr + 1]).
std::vector<int32_t> group_bounds(const int32_t* t_offsets, const int32_t* t_rows, int64_t n_cols,
                                  const ConvGeometry& g) {
  std::vector<int32_t> bounds(n_cols * (g.groups + 1));
  for (int64_t k = 0; k < n_cols; ++k) {
    int32_t i = t_offsets[k];
    for (int64_t gr = 0; gr < g.groups; ++gr) {
      bounds[k * (g.groups + 1) + gr] = i;
      const int64_t limit = (gr + 1) * g.c_out_per_group();
      while (i < t_offsets[k + 1] && t_rows[i] < limit) ++i;
    }
    bounds[k * (g.groups + 1) + g.groups] = t_offsets[k + 1];
  }
  return bounds;
}

// One input pixel of one input channel, NV vectors of the batch: the sum over its valid taps' entries.
template <typename T, int NV>
inline void input_pixel(const T* __restrict values_t, const int64_t* __restrict plane_offs,
                        const int32_t* __restrict bounds, const ConvGeometry& g, int64_t channel_in_group,
                        int64_t group, int64_t y, int64_t x, const T* __restrict dy, int64_t np,
                        T* __restrict out) {
  using S = Simd<T>;
  using V = typename S::vec;
  V even[NV], odd[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) even[v] = odd[v] = S::zero();
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t qy = y + g.ph - i * g.dh;
    if (qy < 0 || qy % g.sh != 0 || qy / g.sh >= g.oh) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t qx = x + g.pw - j * g.dw;
      if (qx < 0 || qx % g.sw != 0 || qx / g.sw >= g.ow) continue;
      const int64_t column = (channel_in_group * g.kh + i) * g.kw + j;
      const int32_t* b = bounds + column * (g.groups + 1) + group;
      const T* src = dy + (qy / g.sh * g.ow + qx / g.sw) * np;
      int64_t e = b[0];
      for (; e + 1 < b[1]; e += 2) {
        const V w0 = S::broadcast(values_t[e]), w1 = S::broadcast(values_t[e + 1]);
        const T* d0 = src + plane_offs[e];
        const T* d1 = src + plane_offs[e + 1];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          even[v] += w0 * S::load(d0 + v * S::kLanes);
          odd[v] += w1 * S::load(d1 + v * S::kLanes);
        }
      }
      if (e < b[1]) {
        const V w = S::broadcast(values_t[e]);
        const T* d = src + plane_offs[e];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) even[v] += w * S::load(d + v * S::kLanes);
      }
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) S::store(out + v * S::kLanes, even[v] + odd[v]);
}

template <typename T>
void conv2d_input_grad_kernel(const T* values_t, const int32_t* t_offsets, const int32_t* t_rows, int64_t n_cols,
                              const ConvGeometry& g, const T* dy, int64_t np, T* dx) {
  const std::vector<int32_t> bounds = group_bounds(t_offsets, t_rows, n_cols, g);
  std::vector<int64_t> plane_offs(t_offsets[n_cols]);  // where each entry's output channel starts in dy
  for (int64_t e = 0; e < t_offsets[n_cols]; ++e) plane_offs[e] = t_rows[e] * g.oh * g.ow * np;
  at::parallel_for(0, g.h, 1, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t y = row_begin; y < row_end; ++y) {
      for (int64_t c = 0; c < g.c_in; ++c) {
        const int64_t group = c / g.c_in_per_group(), channel_in_group = c % g.c_in_per_group();
        for (int64_t x = 0; x < g.w; ++x) {
          T* out = dx + ((c * g.h + y) * g.w + x) * np;
          for_each_lane_chunk<T>(np, [&](auto vectors, int64_t lane) {
            constexpr int NV = decltype(vectors)::value;
            input_pixel<T, NV>(values_t, plane_offs.data(), bounds.data(), g, channel_in_group, group, y, x,
                               dy + lane, np, out + lane);
          });
        }
      }
    }
  });
}

}  // namespace

at::Tensor csr_conv2d_input_grad_cpu(const at::Tensor& grad, const at::Tensor& values, const at::Tensor& row_offsets,
                                     const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                                     const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                                     const at::Tensor& t_perm_inv, at::IntArrayRef input_size,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_values(values, shape.nnz);
  TORCH_CHECK_VALUE(input_size.size() == 2 && input_size[0] >= 1 && input_size[1] >= 1,
                    "input_size: expected two positive integers (H, W), got ", input_size);
  TORCH_CHECK_VALUE(grad.dim() == 4, "grad: expected a 4-D (N, C, H, W) tensor, got shape ", grad.sizes());
  const ConvGeometry g = conv_geometry(grad.size(0), input_size[0], input_size[1], shape.n_rows, shape.n_cols,
                                       kernel_size, stride, padding, dilation, groups);
  check_activation(grad, "grad", values.scalar_type(), g.c_out);
  TORCH_CHECK_VALUE(grad.size(2) == g.oh && grad.size(3) == g.ow, "grad: expected spatial size [", g.oh, ", ", g.ow,
                    "] (the output of input_size ", input_size, "), got shape ", grad.sizes());
  at::Tensor dx;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "csr_conv2d_input_grad_cpu", [&] {
    if (g.n == 0 || g.c_in == 0) {
      dx = at::zeros({g.n, g.c_in, g.h, g.w}, grad.options());
      return;
    }
    const ConvAlgorithm algorithm = conv_algorithm<scalar_t>(g);
    if (algorithm == ConvAlgorithm::kDepthwise) {  // one input channel per output channel: the forward layout
      const at::Tensor dy = grad.contiguous(), v = values.contiguous();
      dx = at::empty({g.n, g.c_in, g.h, g.w}, grad.options());
      depthwise_conv2d_input_grad<scalar_t>(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(),
                                            col_indices.data_ptr<int32_t>(), g, dy.data_ptr<scalar_t>(),
                                            dx.data_ptr<scalar_t>());
      return;
    }
    if (algorithm == ConvAlgorithm::kPlane) {
      const at::Tensor dy = grad.contiguous(), v = values.contiguous();
      dx = at::empty({g.n, g.c_in, g.h, g.w}, grad.options());
      plane_conv2d_input_grad<scalar_t>(v.data_ptr<scalar_t>(), t_row_offsets.data_ptr<int32_t>(),
                                        t_col_indices.data_ptr<int32_t>(), t_perm.data_ptr<int64_t>(), g,
                                        dy.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>());
      return;
    }
    const int64_t np = batch_lanes<scalar_t>(g.n);
    const at::Tensor values_t = permute_cpu(values.contiguous(), t_perm, t_perm_inv, false);  // CSC order
    const at::Tensor dyt = to_batch_innermost<scalar_t>(grad, 0, 0);
    at::Tensor dxt = at::empty({g.c_in, g.h, g.w, np}, grad.options());
    conv2d_input_grad_kernel<scalar_t>(values_t.data_ptr<scalar_t>(), t_row_offsets.data_ptr<int32_t>(),
                                       t_col_indices.data_ptr<int32_t>(), shape.n_cols, g,
                                       dyt.data_ptr<scalar_t>(), np, dxt.data_ptr<scalar_t>());
    dx = from_batch_innermost<scalar_t>(dxt, g.n);
  });
  return dx;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_conv2d_input_grad", &csr_conv2d_input_grad_cpu); }

}  // namespace sparsekern
