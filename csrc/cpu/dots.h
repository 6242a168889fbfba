// Dot products over a batch chunk, shared by the SDDMM kernels (CSR and BSR).
#pragma once

#include <cstdint>

namespace sparsekern {

// s[k] = a · b_k for four rows b_0..b_3 at once: each load of a[j] feeds four FMAs, and the four
// reductions are independent chains, so the loop runs near FMA throughput instead of load or latency bound.
template <typename T>
inline void dot4(const T* __restrict a, const T* __restrict b0, const T* __restrict b1, const T* __restrict b2,
                 const T* __restrict b3, int64_t n, T* s) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t j = 0; j < n; ++j) {
    const T x = a[j];
    s0 += x * b0[j];
    s1 += x * b1[j];
    s2 += x * b2[j];
    s3 += x * b3[j];
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

template <typename T>
inline T dot1(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

// out[k] = (first ? 0 : out[k]) + a · rows[k] for k < count, four at a time.
template <typename T>
inline void dots_into(const T* a, const T* const* rows, int64_t count, int64_t n, bool first, T* out) {
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

}  // namespace sparsekern
