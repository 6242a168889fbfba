// plane_conv2d_input_grad: dx of y = conv2d(x, W), vectorised over each sample's flattened input plane
// (conv_plane.h). Phase (a, b) of the padded gradient dx_pad of input channel c gathers, at every position
// g of its plane, Σ w · dy_framed[o][g + (ia_max − ia)·pitch' + (jb_max − jb)] over the kept weights
// (o, c, ki, kj) whose tap has phase (a, b): the forward's product with the transposed weight, in gather
// form (each dx element is summed in registers, no scatter, no atomics). The kept weights of an input
// channel come from the precomputed transposed (CSC) layout. Work is kept weights × plane positions per
// sample.
//
// Per sample: dy is copied into zero-framed planes (ia_max rows above, jb_max columns left, so every read
// is in bounds), each input channel's phase planes are computed in register chunks into a scratch row,
// and the valid pixels are copied (interleaving the phases when the stride is > 1) into dx.
#include <ATen/ATen.h>

#include <vector>

#include "conv_plane.h"
#include "scratch.h"

namespace sparsekern {
namespace {

struct GradPlanesTag {};
struct GradRowsTag {};

// Output channels [o0, o1) of sample dy_n (C_out, OH, OW) into their framed planes.
template <typename T>
void fill_grad_planes(const T* dy_n, const ConvGeometry& g, const PlaneGeometry& p, int64_t o0, int64_t o1,
                      T* planes) {
  // dy[r][q] sits at framed row r − grad_row0 + ia_max, column q − grad_col0 + jb_max; the parts that
  // fall outside the frame are never read.
  const int64_t shift_r = p.ia_max - p.grad_row0, shift_q = p.jb_max - p.grad_col0;
  const int64_t r0 = std::max<int64_t>(0, -shift_r), r1 = std::min(g.oh, p.grad_rows + p.ia_max - shift_r);
  const int64_t q0 = std::max<int64_t>(0, -shift_q), q1 = std::min(g.ow, p.grad_pitch - shift_q);
  for (int64_t o = o0; o < o1; ++o) {
    T* plane = planes + o * p.grad_plane;
    std::fill(plane, plane + p.grad_plane, T(0));
    if (q1 <= q0) continue;
    for (int64_t r = r0; r < r1; ++r) {
      std::memcpy(plane + (r + shift_r) * p.grad_pitch + q0 + shift_q, dy_n + (o * g.oh + r) * g.ow + q0,
                  sizeof(T) * (q1 - q0));
    }
  }
}

// The kept weights regrouped by (input channel, stored phase): list [starts[q], starts[q + 1]) of
// q = c·phases + phase, each entry's value and its read offset in the framed dy planes.
template <typename T>
struct GatherLists {
  std::vector<int64_t> starts, offs;
  std::vector<T> values;
};

template <typename T>
GatherLists<T> gather_lists(const T* values, const int32_t* t_offsets, const int32_t* t_rows,
                            const int64_t* t_perm, const ConvGeometry& g, const PlaneGeometry& p) {
  GatherLists<T> lists;
  const int64_t n_lists = g.c_in * p.phases;
  lists.starts.assign(n_lists + 1, 0);
  const int64_t taps = g.taps(), nnz = t_offsets[g.c_in_per_group() * taps];
  lists.offs.resize(nnz);
  lists.values.resize(nnz);
  // Pass 1 counts, pass 2 places: entries of list q in (tap, output channel) order.
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<int64_t> next(lists.starts.begin(), lists.starts.end() - 1);
    for (int64_t c = 0; c < g.c_in; ++c) {
      const int64_t group = c / g.c_in_per_group(), local = c % g.c_in_per_group();
      const int64_t o_lo = group * g.c_out_per_group(), o_hi = o_lo + g.c_out_per_group();
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t column = local * taps + t;
        const PlaneGeometry::Tap tap = p.tap(g, t / g.kw, t % g.kw);
        const int64_t q = c * p.phases + tap.phase;
        const int64_t delta = (p.ia_max - tap.ia) * p.grad_pitch + (p.jb_max - tap.jb);
        const int32_t* begin = t_rows + t_offsets[column];
        const int32_t* end = t_rows + t_offsets[column + 1];
        const int32_t* lo = std::lower_bound(begin, end, static_cast<int32_t>(o_lo));
        const int32_t* hi = std::lower_bound(lo, end, static_cast<int32_t>(o_hi));
        if (pass == 0) {
          lists.starts[q + 1] += hi - lo;
          continue;
        }
        for (const int32_t* r = lo; r < hi; ++r) {
          const int64_t e = r - t_rows;
          lists.offs[next[q]] = *r * p.grad_plane + delta;
          lists.values[next[q]] = values[t_perm[e]];
          ++next[q];
        }
      }
    }
    if (pass == 0)
      for (int64_t q = 0; q < n_lists; ++q) lists.starts[q + 1] += lists.starts[q];
  }
  return lists;
}

