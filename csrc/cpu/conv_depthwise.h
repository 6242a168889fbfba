// The third sparse Conv2d algorithm: depthwise convolutions (groups = C_in = C_out) of stride 1 whose output
// has the input's size (3x3 with padding 1, 5x5 with padding 2, dilated ones padded to match), computed
// plane by plane in NCHW, in place: no padded copy, no transpose.
//
// Why a third one: a depthwise layer does 9 multiply-adds per output pixel at most, so the plane and batch
// kernels' fixed costs (a padded copy of every input plane, per-row copies of 4-16 floats, batch transposes)
// dominate, and on the 4x4-16x16 maps of MobileNetV2 they ran at 0.5-0.75x dense oneDNN at every
// sparsity. Here the flattened plane q = r·W + c is read in whole vectors: output q through tap (i, j) reads
// x[q + (i·dh − ph)·W + (j·dw − pw)], a constant offset per tap, so one kept weight is one vector load and
// one FMA per vector of pixels. Lanes whose input pixel lies outside the image (above, below, or wrapped
// around to the neighbouring row) are cleared by a per-tap, per-vector bit mask (an AND: +0.0, so an Inf
// or NaN next to the image never leaks in); the loads may run past the plane into its neighbours, and the
// few planes that lie too close to either end of the tensor are first copied into a framed scratch.
//
// The input gradient is the same sum transposed: dx[q] = Σ w_t · dy[q − offset_t], masked where the output
// pixel q − offset_t is outside the image; the weight gradient is, per kept weight, the masked dot product of
// dy with x at the tap's offset. Threads split the channels; a channel with no kept weight writes only its
// bias (forward) or zeros (input gradient) and reads nothing.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "conv_geometry.h"
#include "simd.h"

namespace sparsekern {

// Whether the depthwise kernels serve geometry g.
inline bool depthwise_eligible(const ConvGeometry& g) {
  return g.groups == g.c_in && g.c_out == g.c_in && g.sh == 1 && g.sw == 1 && g.oh == g.h && g.ow == g.w &&
         g.h * g.w > 0;
}

// Per-call tables: each tap's flat offset and, for every vector of the plane, the lanes it may read (one
// all-ones or all-zeros integer per lane, the width of T; flat arrays, as GCC drops the vector attribute of a
// type used as a std::vector argument).
template <typename T>
struct DepthwisePlan {
  using Mask = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

  int64_t pixels;  // H·W
  int64_t vectors;  // vectors per plane: ceil(pixels / lanes); the last one may be partial
  int64_t margin;   // elements a load may reach before the plane's start or past its last vector
  std::vector<int64_t> offset;        // per tap (i·kw + j): (i·dh − ph)·W + (j·dw − pw)
  std::vector<Mask> forward_mask;     // [(tap · vectors + v) · lanes + lane]: output pixels whose input is in the image
  std::vector<Mask> input_grad_mask;  // [(tap · vectors + v) · lanes + lane]: input pixels whose output is in it
};

template <typename T>
DepthwisePlan<T> depthwise_plan(const ConvGeometry& g) {
  constexpr int64_t L = Simd<T>::kLanes;
  DepthwisePlan<T> plan;
  plan.pixels = g.h * g.w;
  plan.vectors = (plan.pixels + L - 1) / L;
  const int64_t taps = g.taps();
  plan.offset.resize(taps);
  plan.forward_mask.resize(taps * plan.vectors * L);
  plan.input_grad_mask.resize(taps * plan.vectors * L);
  int64_t reach = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t di = t / g.kw * g.dh - g.ph, dj = t % g.kw * g.dw - g.pw;
    plan.offset[t] = di * g.w + dj;
    reach = std::max(reach, plan.offset[t] < 0 ? -plan.offset[t] : plan.offset[t]);
    auto inside = [&](int64_t r, int64_t c) { return r >= 0 && r < g.h && c >= 0 && c < g.w; };
    for (int64_t q = 0; q < plan.vectors * L; ++q) {
      const int64_t r = q / g.w, c = q % g.w;
      const bool in_plane = q < plan.pixels;
      plan.forward_mask[t * plan.vectors * L + q] = in_plane && inside(r + di, c + dj) ? -1 : 0;
      plan.input_grad_mask[t * plan.vectors * L + q] = in_plane && inside(r - di, c - dj) ? -1 : 0;
    }
  }
  // A load of vector v through tap t reads [v·L + offset, v·L + offset + L): at most `reach` before the plane
  // and reach + (vectors·L − pixels) past its end.
  plan.margin = reach + plan.vectors * L - plan.pixels;
  return plan;
}

// The depthwise kernels, called by the csr_conv2d* entry points when conv_algorithm() picks kDepthwise.
// Arguments as the entry points (already checked); x, dy NCHW contiguous; the layout's column index is the
// tap (C_in/groups = 1).
template <typename T>
void depthwise_conv2d_forward(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                              const T* x, const T* bias, T* y);
template <typename T>
void depthwise_conv2d_input_grad(const T* values, const int32_t* offsets, const int32_t* cols,
                                 const ConvGeometry& g, const T* dy, T* dx);
template <typename T>
void depthwise_conv2d_weight_grad(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                                  const T* x, T* out);

}  // namespace sparsekern
