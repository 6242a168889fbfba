// csr_spmm_sddmm_bt_cuda: one pass over the stored entries of S (n_rows, n_cols) computes both
//   out     = (S @ dense)ᵀ                      (B, n_rows), batch-major
//   dots[i] = other[row(i)] · dense[col(i)]     (nnz,), in S's entry order
// with dense (n_cols, B) and other (n_rows, B) feature-major: a CSR layer's whole backward, walking Wᵀ row by
// row (S = Wᵀ, dense = dYᵀ, other = Xᵀ gives out = dX and dots = dWᵀ's values).
//
// A real fusion, one kernel (csr_row_tiles.cuh with both an output and dot products): each 16-byte slice of
// dense a lane loads feeds the FMA into the output row and the FMA into that entry's partial dot, with
// other[row, tile] held in registers for the whole row. The slice loads, one per entry, lane and tile, are
// the traffic that bounds both products, so fused they cost one pass instead of the two of csr_spmm_bt
// followed by csr_sddmm; the price is the dot products' lane reduction (one shuffle per entry and tile) and
// ~16 more registers. Both results are those of the separate kernels: out bit for bit (same sums in the
// same order), the dots up to the summation order of their partial sums.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks_cuda.cuh"
#include "csr_row_tiles.cuh"

namespace sparsekern {
namespace gpu {

std::tuple<at::Tensor, at::Tensor> csr_spmm_sddmm_bt_cuda(const at::Tensor& values, const at::Tensor& row_offsets,
                                                          const at::Tensor& col_indices,
                                                          const at::Tensor& t_row_offsets,
                                                          const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                                                          const at::Tensor& t_perm_inv, const at::Tensor& dense,
                                                          const at::Tensor& other) {
  const c10::Device device = common_cuda_device({&values, &row_offsets, &col_indices, &t_row_offsets,
                                                 &t_col_indices, &t_perm, &t_perm_inv, &dense, &other});
  const c10::cuda::CUDAGuard guard(device);
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, device);
  check_values(values, shape.nnz, device);
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols, device);
  check_dense(other, "other", values.scalar_type(), shape.n_rows, device);
  TORCH_CHECK_VALUE(dense.size(1) == other.size(1), "dense, other: batch sizes differ: ", dense.size(1), " and ",
                    other.size(1));
  const int64_t batch = dense.size(1);
  at::Tensor out = at::empty({batch, shape.n_rows}, dense.options());
  at::Tensor dots = at::empty({shape.nnz}, dense.options());
  if (batch == 0) return {out, dots.zero_()};  // empty dot products are 0
  if (shape.n_rows == 0) return {out, dots};   // then nnz == 0 too
  const at::Tensor v = values.contiguous();
  const FeatureMajorOperand d = feature_major_operand(dense);
  const FeatureMajorOperand o = feature_major_operand(other);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "csr_spmm_sddmm_bt_cuda", [&] {
    RowTilesArgs<scalar_t> args;
    args.values = v.const_data_ptr<scalar_t>();
    args.offsets = row_offsets.const_data_ptr<int32_t>();
    args.cols = col_indices.const_data_ptr<int32_t>();
    args.dense = d.tensor.const_data_ptr<scalar_t>();
    args.ld_dense = d.ld;
    args.other = o.tensor.const_data_ptr<scalar_t>();
    args.ld_other = o.ld;
    args.out = out.mutable_data_ptr<scalar_t>();
    args.dots = dots.mutable_data_ptr<scalar_t>();
    args.n_rows = shape.n_rows;
    args.batch = batch;
    args.nnz = shape.nnz;
    const TilePlan plan = plan_row_tiles<scalar_t>(shape.n_rows, batch, {d, o}, true, device.index());
    run_row_tiles<scalar_t, Output::kBatchMajor, true>(args, plan, out);
  });
  return {out, dots};
}

TORCH_LIBRARY_IMPL(sparsekern, CUDA, m) { m.impl("csr_spmm_sddmm_bt", &csr_spmm_sddmm_bt_cuda); }

}  // namespace gpu
}  // namespace sparsekern
