// Software prefetch of the dense slices that the CSR kernels' upcoming entries will read.
//
// Each stored entry reads a batch-chunk slice of a feature-major operand at a random row, from L2. The
// hardware prefetchers cannot guess those rows, so every slice is a demand miss, and in the fused backward
// (eight FMAs per slice vector) the instructions waiting on those misses fill the FP scheduler and stall
// issue. Requesting the slice of the entry `distance` positions ahead hides that latency: measured on the
// AVX2 Zen 3 (2048x2048, batch 256, 2 threads, interleaved in one process), the fused backward ran 12-20%
// faster at 90-98% sparsity with distances 8-16, and slower from 32 on. The plain SpMM (four FMAs per
// slice vector, bound by L2 bandwidth) gained nothing from it, so it does not prefetch.
#pragma once

#include <cstdint>

namespace sparsekern {

constexpr int64_t kPrefetchDistance = 8;  // entries ahead

// Prefetches the `bytes` bytes at slab + cols[i] * ld, if entry i exists (i < limit).
template <typename T, int64_t kBytes>
inline void prefetch_slice(const T* slab, const int32_t* cols, int64_t i, int64_t limit, int64_t ld) {
  if (i >= limit) return;
  const char* p = reinterpret_cast<const char*>(slab + static_cast<int64_t>(cols[i]) * ld);
#pragma GCC unroll 4
  for (int64_t line = 0; line < kBytes; line += 64) __builtin_prefetch(p + line);
}

}  // namespace sparsekern
