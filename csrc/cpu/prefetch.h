// Software prefetch of the dense slices that a sparse kernel's upcoming entries will read.
//
// Each stored entry reads a batch slice of a feature-major or batch-innermost operand at an offset given by
// its column: random rows, from L2, that the hardware prefetchers cannot guess. Where the instructions
// waiting on those misses fill the scheduler and stall issue, requesting the slice of the entry
// kPrefetchDistance positions ahead hides the latency. Measured on the AVX2 Zen 3 (2 threads, interleaved
// A/B in one process; distances 4-32 tried, 8-16 best, 32 slower):
//   - fused CSR backward (csr_spmm_sddmm.cpp), 2048x2048, batch 256: 12-20% faster at 90-98%;
//   - batch conv forward and weight gradient (conv2d_forward.cpp, conv2d_weight_grad.cpp), 512->512 3x3 on
//     4x4 maps, batch 64: forward 14-16%, and with the weight gradient's, forward+backward 5-10% at 95-98%;
//     256->512/s2 on 8x8: 2-4%.
// Where it did not pay it is left out: the plain CSR SpMM (bound by L2 bandwidth: 9-14% slower), the batch
// conv input gradient (5-10% slower: its entries are split into short runs per tap) and the plane conv
// forward (slower: its reads are contiguous runs the hardware prefetcher follows).
#pragma once

#include <cstdint>

namespace sparsekern {

constexpr int64_t kPrefetchDistance = 8;  // entries ahead

// Prefetches every cache line that holds one of the kBytes bytes from p: kBytes / 64 lines from p, and the
// line of its last byte (a line more when p is not line-aligned; a duplicate request otherwise).
template <int64_t kBytes>
inline void prefetch_bytes(const void* p) {
  const char* c = static_cast<const char*>(p);
#pragma GCC unroll 8
  for (int64_t line = 0; line < kBytes; line += 64) __builtin_prefetch(c + line);
  __builtin_prefetch(c + kBytes - 1);
}

// The entry to prefetch for entry i: i + kPrefetchDistance, clamped to the last entry (end - 1, end >= 1).
// Clamped, not skipped: GCC 12 silently dropped the prefetches from the fused kernel when they sat behind
// an `if` (the objects held no prefetch instruction at all), so callers prefetch unconditionally.
inline int64_t prefetch_entry(int64_t i, int64_t end) {
  const int64_t ahead = i + kPrefetchDistance;
  return ahead < end ? ahead : end - 1;
}

// Prefetches the kBytes bytes at slab + cols[j] * ld for the entry j that entry i prefetches (end >= 1).
template <typename T, int64_t kBytes>
inline void prefetch_slice(const T* slab, const int32_t* cols, int64_t i, int64_t end, int64_t ld) {
  prefetch_bytes<kBytes>(slab + static_cast<int64_t>(cols[prefetch_entry(i, end)]) * ld);
}

}  // namespace sparsekern
