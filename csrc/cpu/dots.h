// Dot products of one row `a` with a group of rows, shared by the SDDMM kernels (CSR and BSR).
//
// dot_group(a, rows, count, n, first, out): out[k] = (first ? 0 : out[k]) + a · rows[k] over n elements,
// for k < count <= kDotGroup<T>. With AVX-512 one vector accumulator per row (16 float / 8 double rows):
// each vector load of `a` feeds a whole group of FMAs, and the group's accumulators are summed together by
// a transposing reduction tree (lane_sums.h), ~3 shuffle/add ops per row instead of a ~16-op horizontal
// sum each. A partial group repeats its first row in the unused slots and stores only `count` results.
// Other targets fall back to four rows at a time with per-row horizontal sums.
#pragma once

#include <cstdint>

#include "lane_sums.h"
#include "simd.h"

namespace sparsekern {

template <typename T>
constexpr int kDotGroup = static_cast<int>(Simd<T>::kLanes);

// s[k] = a · b_k for four rows b_0..b_3 at once: each vector load of a feeds four FMAs into four independent
// vector accumulators; one horizontal sum per row at the end.
template <typename T>
inline void dot4(const T* __restrict a, const T* __restrict b0, const T* __restrict b1, const T* __restrict b2,
                 const T* __restrict b3, int64_t n, T* s) {
  using S = Simd<T>;
  typename S::vec v0 = S::zero(), v1 = S::zero(), v2 = S::zero(), v3 = S::zero();
  int64_t j = 0;
  for (; j + S::kLanes <= n; j += S::kLanes) {
    const auto x = S::load(a + j);
    v0 += x * S::load(b0 + j);
    v1 += x * S::load(b1 + j);
    v2 += x * S::load(b2 + j);
    v3 += x * S::load(b3 + j);
  }
  T s0 = S::sum(v0), s1 = S::sum(v1), s2 = S::sum(v2), s3 = S::sum(v3);
  for (; j < n; ++j) {
    s0 += a[j] * b0[j], s1 += a[j] * b1[j], s2 += a[j] * b2[j], s3 += a[j] * b3[j];
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

template <typename T>
inline T dot1(const T* __restrict a, const T* __restrict b, int64_t n) {
  using S = Simd<T>;
  typename S::vec v = S::zero();
  int64_t j = 0;
  for (; j + S::kLanes <= n; j += S::kLanes) v += S::load(a + j) * S::load(b + j);
  T s = S::sum(v);
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// The portable path: four rows at a time, then one at a time.
template <typename T>
inline void dots_by_four(const T* a, const T* const* rows, int64_t count, int64_t n, bool first, T* out) {
  int64_t k = 0;
  T s[4];
  for (; k + 3 < count; k += 4) {
    dot4(a, rows[k], rows[k + 1], rows[k + 2], rows[k + 3], n, s);
    for (int q = 0; q < 4; ++q) out[k + q] = first ? s[q] : out[k + q] + s[q];
  }
  for (; k < count; ++k) {
    const T d = dot1(a, rows[k], n);
    out[k] = first ? d : out[k] + d;
  }
}

#if defined(__AVX512F__)

template <typename T>
inline void dot_group(const T* __restrict a, const T* const* rows, int count, int64_t n, bool first, T* out) {
  using L = LaneSums<T>;
  constexpr int G = kDotGroup<T>;
  typename L::vec acc[G];
  const T* p[G];
#pragma GCC unroll 16
  for (int k = 0; k < G; ++k) {
    acc[k] = L::zero();
    p[k] = rows[k < count ? k : 0];
  }
  int64_t j = 0;
  for (; j + G <= n; j += G) {
    const auto av = L::load(a + j);
#pragma GCC unroll 16
    for (int k = 0; k < G; ++k) acc[k] = L::fma(av, L::load(p[k] + j), acc[k]);
  }
  if (j < n) {
    const auto m = L::first_lanes(n - j);
    const auto av = L::load(a + j, m);
#pragma GCC unroll 16
    for (int k = 0; k < G; ++k) acc[k] = L::fma(av, L::load(p[k] + j, m), acc[k]);
  }
  L::store_sums(acc, count, first, out);
}

#else

template <typename T>
inline void dot_group(const T* a, const T* const* rows, int count, int64_t n, bool first, T* out) {
  dots_by_four(a, rows, count, n, first, out);
}

#endif

}  // namespace sparsekern
