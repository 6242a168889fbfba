// Square register-block transposes: TransposeBlock<T>::run<kBias>(src, lds, dst, ldd, bias) writes
// dst[j * ldd + i] = src[i * lds + j] (+ bias[i] when kBias) for a kSize x kSize block: 16x16 float and 8x8
// double with AVX-512, 8x8 float and 4x4 double with AVX2.
// kSize is 0 where no such block exists (other targets): callers then take a scalar path.
//
// AVX-512 float, in four shuffle stages (each output row c = 4L + k gathers lane L of four stage-2 vectors):
//   1. unpack{lo,hi}_ps of row pairs      -> 2x2 blocks of 32-bit elements per 128-bit lane
//   2. unpack{lo,hi}_pd of those          -> lane L of u[4g + k] holds rows 4g..4g+3 at column 4L + k
//   3. shuffle_f32x4 0x44 / 0xEE          -> lanes {0,1} / {2,3} of u[k], u[4+k] (and of u[8+k], u[12+k])
//   4. shuffle_f32x4 0x88 / 0xDD          -> [u[k].L, u[4+k].L, u[8+k].L, u[12+k].L] = output row 4L + k
// Double skips stage 2: after stage 1, lane L of t[2g + k] holds rows 2g, 2g+1 at column 2L + k.
//
// AVX2 float, in three stages (each 128-bit lane L of a 256-bit vector holds columns 4L..4L+3):
//   1. unpack{lo,hi}_ps of row pairs      -> per lane, rows 2g, 2g+1 at columns {0,1} / {2,3} of the lane
//   2. shuffle_ps 0x44 / 0xEE of those    -> s[4h + k]: rows 4h..4h+3 at column 4L + k, in lane L
//   3. permute2f128 0x20 / 0x31           -> lane 0 / lane 1 of s[k] and s[4 + k]: output rows k and 4 + k
// Double: unpack{lo,hi}_pd of row pairs, then permute2f128 as in stage 3.
// A block row is half a cache line with AVX2, so transpose_rows stacks two blocks per tile
// (blocks_per_tile<T>()): each destination row gets 64 contiguous bytes per tile, a whole line when the
// destination is line-aligned.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
// GCC 12 reports the deliberately undefined pass-through operand inside the AVX-512 unpack/shuffle
// intrinsics as -W(maybe-)uninitialized; the instructions have no pass-through, so the warning is noise.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace sparsekern {

template <typename T>
struct TransposeBlock {
  static constexpr int64_t kSize = 0;
  template <bool kBias>
  static void run(const T*, int64_t, T*, int64_t, const T*) {}
};

#if defined(__AVX512F__)

template <>
struct TransposeBlock<float> {
  static constexpr int64_t kSize = 16;
  template <bool kBias>
  static inline void run(const float* src, int64_t lds, float* dst, int64_t ldd, const float* bias) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // u[4g + k]: rows 4g..4g+3, column 4L + k, from t[4g], t[4g+2] (k = 0, 1) and t[4g+1], t[4g+3] (k = 2, 3).
    for (int g = 0; g < 4; ++g) {
      const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
      const __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
      r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
      r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // Every output row holds src rows 0..15 at one column: bias[0..15] is one vector for all of them.
    const __m512 b = kBias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const auto put = [&](int row, __m512 v) { _mm512_storeu_ps(dst + row * ldd, kBias ? _mm512_add_ps(v, b) : v); };
    for (int k = 0; k < 4; ++k) {
      const __m512 v_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
      const __m512 w_lo = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
      const __m512 v_hi = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
      const __m512 w_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
      put(0 + k, _mm512_shuffle_f32x4(v_lo, w_lo, 0x88));
      put(4 + k, _mm512_shuffle_f32x4(v_lo, w_lo, 0xDD));
      put(8 + k, _mm512_shuffle_f32x4(v_hi, w_hi, 0x88));
      put(12 + k, _mm512_shuffle_f32x4(v_hi, w_hi, 0xDD));
    }
  }
};

template <>
struct TransposeBlock<double> {
  static constexpr int64_t kSize = 8;
  template <bool kBias>
  static inline void run(const double* src, int64_t lds, double* dst, int64_t ldd, const double* bias) {
    __m512d r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
    const __m512d b = kBias ? _mm512_loadu_pd(bias) : _mm512_setzero_pd();
    const auto put = [&](int row, __m512d v) { _mm512_storeu_pd(dst + row * ldd, kBias ? _mm512_add_pd(v, b) : v); };
    for (int k = 0; k < 2; ++k) {
      const __m512d v_lo = _mm512_shuffle_f64x2(t[k], t[2 + k], 0x44);
      const __m512d w_lo = _mm512_shuffle_f64x2(t[4 + k], t[6 + k], 0x44);
      const __m512d v_hi = _mm512_shuffle_f64x2(t[k], t[2 + k], 0xEE);
      const __m512d w_hi = _mm512_shuffle_f64x2(t[4 + k], t[6 + k], 0xEE);
      put(0 + k, _mm512_shuffle_f64x2(v_lo, w_lo, 0x88));
      put(2 + k, _mm512_shuffle_f64x2(v_lo, w_lo, 0xDD));
      put(4 + k, _mm512_shuffle_f64x2(v_hi, w_hi, 0x88));
      put(6 + k, _mm512_shuffle_f64x2(v_hi, w_hi, 0xDD));
    }
  }
};

