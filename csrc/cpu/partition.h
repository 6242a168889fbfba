// Splitting rows of a compressed matrix across threads so each part has about the same work.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace sparsekern {

// Row boundaries of `parts` contiguous ranges with about equal (stored entries + rows) each: a row costs
// its entries plus a constant (loading and storing its output), so fully pruned rows are not free.
inline std::vector<int64_t> balanced_row_ranges(const int32_t* offsets, int64_t n_rows, int64_t parts) {
  std::vector<int64_t> bounds(parts + 1, n_rows);
  bounds[0] = 0;
  const double total = static_cast<double>(offsets[n_rows]) + static_cast<double>(n_rows);
  int64_t row = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const double target = total * static_cast<double>(p) / static_cast<double>(parts);
    while (row < n_rows && static_cast<double>(offsets[row]) + static_cast<double>(row) < target) ++row;
    bounds[p] = row;
  }
  return bounds;
}

// Runs body(row_begin, row_end) over balanced row ranges on torch's intra-op thread pool (OpenMP), so
// torch.set_num_threads governs these kernels exactly as it governs MKL.
template <typename Body>
inline void parallel_over_rows(const int32_t* offsets, int64_t n_rows, const Body& body) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_rows));
  const std::vector<int64_t> bounds = balanced_row_ranges(offsets, n_rows, parts);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (bounds[p] < bounds[p + 1]) body(bounds[p], bounds[p + 1]);
    }
  });
}

// Runs body(begin', end') over [begin, end) in pieces of at most max_rows rows (bounding per-thread
// scratch, e.g. an output tile, whatever the layer's size).
template <typename Body>
inline void in_row_blocks(int64_t begin, int64_t end, int64_t max_rows, const Body& body) {
  for (int64_t b = begin; b < end; b += max_rows) body(b, std::min(end, b + max_rows));
}

}  // namespace sparsekern
