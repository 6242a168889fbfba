// The depthwise sparse Conv2d kernels (conv_depthwise.h): forward, input gradient and weight gradient over
// the kept taps of each channel, vectorised over the flattened output plane, in NCHW.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_depthwise.h"
#include "conv_plane.h"
#include "scratch.h"

namespace sparsekern {
namespace {

struct InputPlaneTag {};
struct GradPlaneTag {};
struct PhaseGridTag {};

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

// Plane `plane` (`pixels` elements) of the tensor [base, base + total), readable from plane − margin to
// plane + pixels + margin: the plane itself, or (near either end of the tensor) a copy of it in `scratch`
// (pixels + 2·margin elements) inside a zero frame.
template <typename T>
inline const T* readable_plane(const T* base, int64_t total, const T* plane, int64_t pixels, int64_t margin,
                               T* scratch) {
  if (plane - margin >= base && plane + pixels + margin <= base + total) return plane;
  std::fill(scratch, scratch + margin, T(0));
  std::memcpy(scratch + margin, plane, sizeof(T) * pixels);
  std::fill(scratch + margin + pixels, scratch + pixels + 2 * margin, T(0));
  return scratch + margin;
}

// Splits input plane x_plane (H, W; the tensor ends at x_end) into the plan's stride phases, each on the
// output grid (pitch OW), in `scratch` (plan.phase_scratch elements); returns the origin the forward offsets
// are relative to. Rows and columns outside a phase are left as they are: every read of them is masked.
template <typename T>
const T* fill_phases(const T* x_plane, const T* x_end, const ConvGeometry& g, const DepthwisePlan<T>& plan,
                     T* scratch) {
  constexpr int64_t L = Simd<T>::kLanes;
  T* origin = scratch + plan.phase_low;
  for (size_t k = 0; k < plan.phases.size(); ++k) {
    const auto& phase = plan.phases[k];
    T* dst = origin + static_cast<int64_t>(k) * plan.phase_stride;
    const int64_t rows = std::min(phase.rows, plan.phase_rows_stored);
    for (int64_t r = 0; r < rows; ++r) {
      const T* src = x_plane + (r * g.sh + phase.a) * g.w + phase.b;
      T* out = dst + r * g.ow;
      if (g.sw == 2 && phase.cols <= L && src + 2 * L - 1 <= x_end) {
        // A narrow row (MobileNetV2's 4-8 columns) in one shuffle, reading past it within the tensor and
        // writing a whole vector: the lanes past the row land where later rows and phases are written next
        // (or in the scratch's last vector), and the phase's own columns past `cols` are never read unmasked.
        Simd<T>::store(out, Simd<T>::load_even(src));
      } else if (g.sw == 2) {
        copy_every_other(src, phase.cols, out);  // conv_plane.h: reads src[0 .. 2·cols − 2] only
      } else {
        for (int64_t c = 0; c < phase.cols; ++c) out[c] = src[c * g.sw];
      }
    }
  }
  return origin;
}

// Every kept weight (CSR entry e; channel c's are [offsets[c], offsets[c + 1])) as the plane loops want it:
// weight, read offset, and its tap's first mask vector (vector v's is mask[e] + v·lanes).
template <typename T>
struct KeptTaps {
  std::vector<T> weight;
  std::vector<int64_t> offset;
  std::vector<const Mask<T>*> mask;

