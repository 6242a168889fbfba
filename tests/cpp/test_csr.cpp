// csr_spmm_cpu and csr_sddmm_cpu against naive float64 triple loops, over odd weight shapes, every mask
// kind (dense, 50%, 90%, fully pruned, empty rows/columns), batch sizes straddling the kernels' chunk
// widths, float and double, contiguous and strided operands, and 1/2/3 threads.
#include <ATen/ATen.h>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

using skt::Data;
using skt::Layout;

struct Shape {
  int64_t rows, cols;
};
// Odd sizes; 40x33 gives each of 3 threads several rows; 0-row and 0-column weights are legal layouts.
const std::vector<Shape> kShapes = {{7, 13}, {13, 7}, {1, 1}, {40, 33}, {0, 5}, {5, 0}};
const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble};

// Row-major dense W (n_rows, n_cols) from a layout and its values (in the layout's entry order).
std::vector<double> dense_of(const Layout& l, const std::vector<double>& values) {
  std::vector<double> w(l.n_rows * l.n_cols, 0.0);
  for (int64_t k = 0; k < l.nnz(); ++k) w[l.rows[k] * l.n_cols + l.cols[k]] = values[k];
  return w;
}

}  // namespace

SKT_TEST(csr_spmm_matches_naive) {
  skt::Rng rng(20240601);
  for (at::ScalarType dtype : kDtypes) {
    for (const Shape& shape : kShapes) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const Layout layout = skt::layout_from_mask(skt::make_mask(kind, shape.rows, shape.cols, rng));
        for (bool transposed : {false, true}) {
          // transposed: the input-gradient path of _ops.py, spmm(values[t_perm], transposed layout, dY),
          // which must equal Wᵀ @ dY with W built from the original layout and values.
          const Layout l = transposed ? layout.transposed() : layout;
          int64_t case_index = 0;
          for (int64_t batch : skt::batch_sizes()) {
            const bool strided = (case_index++ % 3) == 1;
            skt::Context ctx(c10::str("csr_spmm ", skt::dtype_name(dtype), " W ", shape.rows, "x", shape.cols,
                                      " mask=", kind.name, " nnz=", layout.nnz(), " batch=", batch,
                                      transposed ? " transposed" : "", strided ? " strided" : ""));
            const Data v = skt::random_data({layout.nnz()}, dtype, rng, strided);
            const Data x = skt::random_data({l.n_cols, batch}, dtype, rng, strided);
            std::vector<double> w = dense_of(layout, v.host);
            if (transposed) w = skt::transpose(w, layout.n_rows, layout.n_cols);
            const skt::Product ref = skt::matmul_ref(w, x.host, l.n_rows, l.n_cols, batch, false);
            const at::Tensor values = transposed ? v.tensor.index_select(0, layout.t_perm) : v.tensor;
            skt::check_every_thread_count(
                [&] {
                  return sparsekern::csr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                  l.t_col_indices, l.t_perm, l.t_perm_inv, x.tensor);
                },
                dtype, {l.n_rows, batch}, ref.value, ref.abs_sum, ref.terms);
          }
        }
      }
    }
  }
  std::cout << "    " << skt::poison_summary() << "\n";
}

SKT_TEST(csr_sddmm_matches_naive) {
  skt::Rng rng(20240602);
  for (at::ScalarType dtype : kDtypes) {
    for (const Shape& shape : kShapes) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const Layout l = skt::layout_from_mask(skt::make_mask(kind, shape.rows, shape.cols, rng));
        int64_t case_index = 0;
        for (int64_t batch : skt::batch_sizes()) {
          const int64_t variant = case_index++ % 3;  // 0: contiguous, 1: b strided, 2: a strided
          skt::Context ctx(c10::str("csr_sddmm ", skt::dtype_name(dtype), " W ", shape.rows, "x", shape.cols,
                                    " mask=", kind.name, " nnz=", l.nnz(), " batch=", batch,
                                    variant == 1 ? " b strided" : variant == 2 ? " a strided" : ""));
          const Data a = skt::random_data({l.n_rows, batch}, dtype, rng, variant == 2);
          const Data b = skt::random_data({l.n_cols, batch}, dtype, rng, variant == 1);
          // The full a @ bᵀ, then the kept positions in the layout's (row-major) entry order.
          const skt::Product full = skt::matmul_ref(a.host, b.host, l.n_rows, batch, l.n_cols, true);
          std::vector<double> value(l.nnz()), abs_sum(l.nnz());
          for (int64_t k = 0; k < l.nnz(); ++k) {
            value[k] = full.value[l.rows[k] * l.n_cols + l.cols[k]];
            abs_sum[k] = full.abs_sum[l.rows[k] * l.n_cols + l.cols[k]];
          }
          skt::check_every_thread_count(
              [&] {
                return sparsekern::csr_sddmm_cpu(a.tensor, b.tensor, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                 l.t_col_indices, l.t_perm, l.t_perm_inv);
              },
              dtype, {l.nnz()}, value, abs_sum, full.terms);
        }
      }
    }
  }
  std::cout << "    " << skt::poison_summary() << "\n";
}
