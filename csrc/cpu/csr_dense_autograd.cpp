// Autograd of csr_to_dense / csr_from_dense for CPU tensors, in C++: each is the other's gradient, as in
// sparsekern/_ops.py (_to_dense_backward, _from_dense_backward), which serves every other device.
//
// Why: the dense fallback of a small layer (a MobileNetV2 1x1 conv or depthwise conv, ~1 ms per step) is
// csr_to_dense then the dense op, and through torch.library's Python autograd wrapper the conversion pair
// cost a tenth of the step. Registered for AutogradCPU, which takes precedence over the Python
// registration (the Autograd alias key) for CPU tensors. Under create_graph=True the backward calls the
// other op through the dispatcher, so it is differentiable again.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "registry_ops.h"

namespace sparsekern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ToDenseSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using FromDenseSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

at::Tensor to_dense(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                    int64_t n_cols) {
  static const auto handle = registry_op<ToDenseSig>("sparsekern::csr_to_dense");
  return handle.call(values, row_offsets, col_indices, n_cols);
}

at::Tensor from_dense(const at::Tensor& dense, const at::Tensor& row_offsets, const at::Tensor& col_indices) {
  static const auto handle = registry_op<FromDenseSig>("sparsekern::csr_from_dense");
  return handle.call(dense, row_offsets, col_indices);
}

struct ToDenseFunction : public torch::autograd::Function<ToDenseFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values, const at::Tensor& row_offsets,
                            const at::Tensor& col_indices, int64_t n_cols) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({row_offsets, col_indices});
    return to_dense(values, row_offsets, col_indices, n_cols);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    return {from_dense(grads[0].contiguous(), saved[0], saved[1]), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct FromDenseFunction : public torch::autograd::Function<FromDenseFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& dense, const at::Tensor& row_offsets,
                            const at::Tensor& col_indices) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({row_offsets, col_indices});
    ctx->saved_data["n_cols"] = dense.dim() == 2 ? dense.size(1) : int64_t{0};  // the op checks the shape
    return from_dense(dense, row_offsets, col_indices);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    return {to_dense(grads[0].contiguous(), saved[0], saved[1], ctx->saved_data["n_cols"].toInt()), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor to_dense_autograd(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             int64_t n_cols) {
  return ToDenseFunction::apply(values, row_offsets, col_indices, n_cols);
}

at::Tensor from_dense_autograd(const at::Tensor& dense, const at::Tensor& row_offsets,
                               const at::Tensor& col_indices) {
  return FromDenseFunction::apply(dense, row_offsets, col_indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern, AutogradCPU, m) {
  m.impl("csr_to_dense", &to_dense_autograd);
  m.impl("csr_from_dense", &from_dense_autograd);
}

}  // namespace sparsekern
