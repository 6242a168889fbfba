// plane_conv2d_weight_grad: dW of y = conv2d(x, W) at the kept weights only (SDDMM), vectorised over each
// sample's flattened output plane (conv_plane.h). dW[e] = Σ_n Σ_f dy_grid[n][o][f] · planes_n[off_e + f]:
// dy laid out on the forward's output grid (zero in the discarded columns, so they add nothing) against
// the input plane at the kept weight's offset, as in the forward. Work is kept weights × plane positions
// per sample; pruned weights get no work and no storage.
//
// Per sample and output channel, dy's grid row is copied to scratch (L1), then each register chunk of it
// is dotted with every kept weight's input run; the per-(sample, channel) sums are added to the totals,
// so float32 error grows with the plane size plus the batch, not their product.
// Threads split the batch, each with totals of its own, added in a fixed order at the end (the result
// does not depend on scheduling); below one sample per thread they split the output channels instead.
#include <ATen/ATen.h>

#include <vector>

#include "conv_plane.h"
#include "lane_sums.h"
#include "scratch.h"

namespace sparsekern {
namespace {

struct WeightGradPlanesTag {};
struct WeightGradGridTag {};
struct WeightGradSumsTag {};

template <typename T, int NV>
inline void dot_chunk(const T* __restrict grid, const int64_t* __restrict offs, int64_t count,
                      const T* __restrict planes, typename Simd<T>::vec* __restrict sums) {
  using S = Simd<T>;
  using V = typename S::vec;
  V d[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) d[v] = S::load(grid + v * S::kLanes);
  for (int64_t e = 0; e < count; ++e) {
    const T* x = planes + offs[e];
    V s0 = d[0] * S::load(x), s1 = S::zero();
#pragma GCC unroll 8
    for (int v = 1; v < NV; ++v) {
      if (v % 2) {
        s1 += d[v] * S::load(x + v * S::kLanes);
      } else {
        s0 += d[v] * S::load(x + v * S::kLanes);
      }
    }
    sums[e] += s0 + s1;
  }
}

// Output channels [o0, o1) of one sample: adds that sample's dW at each kept weight e of them to
// totals[e − offsets[o0]] (totals_v: vectors, lanes added at the very end; else scalars).
template <typename T>
void weight_grad_channels(const int32_t* offsets, const int64_t* offs, const ConvGeometry& g,
                          const PlaneGeometry& p, const T* planes, const T* dy_n, int64_t o0, int64_t o1,
                          T* totals, typename Simd<T>::vec* totals_v) {
  using S = Simd<T>;
  using V = typename S::vec;
  T* grid = scratch_buffer<T, WeightGradGridTag>(p.span);
  int64_t widest = 0;
  for (int64_t o = o0; o < o1; ++o) widest = std::max<int64_t>(widest, offsets[o + 1] - offsets[o]);
  V* sums = scratch_buffer<V, WeightGradSumsTag>(widest);
  std::fill(grid, grid + p.span, T(0));
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t first = offsets[o], count = offsets[o + 1] - first;
    if (count == 0) continue;
    for (int64_t r = 0; r < g.oh; ++r)
      std::memcpy(grid + r * p.pitch, dy_n + (o * g.oh + r) * g.ow, sizeof(T) * g.ow);
    std::fill(sums, sums + count, S::zero());
    for_each_plane_chunk<T>(p.span, [&](auto vectors, int64_t f) {
      dot_chunk<T, decltype(vectors)::value>(grid + f, offs + first, count, planes + f, sums);
    });
    const int64_t at = first - offsets[o0];
    if (totals_v != nullptr) {
      for (int64_t e = 0; e < count; ++e) totals_v[at + e] += sums[e];
    } else {
      // A register's worth of lane sums at once (lane_sums.h): on a 4x4 map a lane sum per kept weight per
      // sample costs about as much as the short dot product it finishes (11% of this op at 512 channels, 95%).
      constexpr int64_t L = S::kLanes;
      int64_t e = 0;
      for (; e + L <= count; e += L) {
        T lane_sums[L];
        all_lane_sums<T>(sums + e, lane_sums);
        for (int64_t j = 0; j < L; ++j) totals[at + e + j] += lane_sums[j];
      }
      for (; e < count; ++e) totals[at + e] += S::sum(sums[e]);
    }
  }
}

}  // namespace

template <typename T>
void plane_conv2d_weight_grad(const int32_t* offsets, const int32_t* cols, const ConvGeometry& g, const T* dy,
                              const T* x, T* out) {
  const PlaneGeometry p = plane_geometry<T>(g);
  const int64_t nnz = offsets[g.c_out];
  const std::vector<int64_t> offs = plane_read_offsets(offsets, cols, g, p);
  const int64_t sample_in = g.c_in * g.h * g.w, sample_out = g.c_out * g.oh * g.ow;
  const PlaneSchedule s = plane_schedule(g.n);
  // Whole samples per thread: each part's totals, added in part order at the end (so the result does not
  // depend on scheduling); vectors while they stay small (one horizontal sum per kept weight per part, not
  // per sample: on an 8x8 map those sums cost as much as the dot products), else scalars. Channels split
  // across threads: each thread's kept weights are its own, summed straight into out.
  using V = typename Simd<T>::vec;
  const int64_t parts = s.parts;
  const bool vector_totals = parts > 0 && nnz * static_cast<int64_t>(sizeof(V)) <= (int64_t{2} << 20);
  std::vector<T> part_totals(parts > 0 && !vector_totals ? parts * nnz : 0, T(0));
  std::vector<V> part_totals_v(vector_totals ? parts * nnz : 0, Simd<T>::zero());
  std::fill(out, out + nnz, T(0));
  for_each_sample<T, WeightGradPlanesTag>(
      s, g.n, g.c_in * p.phases * p.plane, g.c_in, g.c_out,
      [&](int64_t n, int64_t c0, int64_t c1, T* planes) { fill_input_planes(x + n * sample_in, g, p, c0, c1, planes); },
      [&](int64_t n, int64_t o0, int64_t o1, const T* planes, int64_t part) {
        T* totals = part < 0 ? out + offsets[o0] : vector_totals ? nullptr : part_totals.data() + part * nnz;
        V* totals_v = part >= 0 && vector_totals ? part_totals_v.data() + part * nnz : nullptr;
        weight_grad_channels(offsets, offs.data(), g, p, planes, dy + n * sample_out, o0, o1, totals, totals_v);
      });
  for (int64_t part = 0; part < parts; ++part) {
    for (int64_t e = 0; e < nnz; ++e)
      out[e] += vector_totals ? Simd<T>::sum(part_totals_v[part * nnz + e]) : part_totals[part * nnz + e];
  }
}

template void plane_conv2d_weight_grad<float>(const int32_t*, const int32_t*, const ConvGeometry&, const float*,
                                              const float*, float*);
template void plane_conv2d_weight_grad<double>(const int32_t*, const int32_t*, const ConvGeometry&,
                                               const double*, const double*, double*);

}  // namespace sparsekern
