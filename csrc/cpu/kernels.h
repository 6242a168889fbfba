// The CPU kernels, callable directly (C++ tests) as well as through the dispatcher (sparsekern:: ops).
// Semantics and argument order match sparsekern/_ops.py; dense operands are feature-major (features, B).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace sparsekern {

at::Tensor csr_spmm_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense);

// The same products transposed, plus an optional bias: (S @ dense)ᵀ + bias, (B, n_rows). The layout a
// layer returns, without a separate transpose pass.
at::Tensor csr_spmm_bt_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                           const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                           const std::optional<at::Tensor>& bias);

at::Tensor bsr_spmm_bt_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                           const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense,
                           const std::optional<at::Tensor>& bias);

at::Tensor csr_sddmm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_offsets,
                         const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                         const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv);

at::Tensor bsr_spmm_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                        const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                        const at::Tensor& t_perm, const at::Tensor& t_perm_inv, const at::Tensor& dense);

at::Tensor bsr_sddmm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_offsets,
                         const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                         const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv);

}  // namespace sparsekern

namespace sparsekern {

// Dense-fallback conversions (kept values <-> dense matrix); each is the other's gradient.
at::Tensor csr_to_dense_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                            int64_t n_cols);

at::Tensor csr_from_dense_cpu(const at::Tensor& dense, const at::Tensor& row_offsets, const at::Tensor& col_indices);


}  // namespace sparsekern

namespace sparsekern {

// Dense fallback hot path, driven by the bool mask: dense = expand(values) in place; values = dense[mask].
void mask_expand_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& mask,
                     const at::Tensor& dense);

at::Tensor mask_compress_cpu(const at::Tensor& dense, const at::Tensor& row_offsets, const at::Tensor& mask);

}  // namespace sparsekern

namespace sparsekern {

// A contiguous copy of x's transpose (2-D): the layout change at a sparse layer's boundary.
at::Tensor transpose_cpu(const at::Tensor& x);

}  // namespace sparsekern

namespace sparsekern {

// values[perm] along dim 0: kept values in the transposed layout's order (perm_inv is its inverse); with
// transpose_blocks, (n, bh, bw) blocks each transposed too.
at::Tensor permute_cpu(const at::Tensor& values, const at::Tensor& perm, const at::Tensor& perm_inv,
                       bool transpose_blocks);

}  // namespace sparsekern

#include <tuple>

namespace sparsekern {

// A whole layer on batch-major x (B, in): (x Wᵀ + bias, xᵀ); see linear.cpp.
std::tuple<at::Tensor, at::Tensor> csr_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                                  const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                                  const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                                                  const std::optional<at::Tensor>& bias);

std::tuple<at::Tensor, at::Tensor> bsr_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                                  const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                                  const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                                                  const std::optional<at::Tensor>& bias);

}  // namespace sparsekern

namespace sparsekern {

// One pass over S's entries: ((S @ dense)ᵀ, other[row(i)] · dense[col(i)]); see csr_spmm_sddmm.cpp.
std::tuple<at::Tensor, at::Tensor> csr_spmm_sddmm_bt_cpu(
    const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
    const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices, const at::Tensor& t_perm,
    const at::Tensor& t_perm_inv, const at::Tensor& dense, const at::Tensor& other);

}  // namespace sparsekern

namespace sparsekern {

// Sparse Conv2d (conv2d_*.cpp): W is the CSR matrix of the weight viewed as (C_out, C_in/groups·kH·kW);
// activations NCHW. Forward (+ bias), input gradient, and the weight gradient at kept weights only.
at::Tensor csr_conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                          const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                          const at::Tensor& t_col_indices, const at::Tensor& t_perm, const at::Tensor& t_perm_inv,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

at::Tensor csr_conv2d_input_grad_cpu(const at::Tensor& grad, const at::Tensor& values, const at::Tensor& row_offsets,
                                     const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                                     const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                                     const at::Tensor& t_perm_inv, at::IntArrayRef input_size,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups);

at::Tensor csr_conv2d_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& row_offsets,
                                      const at::Tensor& col_indices, const at::Tensor& t_row_offsets,
                                      const at::Tensor& t_col_indices, const at::Tensor& t_perm,
                                      const at::Tensor& t_perm_inv, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups);

}  // namespace sparsekern
