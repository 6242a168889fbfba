#include "oracle.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "harness.h"

namespace skt {

Mask random_mask(int64_t n_rows, int64_t n_cols, double sparsity, Rng& rng) {
  Mask m;
  m.n_rows = n_rows;
  m.n_cols = n_cols;
  m.keep.resize(n_rows * n_cols);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (auto& k : m.keep) k = u(rng) >= sparsity ? 1 : 0;  // u in [0, 1): sparsity 0 keeps all, 1 none
  return m;
}

Mask mask_with_holes(int64_t n_rows, int64_t n_cols, Rng& rng) {
  Mask m = random_mask(n_rows, n_cols, 0.5, rng);
  for (int64_t r : {int64_t{0}, n_rows / 2, n_rows - 1}) {
    if (r < 0 || r >= n_rows) continue;
    for (int64_t c = 0; c < n_cols; ++c) m.keep[r * n_cols + c] = 0;
  }
  if (n_cols > 1) {
    for (int64_t r = 0; r < n_rows; ++r) m.keep[r * n_cols + 1] = 0;
  }
  return m;
}

const std::vector<MaskKind>& mask_kinds() {
  static const std::vector<MaskKind> kinds = {
      {"dense", 0.0}, {"s0.5", 0.5}, {"s0.9", 0.9}, {"empty", 1.0}, {"holes", -1.0}};
  return kinds;
}

Mask make_mask(const MaskKind& kind, int64_t n_rows, int64_t n_cols, Rng& rng) {
  return kind.sparsity < 0 ? mask_with_holes(n_rows, n_cols, rng) : random_mask(n_rows, n_cols, kind.sparsity, rng);
}

const std::vector<int64_t>& batch_sizes() {
  static const std::vector<int64_t> sizes = {0, 1, 5, 16, 17, 31, 33, 47, 64, 70, 80, 128, 131, 257};
  return sizes;
}

const std::vector<int>& thread_counts() {
  static const std::vector<int> counts = {1, 2, 3};
  return counts;
}

std::vector<double> to_host(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

Data random_data(std::vector<int64_t> sizes, at::ScalarType dtype, Rng& rng, bool strided) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> raw(n);
  for (double& x : raw) {
    do x = u(rng);
    while (x == 0.0);
  }
  at::Tensor d = at::empty(sizes, at::TensorOptions().dtype(at::kDouble));
  if (n) std::memcpy(d.data_ptr<double>(), raw.data(), n * sizeof(double));
  at::Tensor t = d.to(dtype);
  if (strided) {
    std::vector<int64_t> wide = sizes;
    wide.push_back(2);
    at::Tensor holder = at::empty(wide, at::TensorOptions().dtype(dtype));
    holder.fill_(std::numeric_limits<double>::quiet_NaN());
    at::Tensor view = holder.select(-1, 0);
    view.copy_(t);
    t = view;
  }
  return {t, to_host(t)};
}

Product matmul_ref(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k, int64_t n,
                   bool b_transposed) {
  Product p;
  p.value.assign(m * n, 0.0);
  p.abs_sum.assign(m * n, 0.0);
  p.terms = k;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0, s_abs = 0.0;
      for (int64_t l = 0; l < k; ++l) {
        const double term = a[i * k + l] * (b_transposed ? b[j * k + l] : b[l * n + j]);
        s += term;
        s_abs += std::fabs(term);
      }
      p.value[i * n + j] = s;
      p.abs_sum[i * n + j] = s_abs;
    }
  }
  return p;
}

void expect_close(const at::Tensor& got, at::ScalarType dtype, const std::vector<int64_t>& sizes,
                  const std::vector<double>& ref, const std::vector<double>& abs_sum, int64_t terms) {
  count_case();
  SKT_CHECK(got.scalar_type() == dtype, "output dtype ", got.scalar_type(), ", expected ", dtype);
  SKT_CHECK(got.sizes() == at::IntArrayRef(sizes), "output shape ", got.sizes(), ", expected ",
            at::IntArrayRef(sizes));
  SKT_CHECK(got.is_contiguous(), "output is not contiguous: strides ", got.strides());
  if (got.sizes() != at::IntArrayRef(sizes) || got.scalar_type() != dtype) return;
  const double eps = dtype == at::kFloat ? std::numeric_limits<float>::epsilon()
                                         : std::numeric_limits<double>::epsilon();
  const std::vector<double> g = to_host(got);
  int64_t bad = 0, first = -1;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double tol = static_cast<double>(terms + 1) * eps * abs_sum[i];
    const double err = std::fabs(g[i] - ref[i]);
    if (!(err <= tol)) {  // also catches NaN (unwritten, poisoned output)
      if (bad++ == 0) first = static_cast<int64_t>(i);
      if (tol > 0) worst_ratio = std::max(worst_ratio, err / tol);
    }
  }
  SKT_CHECK(bad == 0, bad, " of ", g.size(), " elements wrong; first at flat index ", first, ": got ",
            first >= 0 ? g[first] : 0.0, ", expected ", first >= 0 ? ref[first] : 0.0, " (tolerance ",
            first >= 0 ? static_cast<double>(terms + 1) * eps * abs_sum[first] : 0.0, "; worst err/tol ",
            worst_ratio, ")");
}

namespace {
int64_t g_poison_tries = 0, g_poison_hits = 0;
}

Poisoned poison_heap(int64_t bytes) {
  // Several blocks, because a kernel may allocate a temporary of the same size (a contiguous copy of a
  // strided input) before its output.
  constexpr int kBlocks = 4;
  if (bytes <= 0) return {};
  std::vector<at::Tensor> blocks;
  Poisoned addresses;
  for (int i = 0; i < kBlocks; ++i) {
    blocks.push_back(at::empty({bytes}, at::TensorOptions().dtype(at::kByte)));
    std::memset(blocks.back().data_ptr(), 0xFF, bytes);
    addresses.push_back(blocks.back().data_ptr());
  }
  return addresses;  // the blocks are freed here; the addresses are only compared, never dereferenced
}

void note_output(const Poisoned& poisoned, const at::Tensor& out) {
  if (poisoned.empty()) return;
  ++g_poison_tries;
  if (std::find(poisoned.begin(), poisoned.end(), out.data_ptr()) != poisoned.end()) ++g_poison_hits;
}

std::string poison_summary() {
  const std::string s = c10::str("outputs allocated in a poisoned block: ", g_poison_hits, " of ", g_poison_tries);
  g_poison_hits = g_poison_tries = 0;
  return s;
}

ThreadCount::ThreadCount(int n) : previous_(at::get_num_threads()) { at::set_num_threads(n); }
ThreadCount::~ThreadCount() { at::set_num_threads(previous_); }

std::vector<double> transpose(const std::vector<double>& m, int64_t rows, int64_t cols) {
  std::vector<double> t(m.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = m[r * cols + c];
  return t;
}

const char* dtype_name(at::ScalarType dtype) { return dtype == at::kFloat ? "float" : "double"; }

}  // namespace skt
