// Column tiles for the CSR kernels: walk every row's entries one band of input columns at a time, so the
// slab of the dense operand those entries read (band columns × one batch chunk) stays in cache.
//
// Each stored entry reads a slice of the dense operand at a random row; bands bound the address range
// those reads cover so the slab stays in L2 (see choose_column_bands). The price is reloading each row's
// output chunk once per band, which is small next to the entries a row has per band.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sparsekern {

struct ColumnBands {
  int64_t width;  // input columns per band
  int64_t count;  // bands covering n_cols (at least one, so empty operands still write their outputs)
};

// Bands for an operand whose consecutive rows are `row_stride_bytes` apart: a band's slab spans about half
// of L2 in address space. A span, not a byte count, because slices of strided rows map to a fraction of the
// cache sets. Measured on unpacked 1 KB rows (2048x2048, batch 256, 1 thread): 1024-column bands ran
// 1.3-1.9x faster than no bands at 90-98% sparsity. The SpMM now packs its operand (packing.h), so at 64
// floats per chunk a band spans 4096 columns and wider operands only are split.
inline ColumnBands choose_column_bands(int64_t n_cols, int64_t row_stride_bytes) {
  constexpr int64_t kSpanBytes = 1 << 20;
  const int64_t span_cols = std::max<int64_t>(16, kSpanBytes / std::max<int64_t>(row_stride_bytes, 1));
  const int64_t width = std::max<int64_t>(1, std::min(span_cols, n_cols));
  return {width, std::max<int64_t>(1, (n_cols + width - 1) / width)};
}

// bounds[(r - row_begin) * (n_tiles + 1) + t] = first entry of row r whose column is >= t * tile;
// the last bound of each row is the row's end. One pass over the rows' entries.
inline std::vector<int32_t> tile_bounds(const int32_t* offsets, const int32_t* cols, int64_t row_begin,
                                        int64_t row_end, int64_t tile, int64_t n_tiles) {
  std::vector<int32_t> bounds((row_end - row_begin) * (n_tiles + 1));
  for (int64_t r = row_begin; r < row_end; ++r) {
    int32_t* b = bounds.data() + (r - row_begin) * (n_tiles + 1);
    int32_t i = offsets[r];
    const int32_t end = offsets[r + 1];
    for (int64_t t = 0; t < n_tiles; ++t) {
      b[t] = i;
      const int64_t limit = (t + 1) * tile;
      while (i < end && cols[i] < limit) ++i;
    }
    b[n_tiles] = end;
  }
  return bounds;
}

}  // namespace sparsekern
