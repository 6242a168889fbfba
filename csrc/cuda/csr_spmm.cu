// csr_spmm_cuda: out = S @ dense, S in CSR (an unstructured mask), dense feature-major (n_cols, B) → (n_rows, B).
// csr_spmm_bt_cuda: the same product transposed plus an optional bias, (B, n_rows): a layer's output layout,
// written by the kernel through a shared-memory transpose instead of a separate transpose pass.
//
// Forward Yᵀ = W Xᵀ, and on the transposed layout the input gradient dXᵀ = Wᵀ dYᵀ. Only stored entries are
// touched: nnz × B multiply-adds. The kernel, its tiling and launch configuration are in csr_row_tiles.cuh
// (one warp per row and batch tile of 32 × 16 bytes, 8 rows per block); the semantics are
// sparsekern/reference.py's csr_spmm.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "checks_cuda.cuh"
#include "csr_row_tiles.cuh"

namespace sparsekern {
namespace gpu {
namespace {

template <Output kOut>
at::Tensor csr_spmm_run(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                        const at::Tensor& t_perm_inv, const at::Tensor& dense,
                        const std::optional<at::Tensor>& bias_arg) {
  const at::Tensor no_bias;
  const c10::Device device =
      common_cuda_device({&values, &row_offsets, &col_indices, &t_row_offsets, &t_col_indices, &t_perm, &t_perm_inv,
                          &dense, bias_arg.has_value() ? &*bias_arg : &no_bias});
  const c10::cuda::CUDAGuard guard(device);
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, device);
  check_values(values, shape.nnz, device);
  check_dense(dense, "dense", values.scalar_type(), shape.n_cols, device);
  const at::Tensor bias = kOut == Output::kBatchMajor
                              ? checked_bias(bias_arg, values.scalar_type(), shape.n_rows, device)
                              : at::Tensor();
  const int64_t batch = dense.size(1);
  at::Tensor out = kOut == Output::kBatchMajor ? at::empty({batch, shape.n_rows}, dense.options())
                                               : at::empty({shape.n_rows, batch}, dense.options());
  if (out.numel() == 0) return out;  // no rows or an empty batch: nothing to launch
  const at::Tensor v = values.contiguous();
  const FeatureMajorOperand d = feature_major_operand(dense);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "csr_spmm_cuda", [&] {
    RowTilesArgs<scalar_t> args;
    args.values = v.const_data_ptr<scalar_t>();
    args.offsets = row_offsets.const_data_ptr<int32_t>();
    args.cols = col_indices.const_data_ptr<int32_t>();
    args.dense = d.tensor.const_data_ptr<scalar_t>();
    args.ld_dense = d.ld;
    args.bias = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    args.out = out.mutable_data_ptr<scalar_t>();
    args.n_rows = shape.n_rows;
    args.batch = batch;
    args.nnz = shape.nnz;
    // A zero-entry S still launches: every row then writes its zeros (or its bias).
    const TilePlan plan = plan_row_tiles<scalar_t>(shape.n_rows, batch, {d}, false, device.index());
    run_row_tiles<scalar_t, kOut, false>(args, plan, out);
  });
  return out;
}

}  // namespace

at::Tensor csr_spmm_cuda(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                         const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                         const at::Tensor& t_perm_inv, const at::Tensor& dense) {
  return csr_spmm_run<Output::kFeatureMajor>(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                             t_perm_inv, dense, std::nullopt);
}

at::Tensor csr_spmm_bt_cuda(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                            const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                            const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                            const std::optional<at::Tensor>& bias) {
  return csr_spmm_run<Output::kBatchMajor>(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                           t_perm_inv, dense, bias);
}

TORCH_LIBRARY_IMPL(sparsekern, CUDA, m) {
  m.impl("csr_spmm", &csr_spmm_cuda);
  m.impl("csr_spmm_bt", &csr_spmm_bt_cuda);
}

}  // namespace gpu
}  // namespace sparsekern
