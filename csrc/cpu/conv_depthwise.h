// The third sparse Conv2d algorithm: depthwise convolutions (groups = C_in = C_out), computed plane by plane
// in NCHW, vectorised over the flattened output plane, with no transpose.
//
// Why a third one: a depthwise layer does 9 multiply-adds per output pixel at most, so the plane and batch
// kernels' fixed costs (a padded copy of every input plane, per-row copies of 4-16 floats, batch transposes)
// dominate, and on the 4x4-16x16 maps of MobileNetV2 they ran at 0.5-0.75x dense oneDNN at every
// sparsity.
//
// Stride 1 with the output the input's size (3x3 with padding 1, 5x5 with padding 2, ...): the input plane
// is read in place. Output q = r·W + c through tap (i, j) reads x[q + (i·dh − ph)·W + (j·dw − pw)], a
// constant offset per tap, so one kept weight is one vector load and one FMA per vector of pixels. Lanes
// whose input pixel lies outside the image (above, below, or wrapped around to the neighbouring row) are
// cleared by a per-tap, per-vector bit mask (an AND: +0.0, so an Inf or NaN next to the image never leaks
// in); the loads may run past the plane into its neighbours, and the planes too close to either end of the
// tensor are first copied into a framed scratch.
//
// Strided (MobileNetV2's 3x3/s2): the input plane is first split into its stride phases, phase (a, b) the
// sub-image x[sh·R + a][sw·C + b], each stored on the output grid (pitch OW). Tap (i, j) with
// i·dh − ph = sh·qi + a and j·dw − pw = sw·qj + b reads phase (a, b) at (r + qi, c + qj): again one constant
// offset per tap from the output position, masked where (r + qi, c + qj) is outside the phase. That needs
// every phase's width to fit the output grid (true for "same"-style padding: 3x3, padding 1, stride 2).
//
// The input gradient is the same sum transposed: each phase of dx at (R, C) gathers w_t·dy[R − qi][C − qj]
// over the kept taps of that phase, masked where the output pixel is outside the image, and is then put back
// in its stride positions (for stride 1 it is dx itself, in place). The weight gradient is, per kept weight,
// the masked dot product of dy with the (phase of the) input at the tap's offset. Threads split the planes
// (forward, input gradient) or the channels (weight gradient); a channel with no kept weight writes only its
// bias (forward) or zeros (input gradient) and reads nothing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "conv_geometry.h"
#include "simd.h"

namespace sparsekern {

// Per-call tables (built by depthwise_plan). Masks hold one all-ones or all-zeros integer per lane, the
// width of T, in flat arrays (GCC drops the vector attribute of a type used as a std::vector argument).
template <typename T>
struct DepthwisePlan {
  using Mask = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

