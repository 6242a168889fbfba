// transpose_cpu: a contiguous copy of a 2-D tensor's transpose, out[j][i] = x[i][j].
//
// The sparse kernels work on feature-major activations (features, batch) while layers take and return
// (batch, features), so each layer transposes its input, output and their gradients. A plain strided
// copy ran at ~2.4 GB/s here (0.9 ms for a 2048x256 float matrix); walking 32x32 tiles keeps both the
// rows read and the rows written in L1 and runs at memory speed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "kernels.h"

namespace sparsekern {
namespace {

constexpr int64_t kTile = 32;

template <typename T>
void transpose_kernel(const T* __restrict x, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                      T* __restrict out) {
  const int64_t row_tiles = (rows + kTile - 1) / kTile;
  at::parallel_for(0, row_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      const int64_t i0 = t * kTile, i1 = std::min(rows, i0 + kTile);
      for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
        const int64_t j1 = std::min(cols, j0 + kTile);
        for (int64_t j = j0; j < j1; ++j) {
          for (int64_t i = i0; i < i1; ++i) out[j * rows + i] = x[i * row_stride + j * col_stride];
        }
      }
    }
  });
}

}  // namespace

at::Tensor transpose_cpu(const at::Tensor& x) {
  check_float(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "x: expected a 2-D tensor, got shape ", x.sizes());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor out = at::empty({cols, rows}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "transpose_cpu", [&] {
    transpose_kernel<scalar_t>(x.data_ptr<scalar_t>(), rows, cols, x.stride(0), x.stride(1), out.data_ptr<scalar_t>());
  });
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("transpose", &transpose_cpu); }

}  // namespace sparsekern
