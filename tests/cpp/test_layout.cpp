// The test-side layout builder: it must produce exactly what sparsekern/layout.py produces, or the kernel
// tests would test a layout the package never builds.
#include <ATen/ATen.h>

#include <algorithm>

#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

template <typename T>
std::vector<T> host_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<T>(c.data_ptr<T>(), c.data_ptr<T>() + c.numel());
}

}  // namespace

// Expected values printed by CSRLayout.from_mask(torch.tensor(
//     [[0,1,1,0],[1,0,1,1],[1,1,0,0]], dtype=torch.bool)).tensors()
// (t_perm is not an involution here, so t_perm and t_perm_inv cannot be confused).
SKT_TEST(layout_matches_layout_py) {
  skt::Mask m;
  m.n_rows = 3;
  m.n_cols = 4;
  m.keep = {0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0};
  const skt::Layout l = skt::layout_from_mask(m);
  skt::count_case();
  SKT_CHECK(l.row_offsets.scalar_type() == at::kInt && l.col_indices.scalar_type() == at::kInt &&
                l.t_row_offsets.scalar_type() == at::kInt && l.t_col_indices.scalar_type() == at::kInt,
            "offsets and indices must be int32");
  SKT_CHECK(l.t_perm.scalar_type() == at::kLong && l.t_perm_inv.scalar_type() == at::kLong,
            "permutations must be int64");
  SKT_CHECK(host_of<int32_t>(l.row_offsets) == (std::vector<int32_t>{0, 2, 5, 7}), "row_offsets");
  SKT_CHECK(host_of<int32_t>(l.col_indices) == (std::vector<int32_t>{1, 2, 0, 2, 3, 0, 1}), "col_indices");
  SKT_CHECK(host_of<int32_t>(l.t_row_offsets) == (std::vector<int32_t>{0, 2, 4, 6, 7}), "t_row_offsets");
  SKT_CHECK(host_of<int32_t>(l.t_col_indices) == (std::vector<int32_t>{1, 2, 0, 2, 0, 1, 1}), "t_col_indices");
  SKT_CHECK(host_of<int64_t>(l.t_perm) == (std::vector<int64_t>{2, 5, 0, 6, 1, 3, 4}), "t_perm");
  SKT_CHECK(host_of<int64_t>(l.t_perm_inv) == (std::vector<int64_t>{2, 4, 0, 5, 6, 1, 3}), "t_perm_inv");
}

// The invariants CSRLayout.validate() checks, on random masks of every kind.
SKT_TEST(layout_invariants) {
  skt::Rng rng(7);
  for (const skt::MaskKind& kind : skt::mask_kinds()) {
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{7, 13}, {40, 33}, {1, 1}, {0, 4}, {4, 0}}) {
      skt::Context ctx(c10::str("mask=", kind.name, " ", rows, "x", cols));
      skt::count_case();
      const skt::Mask m = skt::make_mask(kind, rows, cols, rng);
      const skt::Layout l = skt::layout_from_mask(m);
      const int64_t nnz = std::count(m.keep.begin(), m.keep.end(), uint8_t{1});
      SKT_CHECK(l.nnz() == nnz, "nnz ", l.nnz(), " vs mask count ", nnz);
      const auto off = host_of<int32_t>(l.row_offsets), idx = host_of<int32_t>(l.col_indices);
      const auto t_off = host_of<int32_t>(l.t_row_offsets), t_idx = host_of<int32_t>(l.t_col_indices);
      const auto perm = host_of<int64_t>(l.t_perm), inv = host_of<int64_t>(l.t_perm_inv);
      SKT_CHECK(static_cast<int64_t>(off.size()) == rows + 1 && static_cast<int64_t>(t_off.size()) == cols + 1,
                "offset lengths");
      SKT_CHECK(off.front() == 0 && off.back() == nnz && t_off.front() == 0 && t_off.back() == nnz,
                "offsets must run 0..nnz");
      // Every stored entry is a kept position, rows strictly increasing columns.
      for (int64_t r = 0; r < rows; ++r)
        for (int32_t k = off[r]; k < off[r + 1]; ++k) {
          SKT_CHECK(m.at(r, idx[k]), "entry ", k, " at (", r, ", ", idx[k], ") is not kept");
          if (k > off[r]) SKT_CHECK(idx[k] > idx[k - 1], "columns not increasing in row ", r);
        }
      // CSC side: same positions, rows increasing inside each column, and entry k of the transpose is
      // entry perm[k] of the original.
      for (int64_t c = 0; c < cols; ++c)
        for (int32_t k = t_off[c]; k < t_off[c + 1]; ++k) {
          SKT_CHECK(idx[perm[k]] == c && l.rows[perm[k]] == t_idx[k], "t_perm[", k, "] does not map the ",
                    "transposed entry (", t_idx[k], ", ", c, ") to the same position");
          if (k > t_off[c]) SKT_CHECK(t_idx[k] > t_idx[k - 1], "rows not increasing in column ", c);
        }
      for (int64_t k = 0; k < nnz; ++k) SKT_CHECK(inv[perm[k]] == k, "t_perm_inv is not the inverse at ", k);
    }
  }
}
