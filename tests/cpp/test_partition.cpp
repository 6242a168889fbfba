// csrc/cpu/partition.h: the row split every kernel uses. A row left out or visited twice would be caught
// by the kernel tests only for the shapes they happen to use; here the split itself is checked for many
// row-length patterns and part counts, including more parts than rows.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <memory>

#include "../../csrc/cpu/partition.h"
#include "harness.h"
#include "oracle.h"

namespace {

// Row lengths: uniform random, with empty rows, one very heavy row, all empty, and a single row.
std::vector<std::vector<int32_t>> row_length_patterns(skt::Rng& rng) {
  std::uniform_int_distribution<int32_t> len(0, 9);
  std::vector<std::vector<int32_t>> patterns;
  std::vector<int32_t> uniform(37);
  for (auto& l : uniform) l = len(rng);
  patterns.push_back(uniform);
  std::vector<int32_t> holes(40);
  for (size_t i = 0; i < holes.size(); ++i) holes[i] = i % 3 == 0 ? 0 : len(rng);
  patterns.push_back(holes);
  std::vector<int32_t> heavy(25, 1);
  heavy[7] = 1000;
  patterns.push_back(heavy);
  patterns.push_back(std::vector<int32_t>(13, 0));
  patterns.push_back(std::vector<int32_t>{5});
  patterns.push_back(std::vector<int32_t>{});
  return patterns;
}

std::vector<int32_t> offsets_of(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> off(lengths.size() + 1, 0);
  for (size_t i = 0; i < lengths.size(); ++i) off[i + 1] = off[i] + lengths[i];
  return off;
}

}  // namespace

SKT_TEST(partition_balanced_row_ranges) {
  skt::Rng rng(21);
  for (const auto& lengths : row_length_patterns(rng)) {
    const std::vector<int32_t> off = offsets_of(lengths);
    const int64_t n_rows = static_cast<int64_t>(lengths.size());
    const double total = static_cast<double>(off.back()) + static_cast<double>(n_rows);
    double max_row = 0;
    for (int32_t l : lengths) max_row = std::max(max_row, static_cast<double>(l) + 1.0);
    for (int64_t parts = 1; parts <= 12; ++parts) {
      skt::Context ctx(c10::str("n_rows=", n_rows, " nnz=", off.back(), " parts=", parts));
      skt::count_case();
      const std::vector<int64_t> b = sparsekern::balanced_row_ranges(off.data(), n_rows, parts);
      SKT_CHECK(static_cast<int64_t>(b.size()) == parts + 1, "expected ", parts + 1, " bounds, got ", b.size());
      if (static_cast<int64_t>(b.size()) != parts + 1) continue;
      SKT_CHECK(b.front() == 0 && b.back() == n_rows, "bounds must run 0..", n_rows, ", got ", b.front(), "..",
                b.back());
      for (int64_t p = 0; p < parts; ++p) {
        SKT_CHECK(b[p] <= b[p + 1], "bounds decrease at part ", p);
        // Greedy split: no part costs more than its share plus one row.
        const double cost = (off[b[p + 1]] - off[b[p]]) + static_cast<double>(b[p + 1] - b[p]);
        SKT_CHECK(cost <= total / parts + max_row + 1e-9, "part ", p, " costs ", cost, ", share ", total / parts,
                  " + largest row ", max_row);
      }
    }
  }
}

SKT_TEST(partition_parallel_over_rows_visits_each_row_once) {
  skt::Rng rng(22);
  for (const auto& lengths : row_length_patterns(rng)) {
    const std::vector<int32_t> off = offsets_of(lengths);
    const int64_t n_rows = static_cast<int64_t>(lengths.size());
    for (int threads : {1, 2, 3, 5}) {
      skt::ThreadCount tc(threads);
      skt::Context ctx(c10::str("n_rows=", n_rows, " threads=", threads));
      skt::count_case();
      std::unique_ptr<std::atomic<int>[]> visits(new std::atomic<int>[n_rows + 1]);
      for (int64_t r = 0; r <= n_rows; ++r) visits[r] = 0;
      std::atomic<int> bad_range{0};
      sparsekern::parallel_over_rows(off.data(), n_rows, [&](int64_t begin, int64_t end) {
        if (!(0 <= begin && begin < end && end <= n_rows)) {
          ++bad_range;
          return;
        }
        for (int64_t r = begin; r < end; ++r) ++visits[r];
      });
      SKT_CHECK(bad_range == 0, bad_range.load(), " calls with an empty or out-of-range row range");
      for (int64_t r = 0; r < n_rows; ++r) SKT_CHECK(visits[r] == 1, "row ", r, " visited ", visits[r].load(), " times");
    }
  }
}