  KeptTaps(const T* values, const int32_t* cols, int64_t nnz, const std::vector<int64_t>& tap_offset,
           int64_t sign, const std::vector<Mask<T>>& masks, int64_t vectors)
      : weight(nnz), offset(nnz), mask(nnz) {
    for (int64_t e = 0; e < nnz; ++e) {
      weight[e] = values ? values[e] : T(0);
      offset[e] = sign * tap_offset[cols[e]];
      mask[e] = masks.data() + cols[e] * vectors * Simd<T>::kLanes;
    }
  }
};

// out[q] = init + Σ_{k < count} weight[k] · in[q + offset[k]] (lanes cleared by mask[k]), for q in
// [0, pixels), over `vectors` vectors; full_vectors: out has room for whole vectors (a scratch grid).
template <typename T>
inline void convolve_plane(const T* weight, const int64_t* offset, const Mask<T>* const* mask, int64_t count,
                           int64_t vectors, int64_t pixels, const T* in, T init, T* out, bool full_vectors) {
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  for (int64_t v = 0; v < vectors; ++v) {
    typename S::vec acc = S::broadcast(init);
    const T* at = in + v * L;
    for (int64_t k = 0; k < count; ++k) acc += S::broadcast(weight[k]) * masked_load<T>(at + offset[k], mask[k] + v * L);
    const int64_t valid = std::min(L, pixels - v * L);
    if (full_vectors || valid == L) {
      S::store(out + v * L, acc);
    } else {  // the plane's last, partial vector: the lanes past it belong to the next plane
      for (int64_t lane = 0; lane < valid; ++lane) out[v * L + lane] = acc[lane];
    }
  }
}

// Threads take runs of planes p = n·C + c in memory order: visiting one channel's planes across the batch
// (24 KB apart on a 384-channel 4x4 layer) left every store a cache miss the prefetchers did not see coming.
// make_body() runs once per task (so its scratch lookups, thread-local and slow in a shared library, are not
// paid per plane) and returns the per-plane body(p, c).
template <typename MakeBody>
void for_each_plane(const ConvGeometry& g, int64_t pixels, const MakeBody& make_body) {
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(pixels, 1));  // a few KB of output per task
  at::parallel_for(0, g.n * g.c_in, grain, [&](int64_t p0, int64_t p1) {
    const auto body = make_body();
    for (int64_t p = p0; p < p1; ++p) body(p, p % g.c_in);
  });
}

}  // namespace

template <typename T>
void depthwise_conv2d_forward(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                              const T* x, const T* bias, T* y) {
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  const KeptTaps<T> taps(values, cols, offsets[g.c_in], plan.offset, 1, plan.forward_mask, plan.vectors);
  const int64_t in_pixels = g.h * g.w, total = g.n * g.c_in * in_pixels;
  const int64_t scratch_size = plan.in_place ? in_pixels + 2 * plan.input_margin : plan.phase_scratch;
  for_each_plane(g, plan.grid, [&] {
    T* scratch = scratch_buffer<T, InputPlaneTag>(scratch_size);
    return [&, scratch](int64_t p, int64_t c) {
      const int64_t begin = offsets[c], end = offsets[c + 1];
      const T init = bias ? bias[c] : T(0);
      T* out = y + p * plan.grid;
      if (begin == end) {
        std::fill(out, out + plan.grid, init);
        return;
      }
      const T* plane = x + p * in_pixels;
      const T* in = plan.in_place ? readable_plane(x, total, plane, in_pixels, plan.input_margin, scratch)
                                  : fill_phases(plane, x + total, g, plan, scratch);
      convolve_plane(taps.weight.data() + begin, taps.offset.data() + begin, taps.mask.data() + begin, end - begin,
                     plan.vectors, plan.grid, in, init, out, false);
    };
  });
}

