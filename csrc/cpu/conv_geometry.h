// What the sparse Conv2d kernels share: the checked geometry of a call, and the batch-innermost activation
// layout they compute in.
//
// Layout: an activation (N, C, H, W) is held as (C, H', W', NP): for every channel and pixel the N samples
// are contiguous (NP = N rounded up to whole vectors, the extra lanes zero), so one kept weight times one
// pixel is NP/lanes vector FMAs whatever the image size (vectorising over W would waste most lanes on the
// 4x4 and 8x8 maps of a ResNet). The forward and the weight gradient read the input zero-padded (H' = H +
// 2·pad_h), so every tap of every output pixel is in bounds and the inner loops carry no checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "simd.h"
#include "transpose_simd.h"

namespace sparsekern {

struct ConvGeometry {
  int64_t n, c_in, h, w;  // input
  int64_t c_out, oh, ow;  // output
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;

  int64_t taps() const { return kh * kw; }
  int64_t c_in_per_group() const { return c_in / groups; }
  int64_t c_out_per_group() const { return c_out / groups; }
};

// Checks the geometry arguments against the layout's (n_rows, n_cols) and returns it; `input` is (N, H, W)
// of the convolution's input. Messages match sparsekern/_ops_conv.py.
inline ConvGeometry conv_geometry(int64_t n, int64_t in_h, int64_t in_w, int64_t n_rows, int64_t n_cols,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  auto check_pair = [](at::IntArrayRef v, const char* name, int64_t low) {
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= low && v[1] >= low, name, ": expected two integers >= ", low,
                      ", got ", v);
  };
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(groups >= 1, "groups: expected a positive integer, got ", groups);
  const int64_t taps = kernel_size[0] * kernel_size[1];
  TORCH_CHECK_VALUE(n_cols % taps == 0, "layout: ", n_cols, " columns are not (C_in/groups)·kH·kW for kernel ",
                    kernel_size);
  TORCH_CHECK_VALUE(n_rows % groups == 0, "groups: ", groups, " does not divide the ", n_rows,
                    " output channels of the layout");
  ConvGeometry g{};
  g.n = n;
  g.c_in = n_cols / taps * groups;
  g.h = in_h;
  g.w = in_w;
  g.c_out = n_rows;
  g.kh = kernel_size[0];
  g.kw = kernel_size[1];
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.groups = groups;
  g.oh = (in_h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (in_w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK_VALUE(in_h + 2 * g.ph - g.dh * (g.kh - 1) - 1 >= 0 && in_w + 2 * g.pw - g.dw * (g.kw - 1) - 1 >= 0,
                    "x: input size [", in_h, ", ", in_w, "] is too small for kernel ", kernel_size, " with padding ",
                    padding, " and dilation ", dilation);
  return g;
}

inline void check_activation(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t channels) {
  check_float(t, name);
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(1) == channels, name, ": expected ", channels, " channels (dim 1), got shape ",
                    t.sizes());
}

// For every kept weight (CSR entry), where its tap reads the padded (hp, wp) input relative to the origin of
// the output pixel it serves: channel, kernel row and kernel column folded into one element offset.
inline std::vector<int64_t> tap_offsets(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                                        int64_t hp, int64_t wp, int64_t np) {
  std::vector<int64_t> out(offsets[g.c_out]);
  const int64_t taps = g.taps();
  for (int64_t o = 0; o < g.c_out; ++o) {
    const int64_t channel0 = o / g.c_out_per_group() * g.c_in_per_group();
    for (int32_t i = offsets[o]; i < offsets[o + 1]; ++i) {
      const int64_t c = channel0 + cols[i] / taps, t = cols[i] % taps;
      out[i] = ((c * hp + t / g.kw * g.dh) * wp + t % g.kw * g.dw) * np;
    }
  }
  return out;
}

// N rounded up to whole vectors: the lane stride of the batch-innermost layout.
template <typename T>
inline int64_t batch_lanes(int64_t n) {
  constexpr int64_t L = Simd<T>::kLanes;
  return (n + L - 1) / L * L;
}

// x (N, C, H, W) -> (C, H + 2·pad_h, W + 2·pad_w, NP), zero borders and zero extra lanes.
// The transpose runs over the whole (N, C·H·W) matrix (float register blocks need 8-16 contiguous
// columns, which a 4-pixel image row does not have); padding is then a copy of each image row into place.
template <typename T>
at::Tensor to_batch_innermost(const at::Tensor& x_nchw, int64_t pad_h, int64_t pad_w) {
  const at::Tensor x = x_nchw.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t np = batch_lanes<T>(n), hp = h + 2 * pad_h, wp = w + 2 * pad_w, chw = c * h * w;
  const bool padded = pad_h > 0 || pad_w > 0;
  at::Tensor out = at::empty({c, hp, wp, np}, x.options());
  at::Tensor flat = padded ? at::empty({c, h, w, np}, x.options()) : out;
  const T* src = x.data_ptr<T>();
  T* dst = flat.data_ptr<T>();
  constexpr int64_t kColumns = 256;  // columns (channel-pixels) per task
  at::parallel_for(0, (chw + kColumns - 1) / kColumns, 1, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t j0 = blk * kColumns, cols = std::min(kColumns, chw - j0);
      transpose_rows<T, false>(src + j0, 0, n, cols, chw, 1, dst + j0 * np, np, nullptr);
      if (np > n) {
        for (int64_t j = j0; j < j0 + cols; ++j) std::fill(dst + j * np + n, dst + (j + 1) * np, T(0));
      }
    }
  });
  if (!padded) return out;
  T* pad = out.data_ptr<T>();
  at::parallel_for(0, c * hp, 1, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t ch = row / hp, y = row % hp - pad_h;
      T* dst_row = pad + row * wp * np;
      if (y < 0 || y >= h) {
        std::fill(dst_row, dst_row + wp * np, T(0));
        continue;
      }
      std::fill(dst_row, dst_row + pad_w * np, T(0));
      std::memcpy(dst_row + pad_w * np, dst + (ch * h + y) * w * np, sizeof(T) * w * np);
      std::fill(dst_row + (pad_w + w) * np, dst_row + wp * np, T(0));
    }
  });
  return out;
}

// (C, H, W, NP) -> (N, C, H, W): the first n lanes of every channel-pixel.
template <typename T>
at::Tensor from_batch_innermost(const at::Tensor& t, int64_t n) {
  const int64_t c = t.size(0), h = t.size(1), w = t.size(2), np = t.size(3), chw = c * h * w;
  at::Tensor out = at::empty({n, c, h, w}, t.options());
  const T* src = t.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  constexpr int64_t kRows = 256;  // channel-pixels per task; a multiple of every register block
  at::parallel_for(0, (chw + kRows - 1) / kRows, 1, [&](int64_t b, int64_t e) {
    transpose_rows<T, false>(src, b * kRows, std::min(chw, e * kRows), n, np, 1, dst, chw, nullptr);
  });
  return out;
}

// Calls body(vectors, lane0) over the NP lanes: chunks of four vectors, then single ones; `vectors` is a
// std::integral_constant, so the body's register arrays have a compile-time size.
template <typename T, typename Body>
inline void for_each_lane_chunk(int64_t np, const Body& body) {
  constexpr int64_t L = Simd<T>::kLanes;
  int64_t c = 0;
  for (; c + 4 * L <= np; c += 4 * L) body(std::integral_constant<int, 4>{}, c);
  for (; c < np; c += L) body(std::integral_constant<int, 1>{}, c);
}

}  // namespace sparsekern
