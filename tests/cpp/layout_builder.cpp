#include "layout_builder.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <numeric>

namespace skt {
namespace {

template <typename T>
at::Tensor tensor_of(const std::vector<T>& v, at::ScalarType dtype) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(dtype));
  if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(T));
  return t;
}

// _offsets_from_counts: offsets[0] = 0, offsets[i+1] = offsets[i] + counts[i].
std::vector<int32_t> offsets_from(const std::vector<int32_t>& ids, int64_t n) {
  std::vector<int32_t> offsets(n + 1, 0);
  for (int32_t id : ids) ++offsets[id + 1];
  for (int64_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  return offsets;
}

}  // namespace

at::Tensor to_tensor(const std::vector<int32_t>& v) { return tensor_of(v, at::kInt); }
at::Tensor to_tensor(const std::vector<int64_t>& v) { return tensor_of(v, at::kLong); }

Layout layout_from_mask(const Mask& mask) {
  Layout l;
  l.n_rows = mask.n_rows;
  l.n_cols = mask.n_cols;
  // mask.nonzero(): kept positions in row-major order.
  for (int64_t r = 0; r < mask.n_rows; ++r) {
    for (int64_t c = 0; c < mask.n_cols; ++c) {
      if (mask.at(r, c)) {
        l.rows.push_back(static_cast<int32_t>(r));
        l.cols.push_back(static_cast<int32_t>(c));
      }
    }
  }
  const int64_t nnz = l.nnz();
  l.offsets = offsets_from(l.rows, mask.n_rows);
  // torch.sort(cols, stable=True).indices: rows stay ascending inside each column.
  l.perm.resize(nnz);
  std::iota(l.perm.begin(), l.perm.end(), int64_t{0});
  std::stable_sort(l.perm.begin(), l.perm.end(), [&](int64_t i, int64_t j) { return l.cols[i] < l.cols[j]; });
  std::vector<int32_t> t_cols(nnz);
  for (int64_t k = 0; k < nnz; ++k) t_cols[k] = l.rows[l.perm[k]];
  std::vector<int64_t> perm_inv(nnz);
  for (int64_t k = 0; k < nnz; ++k) perm_inv[l.perm[k]] = k;

  l.row_offsets = to_tensor(l.offsets);
  l.col_indices = to_tensor(l.cols);
  l.t_row_offsets = to_tensor(offsets_from(l.cols, mask.n_cols));
  l.t_col_indices = to_tensor(t_cols);
  l.t_perm = to_tensor(l.perm);
  l.t_perm_inv = to_tensor(perm_inv);
  return l;
}

Layout Layout::transposed() const {
  Layout t;
  t.n_rows = n_cols;
  t.n_cols = n_rows;
  t.row_offsets = t_row_offsets;
  t.col_indices = t_col_indices;
  t.t_row_offsets = row_offsets;
  t.t_col_indices = col_indices;
  t.t_perm = t_perm_inv;
  t.t_perm_inv = t_perm;
  const int32_t* to = t_row_offsets.data_ptr<int32_t>();
  t.offsets.assign(to, to + n_cols + 1);
  const int32_t* tc = t_col_indices.data_ptr<int32_t>();
  t.cols.assign(tc, tc + nnz());
  for (int64_t r = 0; r < t.n_rows; ++r) {
    for (int32_t k = t.offsets[r]; k < t.offsets[r + 1]; ++k) t.rows.push_back(static_cast<int32_t>(r));
  }
  const int64_t* tp = t_perm_inv.data_ptr<int64_t>();
  t.perm.assign(tp, tp + nnz());
  return t;
}

}  // namespace skt