  bool eligible = false;  // whether these kernels serve the geometry
  bool in_place = false;  // stride 1, output the input's size: planes are read and written where they are
  int64_t grid = 0;       // output pixels per plane, OH·OW (pitch OW)
  int64_t vectors = 0;    // vectors over the output grid (the last may be partial)
  // Stride phases read by some tap: (a, b), and the phase's rows and columns in the image.
  struct Phase {
    int64_t a, b, rows, cols;
  };
  std::vector<Phase> phases;
  std::vector<int64_t> phase_of_tap;  // per tap (i·kw + j): index into `phases`
  // Forward and weight gradient: tap t reads its source (the input plane in place, or the phase scratch)
  // at output position q + offset[t], lanes forward_mask[(t·vectors + v)·lanes ...].
  std::vector<int64_t> offset;
  std::vector<Mask> forward_mask;
  int64_t input_margin = 0;                      // in place: reach of those reads around an input plane
  int64_t phase_stride = 0, phase_low = 0;       // strided: phase k at scratch + phase_low + k·phase_stride
  int64_t phase_rows_stored = 0, phase_scratch = 0;  // rows filled per phase; scratch elements per plane
  // Input gradient: phase grids of rows × OW (dx's plane itself in place), grad_vectors vectors each; tap t
  // reads dy at Q − shift[t] (shift = qi·OW + qj), lanes input_grad_mask[(t·grad_vectors + v)·lanes ...].
  int64_t grad_vectors = 0;
  std::vector<int64_t> shift;
  std::vector<Mask> input_grad_mask;
  int64_t grad_margin = 0;  // reach of the dy reads around a dy plane
};

// floor(u / s) for s >= 1 (C++ division truncates toward zero).
inline int64_t floor_div(int64_t u, int64_t s) { return u >= 0 ? u / s : -((-u + s - 1) / s); }

// The plan of geometry g; with_tables = false stops after deciding `eligible` (what conv_algorithm asks).
template <typename T>
DepthwisePlan<T> depthwise_plan(const ConvGeometry& g, bool with_tables = true) {
  constexpr int64_t L = Simd<T>::kLanes;
  DepthwisePlan<T> plan;
  if (!(g.groups == g.c_in && g.c_out == g.c_in && g.h * g.w > 0 && g.oh * g.ow > 0)) return plan;
  plan.in_place = g.sh == 1 && g.sw == 1;
  if (plan.in_place && (g.oh != g.h || g.ow != g.w)) return plan;
  const int64_t taps = g.taps();
  std::vector<int64_t> qi(taps), qj(taps), phase_slot(g.sh * g.sw, -1);
  plan.phase_of_tap.resize(taps);
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t u = t / g.kw * g.dh - g.ph, w = t % g.kw * g.dw - g.pw;
    qi[t] = floor_div(u, g.sh);
    qj[t] = floor_div(w, g.sw);
    const int64_t a = u - qi[t] * g.sh, b = w - qj[t] * g.sw;
    int64_t& slot = phase_slot[a * g.sw + b];
    if (slot < 0) {
      slot = static_cast<int64_t>(plan.phases.size());
      const int64_t rows = a < g.h ? (g.h - a + g.sh - 1) / g.sh : 0, cols = b < g.w ? (g.w - b + g.sw - 1) / g.sw : 0;
      if (cols > g.ow) return plan;  // a phase row must fit the output grid's pitch
      plan.phases.push_back({a, b, rows, cols});
    }
    plan.phase_of_tap[t] = slot;
  }
  plan.eligible = true;
  if (!with_tables) return plan;
  plan.grid = g.oh * g.ow;
  plan.vectors = (plan.grid + L - 1) / L;
  int64_t grad_rows = 0;
  for (const auto& phase : plan.phases) grad_rows = std::max(grad_rows, phase.rows);
  plan.grad_vectors = plan.in_place ? plan.vectors : (grad_rows * g.ow + L - 1) / L;
  int64_t qi_max = 0;
  for (int64_t t = 0; t < taps; ++t) qi_max = std::max(qi_max, qi[t]);
  plan.phase_rows_stored = g.oh + qi_max;
  plan.phase_stride = plan.in_place ? 0 : plan.phase_rows_stored * g.ow;
  plan.offset.resize(taps);
  plan.shift.resize(taps);
  plan.forward_mask.resize(taps * plan.vectors * L);
  plan.input_grad_mask.resize(taps * plan.grad_vectors * L);
  int64_t low = 0, high = 0, reach = 0, shift_min = 0, shift_max = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const auto& phase = plan.phases[plan.phase_of_tap[t]];
    plan.shift[t] = qi[t] * g.ow + qj[t];
    plan.offset[t] = plan.phase_of_tap[t] * plan.phase_stride + plan.shift[t];
    low = std::max(low, -plan.shift[t]);
    high = std::max(high, plan.offset[t] + plan.vectors * L);
    reach = std::max(reach, std::abs(plan.shift[t]));
    shift_min = std::min(shift_min, plan.shift[t]);
    shift_max = std::max(shift_max, plan.shift[t]);
    for (int64_t q = 0; q < plan.vectors * L; ++q) {  // output pixel (r, c) reads phase pixel (r + qi, c + qj)
      const int64_t r = q / g.ow + qi[t], c = q % g.ow + qj[t];
      const bool valid = q < plan.grid && r >= 0 && r < phase.rows && c >= 0 && c < phase.cols;
      plan.forward_mask[t * plan.vectors * L + q] = valid ? -1 : 0;
    }
    for (int64_t q = 0; q < plan.grad_vectors * L; ++q) {  // phase pixel (R, C) takes output (R − qi, C − qj)
      const int64_t rr = q / g.ow, cc = q % g.ow, r = rr - qi[t], c = cc - qj[t];
      const bool valid = rr < phase.rows && cc < phase.cols && r >= 0 && r < g.oh && c >= 0 && c < g.ow;
      plan.input_grad_mask[t * plan.grad_vectors * L + q] = valid ? -1 : 0;
    }
  }
  // In place, a forward load of vector v reads [v·L + offset, v·L + offset + L) of the input plane.
  plan.input_margin = reach + plan.vectors * L - plan.grid;
  plan.phase_low = low;
  plan.phase_scratch = low + std::max(high, static_cast<int64_t>(plan.phases.size()) * plan.phase_stride) + L;
  // dy is read at [Q − shift_max, Q − shift_min + L) for Q < grad_vectors·L, and (weight gradient) on its own
  // vectors [0, vectors·L).
  plan.grad_margin = std::max({shift_max, plan.grad_vectors * L - shift_min - plan.grid, plan.vectors * L - plan.grid,
                               int64_t{0}});
  return plan;
}

// Whether the depthwise kernels serve geometry g.
template <typename T>
bool depthwise_eligible(const ConvGeometry& g) {
  return depthwise_plan<T>(g, false).eligible;
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
