// csr_to_dense_cpu / csr_from_dense_cpu (the dense fallback's conversions): pure data movement, so the
// results must be exact, including the zeros of pruned positions and fully pruned rows.
#include <ATen/ATen.h>

#include <functional>
#include <string>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

struct Shape {
  int64_t rows, cols;
};
const std::vector<Shape> kShapes = {{7, 13}, {13, 7}, {1, 1}, {40, 33}, {0, 5}, {5, 0}};

}  // namespace

SKT_TEST(convert_to_dense_and_back) {
  skt::Rng rng(20240605);
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (const Shape& shape : kShapes) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const skt::Layout l = skt::layout_from_mask(skt::make_mask(kind, shape.rows, shape.cols, rng));
        for (bool strided : {false, true}) {
          skt::Context ctx(c10::str(skt::dtype_name(dtype), " W ", shape.rows, "x", shape.cols, " mask=", kind.name,
                                    " nnz=", l.nnz(), strided ? " strided" : ""));
          const skt::Data v = skt::random_data({l.nnz()}, dtype, rng, strided);
          std::vector<double> w(shape.rows * shape.cols, 0.0);
          for (int64_t k = 0; k < l.nnz(); ++k) w[l.rows[k] * shape.cols + l.cols[k]] = v.host[k];
          const std::vector<double> zeros(w.size(), 0.0);
          const skt::Data d = skt::random_data({shape.rows, shape.cols}, dtype, rng, strided);
          std::vector<double> kept(l.nnz());
          for (int64_t k = 0; k < l.nnz(); ++k) kept[k] = d.host[l.rows[k] * shape.cols + l.cols[k]];
          for (int threads : skt::thread_counts()) {
            skt::ThreadCount tc(threads);
            skt::Context ctx_threads(c10::str("threads=", threads));
            // terms = 0: exact (tolerance 0 · eps · 0).
            skt::poison_heap(static_cast<int64_t>(w.size() * c10::elementSize(dtype)));
            const at::Tensor dense = sparsekern::csr_to_dense_cpu(v.tensor, l.row_offsets, l.col_indices, shape.cols);
            skt::expect_close(dense, dtype, {shape.rows, shape.cols}, w, zeros, 0);
            skt::poison_heap(static_cast<int64_t>(kept.size() * c10::elementSize(dtype)));
            const at::Tensor values = sparsekern::csr_from_dense_cpu(d.tensor, l.row_offsets, l.col_indices);
            skt::expect_close(values, dtype, {l.nnz()}, kept, std::vector<double>(kept.size(), 0.0), 0);
            // Round trip: from_dense(to_dense(v)) == v.
            const at::Tensor back = sparsekern::csr_from_dense_cpu(dense, l.row_offsets, l.col_indices);
            SKT_CHECK(back.sizes() == v.tensor.sizes() && at::equal(back, v.tensor.contiguous()),
                      "csr_from_dense(csr_to_dense(v)) != v");
          }
        }
      }
    }
  }
}

SKT_TEST(errors_convert) {
  skt::Rng rng(14);
  const skt::Layout l = skt::layout_from_mask(skt::random_mask(7, 13, 0.5, rng));
  const at::Tensor v = skt::random_data({l.nnz()}, at::kFloat, rng, false).tensor;
  const at::Tensor d = skt::random_data({7, 13}, at::kFloat, rng, false).tensor;
  struct Case {
    std::string what;
    std::function<void()> call;
    bool type_error;
    std::vector<const char*> needles;
  };
  at::Tensor bad_cols = l.col_indices.clone();
  bad_cols[0] = 13;
  at::Tensor bad_offsets = l.row_offsets.clone();
  bad_offsets[7] = 0;
  const std::vector<Case> cases = {
      {"to_dense: negative n_cols", [&] { sparsekern::csr_to_dense_cpu(v, l.row_offsets, l.col_indices, -1); }, false,
       {"n_cols"}},
      {"to_dense: n_cols too small for the indices",
       [&] { sparsekern::csr_to_dense_cpu(v, l.row_offsets, l.col_indices, 3); }, false, {"col_indices"}},
      {"to_dense: column index out of range", [&] { sparsekern::csr_to_dense_cpu(v, l.row_offsets, bad_cols, 13); },
       false, {"col_indices"}},
      {"to_dense: offsets not ending at nnz", [&] { sparsekern::csr_to_dense_cpu(v, bad_offsets, l.col_indices, 13); },
       false, {"row_offsets"}},
      {"to_dense: values one short",
       [&] { sparsekern::csr_to_dense_cpu(v.slice(0, 1), l.row_offsets, l.col_indices, 13); }, false, {"values"}},
      {"to_dense: values int32",
       [&] { sparsekern::csr_to_dense_cpu(v.to(at::kInt), l.row_offsets, l.col_indices, 13); }, true, {"values"}},
      {"to_dense: offsets int64",
       [&] { sparsekern::csr_to_dense_cpu(v, l.row_offsets.to(at::kLong), l.col_indices, 13); }, true,
       {"row_offsets"}},
      {"from_dense: dense int32",
       [&] { sparsekern::csr_from_dense_cpu(d.to(at::kInt), l.row_offsets, l.col_indices); }, true, {"dense"}},
      {"from_dense: dense wrong row count",
       [&] { sparsekern::csr_from_dense_cpu(d.slice(0, 1), l.row_offsets, l.col_indices); }, false, {"dense"}},
      {"from_dense: dense 1-D", [&] { sparsekern::csr_from_dense_cpu(d.reshape({-1}), l.row_offsets, l.col_indices); },
       false, {"dense"}},
      {"from_dense: dense too narrow for the indices",
       [&] { sparsekern::csr_from_dense_cpu(d.slice(1, 0, 4), l.row_offsets, l.col_indices); }, false,
       {"col_indices"}},
      {"from_dense: column index out of range", [&] { sparsekern::csr_from_dense_cpu(d, l.row_offsets, bad_cols); },
       false, {"col_indices"}},
  };
  for (const Case& c : cases) {
    skt::Context ctx(c.what);
    skt::count_case();
    try {
      c.call();
      SKT_CHECK(false, "expected a c10::Error, the call returned normally");
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      if (c.type_error) {
        SKT_CHECK(dynamic_cast<const c10::TypeError*>(&e) != nullptr, "expected c10::TypeError: ", msg);
      } else {
        SKT_CHECK(dynamic_cast<const c10::ValueError*>(&e) != nullptr, "expected c10::ValueError: ", msg);
      }
      for (const char* needle : c.needles)
        SKT_CHECK(msg.find(needle) != std::string::npos, "message does not mention '", needle, "': ", msg);
    }
  }
}
