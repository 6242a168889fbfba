// LaneSums<T>::store_sums(acc, count, first, out): out[k] (+)= the sum of acc[k]'s lanes, for a full register
// of accumulators (16 float / 8 double with AVX-512) at once.
//
// Summing one vector's lanes costs ~4 shuffles and 4 adds and leaves one scalar; summing a whole group by a
// transposing tree costs about the same per *group* level and leaves all the sums in one vector, in order.
// Float (16 accumulators, lanes of 128 bits = 4 floats):
//   1. unpack{lo,hi}_ps of pairs, added     -> per lane: partial sums of entries 2p, 2p+1 (interleaved)
//   2. unpack{lo,hi}_pd of those, added     -> lane L of s2[q] = lane-L sums of entries 4q..4q+3
//   3. shuffle_f32x4 0x44 + 0xEE            -> lanes {0+2, 1+3} of two s2's side by side
//   4. shuffle_f32x4 0x88 + 0xDD            -> [entries 0-3 | 4-7 | 8-11 | 12-15]
// Double (8 accumulators, 2 per lane) needs only levels 1, 3 and 4.
// AVX2 (8 float / 4 double accumulators) does the same with horizontal adds: two levels of hadd leave the
// sums of each 128-bit half, one cross-half permute and add finishes them (9 instructions for 8 floats,
// against ~5 per vector one by one).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>

// GCC 12 reports the deliberately undefined pass-through operand inside the unpack/shuffle intrinsics as
// -W(maybe-)uninitialized; the instructions have no pass-through, so the warning is noise.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace sparsekern {

template <typename T>
struct LaneSums;

template <>
struct LaneSums<float> {
  using vec = __m512;
  using mask = __mmask16;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec load(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline mask first_lanes(int64_t n) { return static_cast<mask>((1u << n) - 1u); }

  static inline vec sums(const vec* acc) {
    vec s1[8], s2[4];
    for (int p = 0; p < 8; ++p) {
      s1[p] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * p], acc[2 * p + 1]),
                            _mm512_unpackhi_ps(acc[2 * p], acc[2 * p + 1]));
    }
    for (int q = 0; q < 4; ++q) {
      const __m512d x = _mm512_castps_pd(s1[2 * q]), y = _mm512_castps_pd(s1[2 * q + 1]);
      s2[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const vec t0 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], 0x44), _mm512_shuffle_f32x4(s2[0], s2[1], 0xEE));
    const vec t1 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2], s2[3], 0x44), _mm512_shuffle_f32x4(s2[2], s2[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(t0, t1, 0x88), _mm512_shuffle_f32x4(t0, t1, 0xDD));
  }

  static inline void store_sums(const vec* acc, int count, bool first, float* out) {
    const mask m = first_lanes(count);
    vec s = sums(acc);
    if (!first) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, out));
    _mm512_mask_storeu_ps(out, m, s);
  }
};

template <>
struct LaneSums<double> {
  using vec = __m512d;
  using mask = __mmask8;
  static inline vec zero() { return _mm512_setzero_pd(); }
  static inline vec load(const double* p) { return _mm512_loadu_pd(p); }
  static inline vec load(const double* p, mask m) { return _mm512_maskz_loadu_pd(m, p); }
  static inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_pd(a, b, c); }
  static inline mask first_lanes(int64_t n) { return static_cast<mask>((1u << n) - 1u); }

  static inline vec sums(const vec* acc) {
    vec s1[4];
    for (int p = 0; p < 4; ++p) {
      s1[p] = _mm512_add_pd(_mm512_unpacklo_pd(acc[2 * p], acc[2 * p + 1]),
                            _mm512_unpackhi_pd(acc[2 * p], acc[2 * p + 1]));
    }
    const vec t0 = _mm512_add_pd(_mm512_shuffle_f64x2(s1[0], s1[1], 0x44), _mm512_shuffle_f64x2(s1[0], s1[1], 0xEE));
    const vec t1 = _mm512_add_pd(_mm512_shuffle_f64x2(s1[2], s1[3], 0x44), _mm512_shuffle_f64x2(s1[2], s1[3], 0xEE));
    return _mm512_add_pd(_mm512_shuffle_f64x2(t0, t1, 0x88), _mm512_shuffle_f64x2(t0, t1, 0xDD));
  }

  static inline void store_sums(const vec* acc, int count, bool first, double* out) {
    const mask m = first_lanes(count);
    vec s = sums(acc);
    if (!first) s = _mm512_add_pd(s, _mm512_maskz_loadu_pd(m, out));
    _mm512_mask_storeu_pd(out, m, s);
  }
};

}  // namespace sparsekern

#endif  // __AVX512F__

namespace sparsekern {

// sums[k] = the sum of acc[k]'s lanes for k < Simd<T>::kLanes: one transposing tree with AVX-512 or AVX2,
// lane by lane elsewhere.
template <typename T>
inline void all_lane_sums(const typename Simd<T>::vec* acc, T* sums) {
  constexpr int G = static_cast<int>(Simd<T>::kLanes);
#if defined(__AVX512F__)
  using L = LaneSums<T>;
  typename L::vec v[G];
  for (int k = 0; k < G; ++k) v[k] = reinterpret_cast<const typename L::vec&>(acc[k]);
  const typename L::vec s = L::sums(v);
  std::memcpy(sums, &s, sizeof(s));
  return;
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float> && G == 8) {
    __m256 a[8];
    std::memcpy(a, acc, sizeof(a));
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // [0-3 low halves | 0-3 high]
    const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(sums, s);
    return;
  } else if constexpr (std::is_same_v<T, double> && G == 4) {
    __m256d a[4];
    std::memcpy(a, acc, sizeof(a));
    const __m256d t0 = _mm256_hadd_pd(a[0], a[1]), t1 = _mm256_hadd_pd(a[2], a[3]);
    const __m256d s = _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20), _mm256_permute2f128_pd(t0, t1, 0x31));
    _mm256_storeu_pd(sums, s);
    return;
  }
#endif
  for (int k = 0; k < G; ++k) sums[k] = Simd<T>::sum(acc[k]);
}

// sums[k] = the sum of acc[k]'s lanes for k < G, for a group of G accumulators that may be smaller than a
// register's lanes: the fused CSR backward keeps G = 4 with AVX2 (16 vector registers) so its accumulators do
// not spill (csr_spmm_sddmm.cpp). For 4 AVX2 floats: two levels of hadd, then the two 128-bit halves added.
template <typename T, int G>
inline void group_lane_sums(const typename Simd<T>::vec* acc, T* sums) {
  if constexpr (G == static_cast<int>(Simd<T>::kLanes)) {
    all_lane_sums<T>(acc, sums);
    return;
  }
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && G == 4) {
    __m256 a[4];
    std::memcpy(a, acc, sizeof(a));
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_storeu_ps(sums, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
    return;
  }
#endif
  for (int k = 0; k < G; ++k) sums[k] = Simd<T>::sum(acc[k]);
}

}  // namespace sparsekern
