// The depthwise sparse Conv2d kernels (conv_depthwise.h): forward, input gradient and weight gradient over
// the kept taps of each channel, vectorised over the flattened plane, in NCHW.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_depthwise.h"
#include "scratch.h"

namespace sparsekern {
namespace {

struct InputPlaneTag {};
struct GradPlaneTag {};

template <typename T>
using Mask = typename DepthwisePlan<T>::Mask;

// p[0, lanes) with the lanes whose mask[lane] is 0 cleared to +0.0 (bitwise, so whatever those lanes held, even
// a NaN, contributes nothing).
template <typename T>
inline typename Simd<T>::vec masked_load(const T* p, const Mask<T>* mask) {
  typedef Mask<T> mask_vec __attribute__((vector_size(kVectorBytes)));
  mask_vec bits, keep;
  std::memcpy(&bits, p, sizeof(bits));
  std::memcpy(&keep, mask, sizeof(keep));
  bits &= keep;
  typename Simd<T>::vec v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Plane `plane` of the tensor [base, base + total), readable from plane − margin to plane + pixels + margin:
// the plane itself, or (near either end of the tensor) a copy of it in `scratch` (pixels + 2·margin elements)
// inside a zero frame.
template <typename T>
inline const T* readable_plane(const T* base, int64_t total, const T* plane, const DepthwisePlan<T>& plan,
                               T* scratch) {
  if (plane - plan.margin >= base && plane + plan.pixels + plan.margin <= base + total) return plane;
  std::fill(scratch, scratch + plan.margin, T(0));
  std::memcpy(scratch + plan.margin, plane, sizeof(T) * plan.pixels);
  std::fill(scratch + plan.margin + plan.pixels, scratch + plan.pixels + 2 * plan.margin, T(0));
  return scratch + plan.margin;
}

// Every kept weight (CSR entry e; channel c's are [offsets[c], offsets[c + 1])) as the plane loops want it:
// weight, signed read offset, and its tap's first mask vector (vector v's is mask[e] + v·lanes).
template <typename T>
struct KeptTaps {
  std::vector<T> weight;
  std::vector<int64_t> offset;
  std::vector<const Mask<T>*> mask;

  KeptTaps(const T* values, const int32_t* cols, int64_t nnz, const DepthwisePlan<T>& plan,
           const std::vector<Mask<T>>& masks, int64_t sign)
      : weight(nnz), offset(nnz), mask(nnz) {
    for (int64_t e = 0; e < nnz; ++e) {
      weight[e] = values ? values[e] : T(0);
      offset[e] = sign * plan.offset[cols[e]];
      mask[e] = masks.data() + cols[e] * plan.vectors * Simd<T>::kLanes;
    }
  }
};

// out[q] = init + Σ_{e in [begin, end)} weight_e · in[q + offset_e] (lanes cleared by mask_e), q over the plane.
template <typename T>
inline void convolve_plane(const KeptTaps<T>& taps, int64_t begin, int64_t end, const DepthwisePlan<T>& plan,
                           const T* in, T init, T* out) {
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  for (int64_t v = 0; v < plan.vectors; ++v) {
    typename S::vec acc = S::broadcast(init);
    const T* at = in + v * L;
    for (int64_t e = begin; e < end; ++e)
      acc += S::broadcast(taps.weight[e]) * masked_load<T>(at + taps.offset[e], taps.mask[e] + v * L);
    const int64_t valid = std::min(L, plan.pixels - v * L);
    if (valid == L) {
      S::store(out + v * L, acc);
    } else {  // the plane's last, partial vector: the lanes past it belong to the next plane
      for (int64_t lane = 0; lane < valid; ++lane) out[v * L + lane] = acc[lane];
    }
  }
}

// y (or dx) = the per-channel convolution of src (x, or dy) through each channel's kept taps, read at
// sign · offset with `masks`; planes of channels without kept taps are filled with their init (bias, or
// zero). Threads take runs of planes in memory order: visiting one channel's planes across the batch (24 KB
// apart on a 384-channel 4x4 layer) left every store a cache miss the prefetchers did not see coming.
template <typename T, typename Tag>
void depthwise_pass(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                    const DepthwisePlan<T>& plan, const std::vector<Mask<T>>& masks, int64_t sign, const T* src,
                    const T* bias, T* dst) {
  const int64_t pixels = plan.pixels, total = g.n * g.c_in * pixels;
  const KeptTaps<T> taps(values, cols, offsets[g.c_in], plan, masks, sign);
  const int64_t grain = std::max<int64_t>(1, 2048 / pixels);  // planes per task: a few KB of output
  at::parallel_for(0, g.n * g.c_in, grain, [&](int64_t p0, int64_t p1) {
    T* scratch = scratch_buffer<T, Tag>(pixels + 2 * plan.margin);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % g.c_in, begin = offsets[c], end = offsets[c + 1];
      const T init = bias ? bias[c] : T(0);
      T* out = dst + p * pixels;
      if (begin == end) {
        std::fill(out, out + pixels, init);
        continue;
      }
      convolve_plane(taps, begin, end, plan, readable_plane(src, total, src + p * pixels, plan, scratch), init,
                     out);
    }
  });
}

}  // namespace

template <typename T>
void depthwise_conv2d_forward(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                              const T* x, const T* bias, T* y) {
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  depthwise_pass<T, InputPlaneTag>(values, offsets, cols, g, plan, plan.forward_mask, 1, x, bias, y);
}

template <typename T>
void depthwise_conv2d_input_grad(const T* values, const int32_t* offsets, const int32_t* cols,
                                 const ConvGeometry& g, const T* dy, T* dx) {
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  depthwise_pass<T, GradPlaneTag>(values, offsets, cols, g, plan, plan.input_grad_mask, -1, dy, nullptr, dx);
}

// out[e] = Σ_n Σ_q dy[n, c, q] · x[n, c, q + offset_t] (forward mask) for each kept weight e = (c, t). Taps
// are taken up to kGroup at a time, so one pass over a plane pair feeds every tap of a 3x3 kernel; each
// image's vector sums go to a double total, so the rounding error grows with the plane's vectors, not with
// the batch.
template <typename T>
void depthwise_conv2d_weight_grad(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                                  const T* x, T* out) {
  using S = Simd<T>;
  using V = typename S::vec;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t kGroup = 9;
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  const int64_t pixels = plan.pixels, total = g.n * g.c_in * pixels;
  // Lanes of dy's last vector that lie in the plane (a partial vector reads the next plane's first pixels).
  Mask<T> tail[L];
  for (int64_t lane = 0; lane < L; ++lane) tail[lane] = (plan.vectors - 1) * L + lane < pixels ? -1 : 0;
  const KeptTaps<T> taps(nullptr, cols, offsets[g.c_in], plan, plan.forward_mask, 1);
  at::parallel_for(0, g.c_in, 1, [&](int64_t c0, int64_t c1) {
    T* x_scratch = scratch_buffer<T, InputPlaneTag>(pixels + 2 * plan.margin);
    T* dy_scratch = scratch_buffer<T, GradPlaneTag>(pixels + 2 * plan.margin);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = offsets[c], end = offsets[c + 1];
      for (int64_t group = begin; group < end; group += kGroup) {
        const int64_t count = std::min(kGroup, end - group);
        const int64_t* offset = taps.offset.data() + group;
        const Mask<T>* const* mask = taps.mask.data() + group;
        double sums[kGroup] = {};
        for (int64_t n = 0; n < g.n; ++n) {
          const int64_t plane = (n * g.c_in + c) * pixels;
          const T* xp = readable_plane(x, total, x + plane, plan, x_scratch);
          const T* dyp = readable_plane(dy, total, dy + plane, plan, dy_scratch);
          V acc[kGroup];
#pragma GCC unroll 9
          for (int64_t k = 0; k < kGroup; ++k) acc[k] = S::zero();
          for (int64_t v = 0; v < plan.vectors; ++v) {
            const V d = v + 1 < plan.vectors ? S::load(dyp + v * L) : masked_load<T>(dyp + v * L, tail);
#pragma GCC unroll 9
            for (int64_t k = 0; k < kGroup; ++k) {
              if (k < count) acc[k] += d * masked_load<T>(xp + v * L + offset[k], mask[k] + v * L);
            }
          }
          for (int64_t k = 0; k < count; ++k) sums[k] += S::sum(acc[k]);
        }
        for (int64_t k = 0; k < count; ++k) out[group + k] = static_cast<T>(sums[k]);
      }
    }
  });
}

#define SPARSEKERN_DEPTHWISE(T)                                                                                  \
  template void depthwise_conv2d_forward<T>(const T*, const int32_t*, const int32_t*, const ConvGeometry&,      \
                                            const T*, const T*, T*);                                          \
  template void depthwise_conv2d_input_grad<T>(const T*, const int32_t*, const int32_t*, const ConvGeometry&,   \
                                               const T*, T*);                                                 \
  template void depthwise_conv2d_weight_grad<T>(const int32_t*, const int32_t*, const ConvGeometry&, const T*, \
                                                const T*, T*);
SPARSEKERN_DEPTHWISE(float)
SPARSEKERN_DEPTHWISE(double)
#undef SPARSEKERN_DEPTHWISE

}  // namespace sparsekern
