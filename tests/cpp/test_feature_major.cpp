// Operands laid out by transpose_cpu (rows padded to an odd number of cache lines for 257 B-1 KB rows,
// csrc/cpu/feature_major.h) are read in place by the kernels: each must give what it gives on a contiguous
// copy, within rounding (column bands may split rows differently). Batch sizes around the chunk widths and
// the padding range, float and double, 1/2/3 threads; in the sanitizer build this checks every access of
// the in-place paths.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../../csrc/cpu/feature_major.h"
#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

// t (features, batch) with transpose_cpu's row stride.
at::Tensor padded(const at::Tensor& t) { return sparsekern::transpose_cpu(t.t().contiguous()); }

void check_close(const at::Tensor& got, const at::Tensor& expected, double tol, const char* what) {
  SKT_CHECK(got.sizes() == expected.sizes(), what, ": shape ", got.sizes(), " vs ", expected.sizes());
  SKT_CHECK(at::allclose(got, expected, tol, tol), what, ": differs from the contiguous operands' result");
}

}  // namespace

SKT_TEST(feature_major_padded_operands_match_contiguous) {
  skt::Rng rng(20261126);
  const int previous = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    const double tol = dtype == at::kFloat ? 1e-4 : 1e-11;
    const int64_t elem = dtype == at::kFloat ? 4 : 8;
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{7, 13}, {40, 33}, {17, 5}}) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const skt::Layout l = skt::layout_from_mask(skt::make_mask(kind, rows, cols, rng));
        for (int64_t batch : {33, 48, 65, 100, 128, 200, 256}) {
          if (sparsekern::feature_major_stride(batch, elem) == batch) continue;  // not padded: covered elsewhere
          skt::Context ctx(c10::str("padded operands ", skt::dtype_name(dtype), " W ", rows, "x", cols,
                                    " mask=", kind.name, " batch=", batch));
          const at::Tensor values = skt::random_data({l.nnz()}, dtype, rng, false).tensor;
          const at::Tensor dense = skt::random_data({cols, batch}, dtype, rng, false).tensor;
          const at::Tensor other = skt::random_data({rows, batch}, dtype, rng, false).tensor;
          const at::Tensor bias = at::randn({rows}, at::TensorOptions().dtype(dtype));
          const at::Tensor dense_p = padded(dense), other_p = padded(other);
          SKT_CHECK(dense_p.stride(0) == sparsekern::feature_major_stride(batch, elem) && !dense_p.is_contiguous(),
                    "transpose_cpu stride ", dense_p.strides());
          for (int threads : skt::thread_counts()) {
            at::set_num_threads(threads);
            const auto spmm = [&](const at::Tensor& d) {
              return sparsekern::csr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                              l.t_col_indices, l.t_perm, l.t_perm_inv, d);
            };
            const auto spmm_bt = [&](const at::Tensor& d) {
              return sparsekern::csr_spmm_bt_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                 l.t_col_indices, l.t_perm, l.t_perm_inv, d, bias);
            };
            const auto sddmm = [&](const at::Tensor& a, const at::Tensor& b) {
              return sparsekern::csr_sddmm_cpu(a, b, l.row_offsets, l.col_indices, l.t_row_offsets,
                                               l.t_col_indices, l.t_perm, l.t_perm_inv);
            };
            const auto fused = [&](const at::Tensor& d, const at::Tensor& o) {
              return sparsekern::csr_spmm_sddmm_bt_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                       l.t_col_indices, l.t_perm, l.t_perm_inv, d, o);
            };
            check_close(spmm(dense_p), spmm(dense), tol, "csr_spmm");
            check_close(spmm_bt(dense_p), spmm_bt(dense), tol, "csr_spmm_bt");
            check_close(sddmm(other_p, dense_p), sddmm(other, dense), tol, "csr_sddmm");
            check_close(sddmm(other, dense_p), sddmm(other, dense), tol, "csr_sddmm (b padded)");
            const auto [out_p, dots_p] = fused(dense_p, other_p);
            const auto [out_c, dots_c] = fused(dense, other);
            check_close(out_p, out_c, tol, "csr_spmm_sddmm_bt out");
            check_close(dots_p, dots_c, tol, "csr_spmm_sddmm_bt dots");
          }
        }
      }
    }
  }
  at::set_num_threads(previous);
}
