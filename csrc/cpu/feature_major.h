// Feature-major operands (features, batch): the row stride transpose() gives them, and how kernels read them.
//
// The CSR kernels read one batch-chunk slice (64 floats) per stored entry from a random row. With a row
// stride that is a multiple of a large power of two (1 KB for a batch of 256 floats) those slices fall into
// a fraction of the cache sets and an L2-sized slab thrashes, so the kernels first pack such operands into
// contiguous chunks (packing.h): one more pass over the operand per call. A stride of an odd number of
// cache lines spreads consecutive rows over all sets instead, so for batches of 257 B to 1 KB per row
// transpose() pads each row to an odd number of lines and the kernels read the slices in place.
// Measured (2048x2048 CSR SpMM, 2 threads): 1.2-1.3x faster at 98% sparsity for batch 128 and 256 floats,
// the same at 90%. Wider rows stay contiguous and packed: read in place they span too many pages
// (0.4-0.8x at batch 1024-2048).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace sparsekern {

constexpr int64_t kCacheLineBytes = 64;

// Row stride (elements) of transpose()'s (features, batch) output; sparsekern/_ops.py has the same rule.
inline int64_t feature_major_stride(int64_t batch, int64_t element_size) {
  const int64_t bytes = batch * element_size;
  if (bytes <= 4 * kCacheLineBytes || bytes > 16 * kCacheLineBytes) return batch;
  int64_t lines = (bytes + kCacheLineBytes - 1) / kCacheLineBytes;
  if (lines % 2 == 0) ++lines;
  return lines * kCacheLineBytes / element_size;
}

// A (features, batch) operand as the kernels read it: the tensor itself when it is contiguous or laid out
// by transpose() (ld = its row stride), else a contiguous copy.
struct FeatureMajor {
  at::Tensor tensor;
  int64_t ld;  // elements between consecutive rows
};

inline FeatureMajor feature_major(const at::Tensor& t) {
  const int64_t batch = t.size(1);
  if (t.is_contiguous()) return {t, batch};
  const int64_t padded = feature_major_stride(batch, t.element_size());
  if (t.stride(1) == 1 && t.stride(0) == padded) return {t, padded};
  return {t.contiguous(), batch};
}

}  // namespace sparsekern
