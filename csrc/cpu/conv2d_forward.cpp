// csr_conv2d_cpu: y = conv2d(x, W) + bias with W given by its kept weights (CSR over (C_out, C_in/g·kH·kW)).
//
// Direct sparse convolution, vectorised over the batch (conv_geometry.h's layout): for an output channel
// o and pixel p, y[o, p, :] = bias[o] + Σ over o's kept weights (c, i, j) of w · x_pad[c, p·s + (i, j)·d, :].
// Work is kept weights × output pixels × N multiply-adds; no dense weight and no im2col are formed.
//
// Tiling: threads split the output rows. For one tile of output pixels (a row segment sized so the input
// window it reads, all channels × the kernel's rows, stays in L2) every output channel is computed before
// the next tile, so each loaded slice of x serves every channel that keeps a weight on it. Two neighbouring
// pixels share one pass over a channel's weights: one broadcast feeds 2 × 4 vector FMAs, and eight
// independent accumulators cover the FMA latency.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "../checks.h"
#include "conv_geometry.h"
#include "conv_plane.h"
#include "kernels.h"
#include "prefetch.h"

namespace sparsekern {
namespace {

// P neighbouring output pixels (pixel_step elements apart in the input) of one output channel, NV vectors
// of the batch.
template <typename T, int NV, int P>
inline void channel_pixels(const T* __restrict values, const int64_t* __restrict offs, int64_t begin, int64_t end,
                           const T* __restrict in, int64_t pixel_step, T init, T* __restrict out, int64_t out_step) {
  using S = Simd<T>;
  using V = typename S::vec;
  V acc[P][NV];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[p][v] = S::broadcast(init);
  }
  for (int64_t i = begin; i < end; ++i) {
    const T* ahead = in + offs[prefetch_entry(i, end)];  // prefetch.h
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) prefetch_bytes<NV * kVectorBytes>(ahead + p * pixel_step);
    const V w = S::broadcast(values[i]);
    const T* x = in + offs[i];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[p][v] += w * S::load(x + p * pixel_step + v * S::kLanes);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) S::store(out + p * out_step + v * S::kLanes, acc[p][v]);
  }
}

// Output pixels per tile: as many as keep the input window (all channels × the kernel's rows × the
// tile's input columns) within about 1 MB, half of L2.
int64_t tile_width(const ConvGeometry& g, int64_t np, int64_t element_size) {
  constexpr int64_t kWindowBytes = 1 << 20;
  const int64_t column_bytes = g.c_in * ((g.kh - 1) * g.dh + 1) * np * element_size;
  const int64_t columns = kWindowBytes / std::max<int64_t>(column_bytes, 1);
  const int64_t pixels = (columns - (g.kw - 1) * g.dw - 1) / g.sw + 1;
  return std::min(g.ow, std::max<int64_t>(2, pixels));
}

template <typename T>
void conv2d_forward_kernel(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                           const T* x, int64_t hp, int64_t wp, int64_t np, const T* bias, T* y) {
  const std::vector<int64_t> offs = tap_offsets(offsets, cols, g, hp, wp, np);
  const int64_t tile = tile_width(g, np, sizeof(T));
  const int64_t pixel_step = g.sw * np;
  at::parallel_for(0, g.oh, 1, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      for (int64_t c0 = 0; c0 < g.ow; c0 += tile) {
        const int64_t c1 = std::min(g.ow, c0 + tile);
        for (int64_t o = 0; o < g.c_out; ++o) {
          const T init = bias ? bias[o] : T(0);
          for_each_lane_chunk<T>(np, [&](auto vectors, int64_t lane) {
            constexpr int NV = decltype(vectors)::value;
            int64_t c = c0;
            for (; c + 2 <= c1; c += 2) {
              channel_pixels<T, NV, 2>(values, offs.data(), offsets[o], offsets[o + 1],
                                       x + (r * g.sh * wp + c * g.sw) * np + lane, pixel_step, init,
                                       y + ((o * g.oh + r) * g.ow + c) * np + lane, np);
            }
            if (c < c1) {
              channel_pixels<T, NV, 1>(values, offs.data(), offsets[o], offsets[o + 1],
                                       x + (r * g.sh * wp + c * g.sw) * np + lane, pixel_step, init,
                                       y + ((o * g.oh + r) * g.ow + c) * np + lane, np);
            }
          });
        }
      }
    }
  });
}

}  // namespace

at::Tensor csr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                          const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                          const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv);
  check_values(values, shape.nnz);
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected a 4-D (N, C, H, W) tensor, got shape ", x.sizes());
  const ConvGeometry g = conv_geometry(x.size(0), x.size(2), x.size(3), shape.n_rows, shape.n_cols, kernel_size,
                                       stride, padding, dilation, groups);
  check_activation(x, "x", values.scalar_type(), g.c_in);
  const at::Tensor b = checked_bias(bias, values, g.c_out);
  const at::Tensor v = values.contiguous();
  at::Tensor y;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "csr_conv2d_cpu", [&] {
    const int64_t np = batch_lanes<scalar_t>(g.n);
    if (g.n == 0 || g.c_out == 0) {
      y = at::zeros({g.n, g.c_out, g.oh, g.ow}, x.options());
      if (b.defined() && g.n > 0) y.add_(b.view({1, -1, 1, 1}));
      return;
    }
    const ConvAlgorithm algorithm = conv_algorithm<scalar_t>(g);
    if (algorithm != ConvAlgorithm::kBatch) {  // both NCHW as it comes
      const at::Tensor xc = x.contiguous();
      y = at::empty({g.n, g.c_out, g.oh, g.ow}, x.options());
      const auto kernel = algorithm == ConvAlgorithm::kDepthwise ? depthwise_conv2d_forward<scalar_t>
                                                                 : plane_conv2d_forward<scalar_t>;
      kernel(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(), col_indices.data_ptr<int32_t>(), g,
             xc.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
      return;
    }
    const at::Tensor xp = to_batch_innermost<scalar_t>(x, g.ph, g.pw);
    at::Tensor yt = at::empty({g.c_out, g.oh, g.ow, np}, x.options());
    conv2d_forward_kernel<scalar_t>(v.data_ptr<scalar_t>(), row_offsets.data_ptr<int32_t>(),
                                    col_indices.data_ptr<int32_t>(), g, xp.data_ptr<scalar_t>(), xp.size(1),
                                    xp.size(2), np, b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                                    yt.data_ptr<scalar_t>());
    y = from_batch_innermost<scalar_t>(yt, g.n);
  });
  return y;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("csr_conv2d", &csr_conv2d_cpu); }

}  // namespace sparsekern
