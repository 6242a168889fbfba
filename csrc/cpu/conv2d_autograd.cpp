// Autograd of csr_conv2d for CPU tensors, in C++.
//
// The formula is that of sparsekern/_ops_conv.py (register_conv_autograd), which still serves every other
// device and installs without the extension; the tests hold both to the same float64 oracle. Why a second
// copy: torch.library's Python autograd wrapper (argument normalisation, a Python autograd Function, the
// backward body, each op call through its own Python wrapper) cost about 0.4 ms per forward+backward, more
// than the kernels of a MobileNetV2 depthwise layer at 90 % sparsity (384 channels on 4x4 maps, batch 64:
// 0.27 ms of kernels in a 0.75 ms step). Registered for AutogradCPU, which takes precedence over the Python
// registration (the Autograd alias key) for CPU tensors.
//
// Every op is called through the dispatcher, so under create_graph=True (grad mode on in the backward) the
// backward is itself differentiable through the ops' own autograd, as in Python.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "registry_ops.h"

namespace sparsekern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ConvSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                           at::IntArrayRef, int64_t);
using InputGradSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                int64_t);
using WeightGradSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);

// db = Σ over batch and pixels of dy, per channel. ATen's strided reduction over (0, 2, 3) took 60 us on a
// (64, 384, 4, 4) gradient where summing the batch first took 18 us; from 16x16 maps on, the one-pass
// reduction is the faster (106 vs 142 us).
at::Tensor bias_grad(const at::Tensor& grad) {
  if (grad.size(2) * grad.size(3) <= 64 && grad.is_contiguous())
    return grad.sum(0).view({grad.size(1), -1}).sum(1);
  return grad.sum({0, 2, 3});
}

struct Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                               const at::Tensor& row_offsets, const at::Tensor& col_indices,
                               const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                               const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups) {
    static const auto conv = registry_op<ConvSig>("sparsekern::csr_conv2d");
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // the CPU kernel, not this function again
      y = conv.call(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, bias,
                    kernel_size, stride, padding, dilation, groups);
    }
    ctx->save_for_backward({x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv});
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();  // an absent bias is no graph input
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto input_grad = registry_op<InputGradSig>("sparsekern::csr_conv2d_input_grad");
    static const auto weight_grad = registry_op<WeightGradSig>("sparsekern::csr_conv2d_weight_grad");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &values = saved[1];
    const std::vector<int64_t> kernel_size = ctx->saved_data["kernel_size"].toIntVector(),
                               stride = ctx->saved_data["stride"].toIntVector(),
                               padding = ctx->saved_data["padding"].toIntVector(),
                               dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool need_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(8);
    // Without create_graph nothing below is recorded: skip the ops' own (Python) autograd wrappers.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    const at::Tensor& grad = grads[0];
    at::Tensor d_x, d_values, d_bias;
    if (ctx->needs_input_grad(0)) {
      d_x = input_grad.call(grad, values, saved[2], saved[3], saved[4], saved[5], saved[6], saved[7],
                            x.sizes().slice(2), kernel_size, stride, padding, dilation, groups);
    }
    if (ctx->needs_input_grad(1)) {
      d_values = weight_grad.call(grad, x, saved[2], saved[3], saved[4], saved[5], saved[6], saved[7], kernel_size,
                                  stride, padding, dilation, groups);
    }
    if (need_bias) d_bias = at::GradMode::is_enabled() ? grad.sum({0, 2, 3}) : bias_grad(grad);
    return {d_x,    d_values,     at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), d_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                           const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                           const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return Conv2dFunction::apply(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                               t_perm_inv, bias, kernel_size, stride, padding, dilation, groups)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsekern, AutogradCPU, m) { m.impl("csr_conv2d", &conv2d_autograd); }

}  // namespace sparsekern
