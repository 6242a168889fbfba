// Portable SIMD vectors: GCC/Clang vector extensions, as wide as the target's widest registers.
//
// Why not intrinsics: the same source compiles for AVX-512 (a -march=native source install), AVX2, or the
// x86-64 baseline (SPARSEKERN_PORTABLE=1 wheels) and other architectures; the compiler lowers each vector
// operation to the target's instructions. Why not plain loops: named vector accumulators are guaranteed
// to live in registers, where auto-vectorised arrays were spilled to the stack on every iteration.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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
  // {p[0], p[2], ..., p[2·(kLanes − 1)]}, reading p[0 .. 2·kLanes − 2] only (so a row's last wanted element
  // may be the last readable one): two loads, the second one element early, and one two-input shuffle.
  static inline vec load_even(const T* p) {
    const vec a = load(p), b = load(p + kLanes - 1);
#if defined(__GNUC__) && !defined(__clang__)
    typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
    typedef I index_vec __attribute__((vector_size(kVectorBytes)));
    index_vec m;  // lanes k < kLanes/2 take a[2k]; the others b[2k + 1 − kLanes], i.e. p[2k]
    for (int64_t k = 0; k < kLanes; ++k) m[k] = static_cast<I>(k < kLanes / 2 ? 2 * k : 2 * k + 1);
    return __builtin_shuffle(a, b, m);
#else
    vec v;
    for (int64_t k = 0; k < kLanes; ++k) v[k] = k < kLanes / 2 ? a[2 * k] : b[2 * k + 1 - kLanes];
    return v;
#endif
  }
  static inline T sum(vec v) {
    T s = 0;
    for (int64_t i = 0; i < kLanes; ++i) s += v[i];
    return s;
  }
};

}  // namespace sparsekern