// Stride 2 with both column phases of padded row yp stored: dx row dst interleaves the two phase rows
// (even pixels from one, odd from the other) in one pass the compiler vectorises with permutes; the
// per-phase strided copies below ran one scalar store per pixel, about a fifth of the input gradient of a
// 64->128 stride-2 3x3 on 32x32 maps at 98%. False (nothing written) when a phase is not stored.
template <typename T>
inline bool interleave_pair(const T* rows, const PlaneGeometry& p, const ConvGeometry& g, int64_t yp, int64_t i,
                            T* __restrict dst) {
  // Pixel x lies in column phase (x + pw) % 2, at grid column (x + pw) / 2 − grad_col0.
  const int64_t even_phase = p.phase_index[(yp % g.sh) * 2 + g.pw % 2];
  const int64_t odd_phase = p.phase_index[(yp % g.sh) * 2 + (1 + g.pw) % 2];
  if (even_phase < 0 || odd_phase < 0) return false;
  const T* __restrict even = rows + even_phase * p.grad_span + i * p.grad_pitch + g.pw / 2 - p.grad_col0;
  const T* __restrict odd = rows + odd_phase * p.grad_span + i * p.grad_pitch + (1 + g.pw) / 2 - p.grad_col0;
  const int64_t pairs = g.w / 2;
  for (int64_t k = 0; k < pairs; ++k) {
    dst[2 * k] = even[k];
    dst[2 * k + 1] = odd[k];
  }
  if (g.w % 2) dst[g.w - 1] = even[pairs];
  return true;
}

// Input channels [c0, c1) of one sample, from its framed dy planes, into dx_n (C_in, H, W).
template <typename T>
void input_grad_channels(const GatherLists<T>& lists, const ConvGeometry& g, const PlaneGeometry& p,
                         const T* planes, int64_t c0, int64_t c1, T* dx_n) {
  T* rows = scratch_buffer<T, GradRowsTag>(p.phases * p.grad_span);
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t phase = 0; phase < p.phases; ++phase) {
      const int64_t q = c * p.phases + phase;
      T* row = rows + phase * p.grad_span;
      for_each_plane_chunk<T>(p.grad_span, [&](auto vectors, int64_t f) {
        accumulate_chunk<T, decltype(vectors)::value>(lists.values.data(), lists.offs.data(), lists.starts[q],
                                                      lists.starts[q + 1], planes + f, T(0), row + f);
      });
    }
    // dx[y][x] is dx_pad[y + ph][x + pw]: phase ((y + ph) % sh, (x + pw) % sw) at ((y + ph) / sh, (x + pw) / sw);
    // a phase no tap reads gets no gradient.
    T* out = dx_n + c * g.h * g.w;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t yp = y + g.ph, i = yp / g.sh - p.grad_row0;
      T* dst = out + y * g.w;
      if (g.sw == 1) {
        const int64_t phase = p.phase_index[(yp % g.sh) * g.sw];
        if (phase < 0) {
          std::fill(dst, dst + g.w, T(0));
        } else {
          std::memcpy(dst, rows + phase * p.grad_span + i * p.grad_pitch + g.pw - p.grad_col0, sizeof(T) * g.w);
        }
        continue;
      }
      // Column phase b holds the pixels x = x0, x0 + sw, ... with (x0 + pw) % sw == b, at consecutive grid
      // columns from (x0 + pw) / sw: one strided copy per phase, no division per pixel.
      if (g.sw == 2 && interleave_pair(rows, p, g, yp, i, dst)) continue;
      for (int64_t b = 0; b < g.sw; ++b) {
        const int64_t x0 = ((b - g.pw) % g.sw + g.sw) % g.sw;
        const int64_t phase = p.phase_index[(yp % g.sh) * g.sw + b];
        if (phase < 0) {
          for (int64_t x = x0; x < g.w; x += g.sw) dst[x] = T(0);
          continue;
        }
        const T* src = rows + phase * p.grad_span + i * p.grad_pitch + (x0 + g.pw) / g.sw - p.grad_col0;
        for (int64_t x = x0, k = 0; x < g.w; x += g.sw, ++k) dst[x] = src[k];
      }
    }
  }
}

}  // namespace

template <typename T>
void plane_conv2d_input_grad(const T* values, const int32_t* t_offsets, const int32_t* t_rows,
                             const int64_t* t_perm, const ConvGeometry& g, const T* dy, T* dx) {
  const PlaneGeometry p = plane_geometry<T>(g);
  const GatherLists<T> lists = gather_lists(values, t_offsets, t_rows, t_perm, g, p);
  const int64_t sample_in = g.c_in * g.h * g.w, sample_out = g.c_out * g.oh * g.ow;
  for_each_sample<T, GradPlanesTag>(
      plane_schedule(g.n), g.n, g.c_out * p.grad_plane, g.c_out, g.c_in,
      [&](int64_t n, int64_t o0, int64_t o1, T* planes) { fill_grad_planes(dy + n * sample_out, g, p, o0, o1, planes); },
      [&](int64_t n, int64_t c0, int64_t c1, const T* planes, int64_t) {
        input_grad_channels(lists, g, p, planes, c0, c1, dx + n * sample_in);
      });
}

template void plane_conv2d_input_grad<float>(const float*, const int32_t*, const int32_t*, const int64_t*,
                                             const ConvGeometry&, const float*, float*);
template void plane_conv2d_input_grad<double>(const double*, const int32_t*, const int32_t*, const int64_t*,
                                              const ConvGeometry&, const double*, double*);

}  // namespace sparsekern