#elif defined(__AVX2__)

template <>
struct TransposeBlock<float> {
  static constexpr int64_t kSize = 8;
  template <bool kBias>
  static inline void run(const float* src, int64_t lds, float* dst, int64_t ldd, const float* bias) {
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // rows i, i+1 at columns 0, 1 (and 4, 5)
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // rows i, i+1 at columns 2, 3 (and 6, 7)
    }
    for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3 from t[4h..4h+3]
      s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
      s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    const __m256 b = kBias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const auto put = [&](int row, __m256 v) { _mm256_storeu_ps(dst + row * ldd, kBias ? _mm256_add_ps(v, b) : v); };
    for (int k = 0; k < 4; ++k) {
      put(k, _mm256_permute2f128_ps(s[k], s[4 + k], 0x20));
      put(4 + k, _mm256_permute2f128_ps(s[k], s[4 + k], 0x31));
    }
  }
};

template <>
struct TransposeBlock<double> {
  static constexpr int64_t kSize = 4;
  template <bool kBias>
  static inline void run(const double* src, int64_t lds, double* dst, int64_t ldd, const double* bias) {
    __m256d r[4], t[4];
    for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + i * lds);
    for (int i = 0; i < 4; i += 2) {
      t[i] = _mm256_unpacklo_pd(r[i], r[i + 1]);      // rows i, i+1 at columns 0 (and 2)
      t[i + 1] = _mm256_unpackhi_pd(r[i], r[i + 1]);  // rows i, i+1 at columns 1 (and 3)
    }
    const __m256d b = kBias ? _mm256_loadu_pd(bias) : _mm256_setzero_pd();
    const auto put = [&](int row, __m256d v) { _mm256_storeu_pd(dst + row * ldd, kBias ? _mm256_add_pd(v, b) : v); };
    for (int k = 0; k < 2; ++k) {
      put(k, _mm256_permute2f128_pd(t[k], t[2 + k], 0x20));
      put(2 + k, _mm256_permute2f128_pd(t[k], t[2 + k], 0x31));
    }
  }
};

#endif  // __AVX512F__ / __AVX2__

// Register blocks stacked along the rows of one tile, so each destination row segment a tile writes is 64
// contiguous bytes, a whole line when the destination is line-aligned (one block with AVX-512, two with AVX2).
template <typename T>
constexpr int64_t blocks_per_tile() {
  constexpr int64_t K = TransposeBlock<T>::kSize;
  return K == 0 ? 1 : std::max<int64_t>(1, 64 / (K * static_cast<int64_t>(sizeof(T))));
}

// Rows [i0, i1) of x (row_stride, col_stride; `cols` columns) into columns [i0, i1) of out:
// out[j * out_ld + i] = x[i * row_stride + j * col_stride] (+ bias[i]). Serial; callers split the rows.
template <typename T, bool kBias>
inline void transpose_rows(const T* __restrict x, int64_t i0, int64_t i1, int64_t cols, int64_t row_stride,
                           int64_t col_stride, T* __restrict out, int64_t out_ld, const T* __restrict bias) {
  constexpr int64_t K = TransposeBlock<T>::kSize;  // 0 where no register transpose exists
  constexpr int64_t kScalarTile = 32;  // columns (and, without register blocks, rows) per scalar tile
  constexpr int64_t kTile = K > 0 ? K * blocks_per_tile<T>() : kScalarTile;
  const auto scalar = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t j = c0; j < c1; ++j) {
      for (int64_t i = r0; i < r1; ++i) {
        const T v = x[i * row_stride + j * col_stride];
        out[j * out_ld + i] = kBias ? v + bias[i] : v;
      }
    }
  };
  for (int64_t t0 = i0; t0 < i1; t0 += kTile) {
    const int64_t t1 = std::min(i1, t0 + kTile);
    // Whole register blocks of this tile's rows (none without a register transpose or with strided columns).
    const int64_t blocks = (K > 0 && col_stride == 1) ? (t1 - t0) / std::max<int64_t>(K, 1) : 0;
    int64_t j0 = 0;
    if (blocks > 0) {
      for (; j0 + K <= cols; j0 += K) {
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t r = t0 + b * K;
          TransposeBlock<T>::template run<kBias>(x + r * row_stride + j0, row_stride, out + j0 * out_ld + r, out_ld,
                                                 kBias ? bias + r : nullptr);
        }
      }
      scalar(t0 + blocks * K, t1, 0, j0);  // rows below the last whole block
    }
    for (int64_t c0 = j0; c0 < cols; c0 += kScalarTile) {  // edges, strided columns, other targets
      scalar(t0, t1, c0, std::min(cols, c0 + kScalarTile));
    }
  }
}

}  // namespace sparsekern
