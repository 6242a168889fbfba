// csr_linear_cpu / bsr_linear_cpu: a whole sparse layer on batch-major x (B, in): (x Wᵀ + bias, xᵀ).
//
// The same composition as the registry's reference (transpose, then the batch-major-output SpMM), done
// here so a CPU layer call does not go through Python for its forward; xᵀ is returned for the backward's
// SDDMM. Argument checks are the composed kernels' own, plus the input's shape, named as `x`.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "kernels.h"

namespace sparsekern {
namespace {

void check_input(const at::Tensor& x, int64_t features) {
  check_float(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "x: expected a 2-D (batch, features) tensor, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) == features, "x: expected ", features, " features (columns), got shape ", x.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> csr_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                                  const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                                  const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                                                  const std::optional<at::Tensor>& bias) {
  check_input(x, t_row_offsets.numel() - 1);
  at::Tensor xt = transpose_cpu(x);
  at::Tensor y = csr_spmm_bt_cpu(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                                 xt, bias);
  return {y, xt};
}

std::tuple<at::Tensor, at::Tensor> bsr_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                                  const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                                  const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                                                  const std::optional<at::Tensor>& bias) {
  check_input(x, (t_row_offsets.numel() - 1) * (values.dim() == 3 ? values.size(2) : 1));
  at::Tensor xt = transpose_cpu(x);
  at::Tensor y = bsr_spmm_bt_cpu(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                                 xt, bias);
  return {y, xt};
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("bsr_linear", &bsr_linear_cpu);
}

}  // namespace sparsekern