template <typename T>
void depthwise_conv2d_input_grad(const T* values, const int32_t* offsets, const int32_t* cols,
                                 const ConvGeometry& g, const T* dy, T* dx) {
  constexpr int64_t L = Simd<T>::kLanes;
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  const int64_t nnz = offsets[g.c_in], phases = static_cast<int64_t>(plan.phases.size());
  // The kept weights reordered by (channel, phase): channel c's phase k are [run[c·phases + k], run[... + 1]).
  std::vector<int32_t> by_phase(nnz);
  std::vector<int64_t> run(g.c_in * phases + 1, 0);
  for (int64_t c = 0, at = 0; c < g.c_in; ++c) {
    for (int64_t k = 0; k < phases; ++k) {
      run[c * phases + k] = at;
      for (int64_t e = offsets[c]; e < offsets[c + 1]; ++e)
        if (plan.phase_of_tap[cols[e]] == k) by_phase[at++] = static_cast<int32_t>(e);
    }
    run[(c + 1) * phases] = at;
  }
  std::vector<T> ordered_values(nnz);
  std::vector<int32_t> ordered_cols(nnz);
  for (int64_t i = 0; i < nnz; ++i) {
    ordered_values[i] = values[by_phase[i]];
    ordered_cols[i] = cols[by_phase[i]];
  }
  const KeptTaps<T> taps(ordered_values.data(), ordered_cols.data(), nnz, plan.shift, -1, plan.input_grad_mask,
                         plan.grad_vectors);
  const int64_t in_pixels = g.h * g.w, total = g.n * g.c_in * plan.grid;
  const bool every_phase = phases == g.sh * g.sw;
  for_each_plane(g, in_pixels, [&] {
    T* scratch = scratch_buffer<T, GradPlaneTag>(plan.grid + 2 * plan.grad_margin);
    T* grid = plan.in_place ? nullptr : scratch_buffer<T, PhaseGridTag>(plan.grad_vectors * L);
    return [&, scratch, grid](int64_t p, int64_t c) {
      const int64_t begin = offsets[c], end = offsets[c + 1];
      T* out = dx + p * in_pixels;
      if (begin == end) {
        std::fill(out, out + in_pixels, T(0));
        return;
      }
      const T* grad = readable_plane(dy, total, dy + p * plan.grid, plan.grid, plan.grad_margin, scratch);
      if (plan.in_place) {  // the one phase is dx's plane itself
        convolve_plane(taps.weight.data() + begin, taps.offset.data() + begin, taps.mask.data() + begin,
                       end - begin, plan.grad_vectors, in_pixels, grad, T(0), out, false);
        return;
      }
      // Each phase's grid from the kept taps of that phase (none: zeros), then back to its stride positions.
      if (!every_phase) std::fill(out, out + in_pixels, T(0));  // pixels no tap reads get no gradient
      for (int64_t k = 0; k < phases; ++k) {
        const auto& phase = plan.phases[k];
        const int64_t pixels = phase.rows * g.ow, first = run[c * phases + k], last = run[c * phases + k + 1];
        convolve_plane(taps.weight.data() + first, taps.offset.data() + first, taps.mask.data() + first,
                       last - first, (pixels + L - 1) / L, pixels, grad, T(0), grid, true);
        for (int64_t r = 0; r < phase.rows; ++r) {
          T* row = out + (r * g.sh + phase.a) * g.w + phase.b;
          const T* src = grid + r * g.ow;
          for (int64_t col = 0; col < phase.cols; ++col) row[col * g.sw] = src[col];
        }
      }
    };
  });
}

// out[e] = Σ_n Σ_q dy[n, c, q] · src[q + offset_t] (forward mask; src the input plane or its phases) for each
// kept weight e = (c, t). Taps are taken up to kGroup at a time, so one pass over a plane pair feeds every
// tap of a 3x3 kernel; each image's vector sums go to a double total, so the rounding error grows with the
// plane's vectors, not with the batch.
template <typename T>
void depthwise_conv2d_weight_grad(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                                  const T* x, T* out) {
  using S = Simd<T>;
  using V = typename S::vec;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t kGroup = 9;
  const DepthwisePlan<T> plan = depthwise_plan<T>(g);
  const int64_t in_pixels = g.h * g.w, x_total = g.n * g.c_in * in_pixels, dy_total = g.n * g.c_in * plan.grid;
  const int64_t x_scratch_size = plan.in_place ? in_pixels + 2 * plan.input_margin : plan.phase_scratch;
  // Lanes of dy's last vector that lie in the plane (a partial vector reads the next plane's first pixels).
  Mask<T> tail[L];
  for (int64_t lane = 0; lane < L; ++lane) tail[lane] = (plan.vectors - 1) * L + lane < plan.grid ? -1 : 0;
  const KeptTaps<T> taps(nullptr, cols, offsets[g.c_in], plan.offset, 1, plan.forward_mask, plan.vectors);
  at::parallel_for(0, g.c_in, 1, [&](int64_t c0, int64_t c1) {
    T* x_scratch = scratch_buffer<T, InputPlaneTag>(x_scratch_size);
    T* dy_scratch = scratch_buffer<T, GradPlaneTag>(plan.grid + 2 * plan.grad_margin);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = offsets[c], end = offsets[c + 1];
      for (int64_t group = begin; group < end; group += kGroup) {
        const int64_t count = std::min(kGroup, end - group);
        const int64_t* offset = taps.offset.data() + group;
        const Mask<T>* const* mask = taps.mask.data() + group;
        double sums[kGroup] = {};
        for (int64_t n = 0; n < g.n; ++n) {
          const int64_t p = n * g.c_in + c;
          const T* xp = plan.in_place
                            ? readable_plane(x, x_total, x + p * in_pixels, in_pixels, plan.input_margin, x_scratch)
                            : fill_phases(x + p * in_pixels, x + x_total, g, plan, x_scratch);
          const T* dyp = readable_plane(dy, dy_total, dy + p * plan.grid, plan.grid, plan.grad_margin, dy_scratch);
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
