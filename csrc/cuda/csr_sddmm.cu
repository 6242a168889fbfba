// csr_sddmm_cuda: out[i] = a[row(i)] · b[col(i)], the dot product over the batch at every stored entry.
//
// The weight gradient dW = (dYᵀ X) ⊙ M at the kept positions only: a = dYᵀ (n_rows, B), b = Xᵀ (n_cols, B),
// both feature-major. Work is nnz × B multiply-adds; the dense dYᵀ X is never formed. The kernel is
// csr_row_tiles.cuh's without an output: a warp walks row r's entries over one batch tile, with a[r, tile]
// in registers and one 16-byte slice of b per lane and entry; 16 entries' partial dots are summed across
// the lanes at once. A batch wider than one tile is split over up to 8 partial buffers (as many as the GPU
// needs to be busy), summed in a fixed order by a second kernel: deterministic, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks_cuda.cuh"
#include "csr_row_tiles.cuh"

namespace sparsekern {
namespace gpu {

at::Tensor csr_sddmm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_offsets,
                          const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                          const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv) {
  const c10::Device device = common_cuda_device(
      {&a, &b, &row_offsets, &col_indices, &t_row_offsets, &t_col_indices, &t_perm, &t_perm_inv});
  const c10::cuda::CUDAGuard guard(device);
  const LayoutShape shape =
      check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, device);
  check_device(a, "a", device);
  check_float(a, "a");
  check_dense(a, "a", a.scalar_type(), shape.n_rows, device, "a");
  check_dense(b, "b", a.scalar_type(), shape.n_cols, device, "a");
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), "a, b: batch sizes differ: ", a.size(1), " and ", b.size(1));
  const int64_t batch = a.size(1);
  if (shape.nnz == 0) return at::empty({0}, a.options());
  if (batch == 0) return at::zeros({shape.nnz}, a.options());  // an empty dot product is 0
  at::Tensor out = at::empty({shape.nnz}, a.options());
  const FeatureMajorOperand ao = feature_major_operand(a);
  const FeatureMajorOperand bo = feature_major_operand(b);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "csr_sddmm_cuda", [&] {
    RowTilesArgs<scalar_t> args;
    args.offsets = row_offsets.const_data_ptr<int32_t>();
    args.cols = col_indices.const_data_ptr<int32_t>();
    args.other = ao.tensor.const_data_ptr<scalar_t>();
    args.ld_other = ao.ld;
    args.dense = bo.tensor.const_data_ptr<scalar_t>();
    args.ld_dense = bo.ld;
    args.dots = out.mutable_data_ptr<scalar_t>();
    args.n_rows = shape.n_rows;
    args.batch = batch;
    args.nnz = shape.nnz;
    const TilePlan plan = plan_row_tiles<scalar_t>(shape.n_rows, batch, {ao, bo}, true, device.index());
    run_row_tiles<scalar_t, Output::kNone, true>(args, plan, out);
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CUDA, m) { m.impl("csr_sddmm", &csr_sddmm_cuda); }

}  // namespace gpu
}  // namespace sparsekern
