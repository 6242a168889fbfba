// The second sparse Conv2d algorithm: direct convolution vectorised over the flattened output plane of one
// sample, in NCHW, with no batch transposes.
//
// Why a second one: the batch-innermost kernels (conv_geometry.h) keep every lane busy whatever the image
// size, but each op transposes its activations to (C, H, W, N) and back. On 32x32 and 16x16 maps those
// transposes (tens of MB per step) cost more than the sparse arithmetic at 95-99% sparsity. Here each
// sample is convolved on its own, in place in NCHW, and only its own padded copy (a few hundred KB, in L2)
// is made.
//
// Layout of one sample's input ("planes"): the zero-padded image x_pad (H + 2·ph, W + 2·pw) of each
// channel, split into its stride phases: phase (a, b) is the plane P_ab[i][j] = x_pad[i·sh + a][j·sw + b]
// (for stride 1 the one phase is x_pad itself). Only the phases some tap reads are stored. Output pixel
// (oy, ox) through tap (ki, kj) reads x_pad[oy·sh + ki·dh][ox·sw + kj·dw] = P_ab[oy + ia][ox + jb] with
// ki·dh = ia·sh + a and kj·dw = jb·sw + b, so if the output grid is laid out with the planes' row pitch,
// f = oy·pitch + ox, every kept weight reads its plane at the constant offset ia·pitch + jb from f: one
// broadcast weight times contiguous vectors, as in a dense-times-sparse product. The pitch − OW columns
// past each output row are computed and discarded (2 of 34 for a 32x32 map and a 3x3 kernel).
//
// The input gradient is the same sum transposed: phase (a, b) of dx_pad at (i, j) gathers w·dy[o][i − ia]
// [j − jb] over the kept weights whose tap has phase (a, b). With dy embedded in a zero frame (ia_max rows
// above, jb_max columns left of the first computed row and column) every such weight reads at the
// constant offset (ia_max − ia)·pitch' + (jb_max − jb). The weight gradient is one dot product per kept weight between dy (embedded in the
// forward's output grid, zero in the discarded columns) and the input plane at the weight's offset.
//
// Threads split the batch (each works on whole samples with its own scratch); below one sample per
// thread they split the channels of each sample instead.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "conv_depthwise.h"
#include "conv_geometry.h"
#include "scratch.h"
#include "simd.h"

namespace sparsekern {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct PlaneGeometry {
  int64_t phases;                    // stride phases stored per channel (those some tap reads)
  std::vector<int64_t> phase_index;  // (a·sw + b) -> stored phase, or -1 when no tap reads it
  int64_t rows, pitch;               // of one phase plane: ceil((H + 2·ph) / sh) x ceil((W + 2·pw) / sw)
  int64_t span;                      // flat output positions computed per output channel (whole vectors)
  int64_t plane;                     // elements per stored input plane (covers span + the largest offset)
  int64_t ia_max, jb_max;            // largest tap offsets, in plane rows and columns
  // The input gradient computes, of each phase of dx_pad, only the plane rows [grad_row0, grad_row0 +
  // grad_rows) and columns [grad_col0, grad_col0 + grad_cols) that hold image pixels (not the padding),
  // on a grid of pitch grad_pitch = grad_cols + jb_max, over grad_span positions; dy is framed to match,
  // grad_plane elements per output channel.
  int64_t grad_row0, grad_rows, grad_col0, grad_cols;
  int64_t grad_pitch, grad_span, grad_plane;

