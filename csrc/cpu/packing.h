// Packing a feature-major dense operand (rows, batch) into contiguous batch chunks (chunks, rows, width).
//
// Why: the kernels read one chunk slice dense[c, b0:b0+width] per stored entry, at random rows c. In the
// (rows, batch) layout those slices sit a whole batch row apart (1 KB for 256 floats, 8 KB for 2048), so
// they fall into a fraction of the cache sets and a slab that should fit in L2 thrashes it. Packed, a
// chunk's slab is contiguous and uses every set. The copy is one pass over the operand, small next to the
// nnz x batch work it speeds up.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "scratch.h"

namespace sparsekern {

// dst[c][r][0:width] = src[r][c*width : (c+1)*width] for the first n_chunks full chunks.
template <typename T>
inline void pack_batch_chunks(const T* src, int64_t rows, int64_t ld, int64_t width, int64_t n_chunks, T* dst) {
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < n_chunks; ++c) {
      for (int64_t r = r0; r < r1; ++r) {
        std::memcpy(dst + (c * rows + r) * width, src + r * ld + c * width, width * sizeof(T));
      }
    }
  });
}

// What a kernel reads for each full batch chunk of a (rows, batch) operand with row stride `ld`: a packed
// copy when its rows would map to few cache sets, else the operand itself (one chunk only, or rows padded
// to an odd number of cache lines by transpose(), feature_major.h). Columns past the last full chunk are
// always read from the original.
template <typename T>
struct ChunkedOperand {
  const T* data;
  int64_t ld;               // distance between consecutive rows of one chunk
  bool packed;              // chunk c is the contiguous block data + c * rows * width
  int64_t footprint_bytes;  // cache footprint of one row's slice in a chunk, for column bands (column_tiles.h)

  const T* chunk(int64_t c, int64_t rows, int64_t width) const {
    return packed ? data + c * rows * width : data + c * width;
  }
};

template <typename T>
inline ChunkedOperand<T> chunked_operand(const T* src, int64_t rows, int64_t batch, int64_t ld, int64_t width) {
  const int64_t n_full = batch / width;
  const int64_t slice_bytes = width * static_cast<int64_t>(sizeof(T));
  if (n_full == 0 || batch <= width) return {src, ld, false, ld * static_cast<int64_t>(sizeof(T))};  // one chunk
  if (ld != batch) return {src, ld, false, slice_bytes};  // padded rows: slices spread over every set
  T* buffer = scratch_buffer<T, struct PackedOperandTag>(n_full * rows * width);
  pack_batch_chunks(src, rows, ld, width, n_full, buffer);
  return {buffer, width, true, slice_bytes};
}

}  // namespace sparsekern
