// Argument checks for the CUDA kernels: the CPU ones of csrc/checks.h (which are CPU-only), for tensors on
// one CUDA device and for the half types too. Each message names the argument, what was expected and what
// was given; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError. The wording
// follows sparsekern/_ops.py's _check_* where the same thing is checked.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "layout_validation.cuh"

namespace sparsekern {
namespace gpu {

// The device of the first CUDA tensor among the arguments (the dispatcher picked this kernel because one of
// them is on CUDA); every argument is then required to be on it.
inline c10::Device common_cuda_device(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->is_cuda()) return t->device();
  }
  TORCH_CHECK_VALUE(false, "expected at least one CUDA tensor among the arguments");
  return c10::Device(c10::kCUDA);
}

inline void check_device(const at::Tensor& t, const char* name, c10::Device device) {
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", device, ", got one on ", t.device());
}

inline void check_index(const at::Tensor& t, const char* name, at::ScalarType dtype, c10::Device device) {
  check_device(t, name, device);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype && t.dim() == 1, name, ": expected a 1-D ", dtype, " tensor, got ",
                   t.scalar_type(), " with shape ", t.sizes());
  // The kernels index the raw arrays: no strided views.
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_kernel_float(t.scalar_type()), name, ": expected float32, float64, float16 or bfloat16, got ",
                   t.scalar_type());
}

// The kept values of a CSR layout: a 1-D float tensor with one entry per stored entry (any stride).
inline void check_values(const at::Tensor& values, int64_t nnz, c10::Device device) {
  check_device(values, "values", device);
  check_float(values, "values");
  TORCH_CHECK_VALUE(values.dim() == 1 && values.size(0) == nnz, "values: expected shape (", nnz, ",), got ",
                    values.sizes());
}

// A feature-major (features, batch) operand with `rows` features and the dtype of `like` (the values, or a).
inline void check_dense(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows,
                        c10::Device device, const char* like = "the values") {
  check_device(t, name, device);
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected a 2-D (features, batch) tensor, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, " (same as ", like, "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.size(0) == rows, name, ": expected ", rows, " rows, got shape ", t.sizes());
}

// An optional bias for an output with n_rows features: undefined if absent, else contiguous (n_rows,).
inline at::Tensor checked_bias(const std::optional<at::Tensor>& bias, at::ScalarType dtype, int64_t n_rows,
                               c10::Device device) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  TORCH_CHECK_TYPE(bias->scalar_type() == dtype, "bias: expected dtype ", dtype, ", got ", bias->scalar_type());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n_rows, "bias: expected shape (", n_rows, ",), got ",
                    bias->sizes());
  check_device(*bias, "bias", device);
  return bias->contiguous();
}

struct LayoutShape {
  int64_t n_rows, n_cols, nnz;
};

// The six layout tensors every op takes. Only the CSR half (row_offsets, col_indices) is read by the kernels
// (the transposed products are called with the halves swapped), so only its content is checked; the other
// four are checked for device, dtype and size, as on the CPU.
inline LayoutShape check_layout(const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                const at::Tensor& t_row_offsets, const at::Tensor& t_col_indices,
                                const at::Tensor& t_perm, const at::Tensor& t_perm_inv, c10::Device device) {
  check_index(row_offsets, "row_offsets", at::kInt, device);
  check_index(col_indices, "col_indices", at::kInt, device);
  check_index(t_row_offsets, "t_row_offsets", at::kInt, device);
  check_index(t_col_indices, "t_col_indices", at::kInt, device);
  check_index(t_perm, "t_perm", at::kLong, device);
  check_index(t_perm_inv, "t_perm_inv", at::kLong, device);
  TORCH_CHECK_VALUE(row_offsets.numel() >= 1, "row_offsets: expected at least one entry (n_rows + 1), got 0");
  TORCH_CHECK_VALUE(t_row_offsets.numel() >= 1, "t_row_offsets: expected at least one entry (n_cols + 1), got 0");
  const int64_t nnz = col_indices.numel();
  TORCH_CHECK_VALUE(t_col_indices.numel() == nnz && t_perm.numel() == nnz && t_perm_inv.numel() == nnz,
                    "layout: col_indices, t_col_indices, t_perm and t_perm_inv must all have nnz=", nnz,
                    " entries, got ", t_col_indices.numel(), ", ", t_perm.numel(), ", ", t_perm_inv.numel());
  const int64_t n_cols = t_row_offsets.numel() - 1;
  check_compressed_cached(row_offsets, col_indices, n_cols, "row_offsets", "col_indices");  // layout_validation.cuh
  return {row_offsets.numel() - 1, n_cols, nnz};
}

}  // namespace gpu
}  // namespace sparsekern