  // Where tap (ki, kj) reads: its stored phase and its offset from the output position.
  struct Tap {
    int64_t phase, ia, jb;
  };
  Tap tap(const ConvGeometry& g, int64_t ki, int64_t kj) const {
    const int64_t r = ki * g.dh, c = kj * g.dw;
    return {phase_index[(r % g.sh) * g.sw + c % g.sw], r / g.sh, c / g.sw};
  }
};

template <typename T>
PlaneGeometry plane_geometry(const ConvGeometry& g) {
  constexpr int64_t L = Simd<T>::kLanes;
  PlaneGeometry p;
  p.phase_index.assign(g.sh * g.sw, -1);
  for (int64_t ki = 0; ki < g.kh; ++ki)
    for (int64_t kj = 0; kj < g.kw; ++kj) p.phase_index[(ki * g.dh % g.sh) * g.sw + kj * g.dw % g.sw] = 0;
  p.phases = 0;
  for (int64_t& index : p.phase_index)
    if (index == 0) index = p.phases++;
  p.rows = (g.h + 2 * g.ph + g.sh - 1) / g.sh;
  p.pitch = (g.w + 2 * g.pw + g.sw - 1) / g.sw;
  p.ia_max = (g.kh - 1) * g.dh / g.sh;
  p.jb_max = (g.kw - 1) * g.dw / g.sw;
  p.span = round_up((g.oh - 1) * p.pitch + g.ow, L);
  p.plane = round_up(std::max(p.rows * p.pitch, p.span + p.ia_max * p.pitch + p.jb_max), L);
  // Plane row i of phase a holds image row i·sh + a − ph: the image rows are i in [ceil((ph − a) / sh),
  // ceil((H + ph − a) / sh)); the grid spans them for every phase (likewise for columns).
  auto first = [](int64_t pad, int64_t a, int64_t s) { return pad > a ? (pad - a + s - 1) / s : 0; };
  auto limit = [](int64_t size, int64_t pad, int64_t a, int64_t s) { return (size + pad - a + s - 1) / s; };
  int64_t row0 = p.rows, row1 = 0, col0 = p.pitch, col1 = 0;
  for (int64_t a = 0; a < g.sh; ++a) {
    row0 = std::min(row0, first(g.ph, a, g.sh));
    row1 = std::max(row1, limit(g.h, g.ph, a, g.sh));
  }
  for (int64_t b = 0; b < g.sw; ++b) {
    col0 = std::min(col0, first(g.pw, b, g.sw));
    col1 = std::max(col1, limit(g.w, g.pw, b, g.sw));
  }
  p.grad_row0 = row0;
  p.grad_rows = row1 - row0;
  p.grad_col0 = col0;
  p.grad_cols = col1 - col0;
  p.grad_pitch = p.grad_cols + p.jb_max;
  p.grad_span = round_up((p.grad_rows - 1) * p.grad_pitch + p.grad_cols, L);
  p.grad_plane = round_up(std::max((p.grad_rows + p.ia_max) * p.grad_pitch,
                                   p.grad_span + p.ia_max * p.grad_pitch + p.jb_max), L);
  return p;
}

// Which algorithm serves a call. SPARSEKERN_CONV_ALGORITHM=batch|plane|depthwise forces one (tests,
// benchmarks; "depthwise" where conv_depthwise.h serves the geometry, the automatic choice elsewhere).
// Otherwise the depthwise kernels take every depthwise geometry they serve, the plane kernels take maps of at
// least 8x8 output pixels, and smaller ones where at most a fifth
// of the computed positions are discarded (a 1x1 convolution without padding: none). The batch kernels take
// the rest, e.g. a padded 3x3 on a 4x4 map, where the plane computes 24 positions for 16 pixels. Measured
// on the CIFAR ResNet-18 / VGG16 / MobileNetV2 layers with the sk_csr_batch / sk_csr_plane candidates of
// `python -m benchmarks.run --suite conv` (README: "How the kernels work").
enum class ConvAlgorithm { kBatch, kPlane, kDepthwise };

template <typename T>
ConvAlgorithm conv_algorithm(const ConvGeometry& g) {
  const char* forced = std::getenv("SPARSEKERN_CONV_ALGORITHM");
  if (forced != nullptr && std::strcmp(forced, "batch") == 0) return ConvAlgorithm::kBatch;
  if (forced != nullptr && std::strcmp(forced, "plane") == 0) return ConvAlgorithm::kPlane;
  if (depthwise_eligible<T>(g)) return ConvAlgorithm::kDepthwise;
  const int64_t pixels = g.oh * g.ow;
  if (pixels >= 64) return ConvAlgorithm::kPlane;
  const int64_t pitch = (g.w + 2 * g.pw + g.sw - 1) / g.sw;
  const int64_t span = round_up((g.oh - 1) * pitch + g.ow, Simd<T>::kLanes);
  return 5 * pixels >= 4 * span ? ConvAlgorithm::kPlane : ConvAlgorithm::kBatch;
}

// dst[j] = src[2j] for j < n, reading src[0 .. 2n − 2] only. Explicit shuffles: GCC's own vectorisation of the
// strided loop, on rows of 16-17 floats, left the stride-2 plane fill of a 64->128 3x3/s2 on 32x32 maps
// about 25% slower.
template <typename T>
inline void copy_every_other(const T* __restrict src, int64_t n, T* __restrict dst) {
  constexpr int64_t L = Simd<T>::kLanes;
  int64_t j = 0;
  for (; j + L <= n; j += L) Simd<T>::store(dst + j, Simd<T>::load_even(src + 2 * j));
  for (; j < n; ++j) dst[j] = src[2 * j];
}

// Copies sample x_n (C, H, W, contiguous) channels [c0, c1) into their stored phase planes (zero frame,
// zero tail) at planes + (c·phases + phase)·plane.
template <typename T>
void fill_input_planes(const T* x_n, const ConvGeometry& g, const PlaneGeometry& p, int64_t c0, int64_t c1,
                       T* planes) {
  for (int64_t c = c0; c < c1; ++c) {
    const T* image = x_n + c * g.h * g.w;
    for (int64_t a = 0; a < g.sh; ++a) {
      for (int64_t b = 0; b < g.sw; ++b) {
        const int64_t phase = p.phase_index[a * g.sw + b];
        if (phase < 0) continue;
        T* plane = planes + (c * p.phases + phase) * p.plane;
        // Plane column j holds image column j·sw + b − pw: the in-image ones are j in [j0, j1).
        const int64_t j0 = std::min(p.pitch, std::max<int64_t>(0, (g.pw - b + g.sw - 1) / g.sw));
        const int64_t j1 = std::max(j0, std::min(p.pitch, (g.w + g.pw - b + g.sw - 1) / g.sw));
        // Only the frame is zeroed (rows outside the image, the columns left and right of it, the tail past
        // the last row), not the whole plane first: one write per element instead of two.
        for (int64_t i = 0; i < p.rows; ++i) {
          const int64_t y = i * g.sh + a - g.ph;
          T* row = plane + i * p.pitch;
          if (y < 0 || y >= g.h || j1 == j0) {
            std::fill(row, row + p.pitch, T(0));
            continue;
          }
          std::fill(row, row + j0, T(0));
          std::fill(row + j1, row + p.pitch, T(0));
          const T* src = image + y * g.w + j0 * g.sw + b - g.pw;
          T* dst = row + j0;
          if (g.sw == 1) {
            std::memcpy(dst, src, sizeof(T) * (j1 - j0));
          } else if (g.sw == 2) {  // the common strided case: explicit shuffles (copy_every_other)
            copy_every_other(src, j1 - j0, dst);
          } else {
            for (int64_t j = 0; j < j1 - j0; ++j) dst[j] = src[j * g.sw];
          }
        }
        std::fill(plane + p.rows * p.pitch, plane + p.plane, T(0));
      }
    }
  }
}

// For every kept weight (CSR entry) of the forward layout: where it reads the sample's stored planes,
// relative to the output position (stored plane, then row and column). Shared by the forward and the
// weight gradient.
inline std::vector<int64_t> plane_read_offsets(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                                               const PlaneGeometry& p) {
  std::vector<int64_t> offs(offsets[g.c_out]);
  for (int64_t o = 0; o < g.c_out; ++o) {
    const int64_t channel0 = o / g.c_out_per_group() * g.c_in_per_group();
    for (int32_t e = offsets[o]; e < offsets[o + 1]; ++e) {
      const int64_t c = channel0 + cols[e] / g.taps(), t = cols[e] % g.taps();
      const PlaneGeometry::Tap tap = p.tap(g, t / g.kw, t % g.kw);
      offs[e] = (c * p.phases + tap.phase) * p.plane + tap.ia * p.pitch + tap.jb;
    }
  }
  return offs;
}

// How threads share a call: whole samples per thread (parts = threads, bounds = each part's sample range)
// when there are at least as many samples as threads; otherwise parts = 0 and each sample's channels are
// split across threads.
struct PlaneSchedule {
  int64_t parts;
  std::vector<int64_t> bounds;
};

inline PlaneSchedule plane_schedule(int64_t n) {
  const int64_t threads = at::get_num_threads();
  PlaneSchedule s;
  if (n < threads) {
    s.parts = 0;
    return s;
  }
  s.parts = threads;
  s.bounds.resize(threads + 1);
  for (int64_t t = 0; t <= threads; ++t) s.bounds[t] = n * t / threads;
  return s;
}

// Runs a plane kernel over every sample under schedule s: fill(n, c0, c1, planes) writes channels [c0, c1)
// of sample n's planes (planes_size elements per sample), then compute(n, o0, o1, planes, part) produces
// that sample's output channels [o0, o1). With whole samples per thread, part is the thread's part (for
// per-part results) and the planes are the thread's own scratch; otherwise part is -1, each sample is filled
// by all threads, then its channels are computed by all threads (disjoint ranges).
template <typename T, typename Tag, typename Fill, typename Compute>
void for_each_sample(const PlaneSchedule& s, int64_t n_samples, int64_t planes_size, int64_t fill_channels,
                     int64_t compute_channels, const Fill& fill, const Compute& compute) {
  if (s.parts > 0) {
    at::parallel_for(0, s.parts, 1, [&](int64_t part_begin, int64_t part_end) {
      T* planes = scratch_buffer<T, Tag>(planes_size);
      for (int64_t part = part_begin; part < part_end; ++part) {
        for (int64_t n = s.bounds[part]; n < s.bounds[part + 1]; ++n) {
          fill(n, int64_t{0}, fill_channels, planes);
          compute(n, int64_t{0}, compute_channels, planes, part);
        }
      }
    });
    return;
  }
  std::vector<T> planes(planes_size);
  for (int64_t n = 0; n < n_samples; ++n) {
    at::parallel_for(0, fill_channels, 1, [&](int64_t c0, int64_t c1) { fill(n, c0, c1, planes.data()); });
    at::parallel_for(0, compute_channels, 1,
                     [&](int64_t o0, int64_t o1) { compute(n, o0, o1, planes.data(), int64_t{-1}); });
  }
}

// Calls body(vectors, offset) over [0, span) (a whole number of vectors) in register chunks: 8 vectors while
// at least 16 remain, then the rest as one or two chunks of 4-8 (a span of 10 vectors is 5 + 5, not 8 + 1 + 1,
// whose single-vector chunks would each wait on one FMA chain). `vectors` is a std::integral_constant, so
// the body's register arrays have a compile-time size.
template <typename T, typename Body>
inline void for_each_plane_chunk(int64_t span, const Body& body) {
  constexpr int64_t L = Simd<T>::kLanes;
  int64_t f = 0, left = span / L;
  auto chunk = [&](int64_t vectors) {
    switch (vectors) {
      case 1: body(std::integral_constant<int, 1>{}, f); break;
      case 2: body(std::integral_constant<int, 2>{}, f); break;
      case 3: body(std::integral_constant<int, 3>{}, f); break;
      case 4: body(std::integral_constant<int, 4>{}, f); break;
      case 5: body(std::integral_constant<int, 5>{}, f); break;
      case 6: body(std::integral_constant<int, 6>{}, f); break;
      case 7: body(std::integral_constant<int, 7>{}, f); break;
      default: body(std::integral_constant<int, 8>{}, f); break;
    }
    f += vectors * L;
    left -= vectors;
  };
  while (left >= 16) chunk(8);
  if (left > 8) chunk((left + 1) / 2);
  if (left > 0) chunk(left);
}

// out[0, NV vectors) = init + Σ_{e in [begin, end)} values[e] · base[offs[e] + (0, NV vectors)]: the inner
// loop of the forward and of the input gradient. Narrow chunks take consecutive entries into K separate
// accumulator sets, so at least 4-8 independent FMA chains cover the FMA latency. Entries are summed in
// blocks of 32, each block's sum added to out: the rounding error grows with 32 + entries/32, not with the
// entry count (a 128-channel 3x3 input gradient sums 1,152 products per pixel).
template <typename T, int NV>
inline void accumulate_chunk(const T* __restrict values, const int64_t* __restrict offs, int64_t begin,
                             int64_t end, const T* __restrict base, T init, T* __restrict out) {
  using S = Simd<T>;
  using V = typename S::vec;
  constexpr int K = NV >= 5 ? 1 : NV >= 3 ? 2 : 4;
  constexpr int64_t kBlock = 32;
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) S::store(out + v * S::kLanes, S::broadcast(init));
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t block_end = std::min(end, block + kBlock);
    V acc[K][NV];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[k][v] = S::zero();
    }
    int64_t e = block;
    for (; e + K <= block_end; e += K) {
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) {
        const V w = S::broadcast(values[e + k]);
        const T* x = base + offs[e + k];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[k][v] += w * S::load(x + v * S::kLanes);
      }
    }
    for (; e < block_end; ++e) {
      const V w = S::broadcast(values[e]);
      const T* x = base + offs[e];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[0][v] += w * S::load(x + v * S::kLanes);
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      V sum = acc[0][v];
#pragma GCC unroll 4
      for (int k = 1; k < K; ++k) sum += acc[k][v];
      S::store(out + v * S::kLanes, S::load(out + v * S::kLanes) + sum);
    }
  }
}

// The plane kernels, called by the csr_conv2d* entry points when conv_algorithm() picks kPlane. Arguments
// as the entry points (already checked); x, grad NCHW contiguous.
template <typename T>
void plane_conv2d_forward(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                          const T* x, const T* bias, T* y);
template <typename T>
void plane_conv2d_input_grad(const T* values, const int32_t* t_offsets, const int32_t* t_rows,
                             const int64_t* t_perm, const ConvGeometry& g, const T* dy, T* dx);
template <typename T>
void plane_conv2d_weight_grad(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                              const T* x, T* out);

}  // namespace sparsekern
