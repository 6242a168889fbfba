// csr_spmm_bt_cpu: the batch-major product (S @ dense)ᵀ + bias must equal the feature-major csr_spmm_cpu
// (itself held against the float64 oracle in test_csr.cpp), transposed, plus the bias: bit for bit, since
// the kernel only moves the same sums through a cache tile and adds the bias once. Odd shapes, every mask
// kind, batch sizes across the chunk widths, float and double, with and without bias, 1/2/3 threads (each
// thread transposes its own rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

SKT_TEST(spmm_bt_equals_transposed_spmm_plus_bias) {
  skt::Rng rng(20261124);
  const int previous = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{7, 13}, {40, 33}, {1, 1}, {17, 5}}) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const skt::Layout l = skt::layout_from_mask(skt::make_mask(kind, rows, cols, rng));
        for (int64_t batch : skt::batch_sizes()) {
          for (bool with_bias : {true, false}) {
            skt::Context ctx(c10::str("csr_spmm_bt ", skt::dtype_name(dtype), " W ", rows, "x", cols, " mask=",
                                      kind.name, " batch=", batch, with_bias ? " bias" : ""));
            const at::Tensor values = skt::random_data({l.nnz()}, dtype, rng, false).tensor;
            const at::Tensor x = skt::random_data({cols, batch}, dtype, rng, false).tensor;
            const std::optional<at::Tensor> bias =
                with_bias ? std::optional<at::Tensor>(at::randn({rows}, at::TensorOptions().dtype(dtype)))
                          : std::nullopt;
            for (int threads : skt::thread_counts()) {
              at::set_num_threads(threads);
              const at::Tensor out = sparsekern::csr_spmm_bt_cpu(values, l.row_offsets, l.col_indices,
                                                                 l.t_row_offsets, l.t_col_indices, l.t_perm,
                                                                 l.t_perm_inv, x, bias);
              at::Tensor expected = sparsekern::csr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                             l.t_col_indices, l.t_perm, l.t_perm_inv, x)
                                        .t();
              if (with_bias) expected = expected + *bias;
              SKT_CHECK(out.sizes() == expected.sizes() && out.is_contiguous(), "shape ", out.sizes());
              SKT_CHECK(at::equal(out, expected), "differs from the transposed csr_spmm_cpu (+ bias), threads=",
                        threads);
            }
          }
        }
      }
    }
  }
  at::set_num_threads(previous);
}

// csr_spmm_sddmm_bt_cpu (one pass for a layer's backward) against the two separate kernels: the same sums in
// another order, so equal within rounding. Covers the fused chunks, the batch tail done separately, empty
// rows and the thread split (and, in the sanitizer build, every access the fused loop makes).
SKT_TEST(spmm_bt_fused_spmm_sddmm_matches_separate_kernels) {
  skt::Rng rng(20261125);
  const int previous = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    const double tol = dtype == at::kFloat ? 1e-4 : 1e-11;
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{7, 13}, {40, 33}, {1, 1}, {17, 5}}) {
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const skt::Layout l = skt::layout_from_mask(skt::make_mask(kind, rows, cols, rng));
        for (int64_t batch : skt::batch_sizes()) {
          skt::Context ctx(c10::str("csr_spmm_sddmm_bt ", skt::dtype_name(dtype), " W ", rows, "x", cols,
                                    " mask=", kind.name, " batch=", batch));
          const at::Tensor values = skt::random_data({l.nnz()}, dtype, rng, false).tensor;
          const at::Tensor dense = skt::random_data({cols, batch}, dtype, rng, false).tensor;
          const at::Tensor other = skt::random_data({rows, batch}, dtype, rng, false).tensor;
          const at::Tensor out_ref = sparsekern::csr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                              l.t_col_indices, l.t_perm, l.t_perm_inv, dense)
                                         .t();
          const at::Tensor dots_ref = sparsekern::csr_sddmm_cpu(other, dense, l.row_offsets, l.col_indices,
                                                                l.t_row_offsets, l.t_col_indices, l.t_perm,
                                                                l.t_perm_inv);
          for (int threads : skt::thread_counts()) {
            at::set_num_threads(threads);
            const auto [out, dots] = sparsekern::csr_spmm_sddmm_bt_cpu(
                values, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm, l.t_perm_inv,
                dense, other);
            SKT_CHECK(out.sizes() == out_ref.sizes() && dots.sizes() == dots_ref.sizes(), "shapes ", out.sizes(),
                      " ", dots.sizes());
            SKT_CHECK(at::allclose(out, out_ref, tol, tol), "out differs from csr_spmm_cpu, threads=", threads);
            SKT_CHECK(at::allclose(dots, dots_ref, tol, tol), "dots differ from csr_sddmm_cpu, threads=", threads);
          }
        }
      }
    }
  }
  at::set_num_threads(previous);
}
