// Portable SIMD vectors: GCC/Clang vector extensions, as wide as the target's widest registers.
//
// Why not intrinsics: the same source compiles for AVX-512 (a -march=native source install), AVX2, or the
// x86-64 baseline (SPARSEKERN_PORTABLE=1 wheels) and other architectures; the compiler lowers each vector
// operation to the target's instructions. Why not plain loops: named vector accumulators are guaranteed
// to live in registers, where auto-vectorised arrays were spilled to the stack on every iteration.
#pragma once

#include <cstdint>
#include <cstring>

namespace sparsekern {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kLanes = kVectorBytes / sizeof(T);

  static inline vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));  // unaligned load; compiles to one vector move
    return v;
  }
  static inline void store(T* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
  static inline vec broadcast(T x) { return vec{} + x; }
  static inline vec zero() { return vec{}; }
  static inline T sum(vec v) {
    T s = 0;
    for (int64_t i = 0; i < kLanes; ++i) s += v[i];
    return s;
  }
};

}  // namespace sparsekern
