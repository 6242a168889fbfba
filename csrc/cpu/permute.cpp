// permute_cpu: out[k] = values[perm[k]] along dim 0 (whole rows of any trailing shape); with
// transpose_blocks, values are (n, bh, bw) blocks and out[k] = values[perm[k]]ᵀ, (n, bw, bh).
//
// transpose_blocks gives a BSR layer's input-gradient SpMM its blocks in the transposed layout's order and
// orientation in one pass (a gather and then .transpose(1, 2).contiguous() were two).
//
// The transposed SpMM of the backward pass needs the kept values in the transposed (CSC) order, every step,
// because the optimizer changes them. torch's index_select did this single-threaded at ~1.1 ns per element
// (0.44 ms for 420k values, a fifth of the SpMM it feeds); this is a parallel gather, eight float indices per
// AVX-512 vector gather (1.7x faster than scalar loads at 420k values, 0.19 vs 0.32 ms). Indices are checked
// inside the copy loop (a corrupt permutation raises an error, never reads out of bounds) so the check
// costs no extra pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../checks.h"
#include "kernels.h"
#include "transpose_simd.h"

namespace sparsekern {
namespace {

// Returns false (and one offending index in *bad) if some index is out of range.
template <typename T>
bool gather_rows(const T* __restrict values, const int64_t* __restrict perm, int64_t n, int64_t inner,
                 int64_t block_rows, T* __restrict out, int64_t* bad) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    if (inner == 1) {
      int64_t k = begin;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        // Eight indices per vector gather; an out-of-range index leaves the rest to the checked loop below.
        const __m512i limit = _mm512_set1_epi64(n);
        for (; k + 8 <= end; k += 8) {
          const __m512i idx = _mm512_loadu_si512(perm + k);
          if (_mm512_cmpge_epu64_mask(idx, limit) != 0) break;
          _mm256_storeu_ps(out + k, _mm512_i64gather_ps(idx, values, 4));
        }
      }
#endif
      for (; k < end; ++k) {
        const int64_t i = perm[k];
        if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(n)) {
          ok.store(false);
          *bad = i;  // any one offending index will do for the message
          return;
        }
        out[k] = values[i];
      }
      return;
    }
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = perm[k];
      if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(n)) {
        ok.store(false);
        *bad = i;
        return;
      }
      if (block_rows > 0) {  // a (block_rows × inner/block_rows) block, stored transposed
        const int64_t block_cols = inner / block_rows;
        transpose_rows<T, false>(values + i * inner, 0, block_rows, block_cols, block_cols, 1, out + k * inner,
                                 block_rows, nullptr);
      } else {
        std::memcpy(out + k * inner, values + i * inner, inner * sizeof(T));
      }
    }
  });
  return ok.load();
}

}  // namespace

at::Tensor permute_cpu(const at::Tensor& values, const at::Tensor& perm, const at::Tensor& perm_inv,
                       bool transpose_blocks) {
  check_float(values, "values");
  check_index(perm, "perm", at::kLong);
  check_index(perm_inv, "perm_inv", at::kLong);
  TORCH_CHECK_VALUE(values.dim() >= 1, "values: expected at least one dimension, got a scalar");
  TORCH_CHECK_VALUE(!transpose_blocks || values.dim() == 3, "values: expected (n, bh, bw) blocks with "
                    "transpose_blocks, got shape ", values.sizes());
  const int64_t n = values.size(0);
  TORCH_CHECK_VALUE(perm.numel() == n && perm_inv.numel() == n, "perm, perm_inv: expected ", n,
                    " entries each (values.shape[0]), got ", perm.numel(), " and ", perm_inv.numel());
  const at::Tensor v = values.contiguous();
  const at::Tensor p = perm.contiguous();
  at::Tensor out = transpose_blocks ? at::empty({v.size(0), v.size(2), v.size(1)}, v.options()) : at::empty_like(v);
  if (out.numel() == 0) return out;
  const int64_t inner = v.numel() / n;
  bool ok = true;
  int64_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "permute_cpu", [&] {
    ok = gather_rows<scalar_t>(v.data_ptr<scalar_t>(), p.data_ptr<int64_t>(), n, inner,
                               transpose_blocks ? v.size(1) : 0, out.data_ptr<scalar_t>(), &bad);
  });
  TORCH_CHECK_VALUE(ok, "perm: expected indices in [0, ", n, "), got ", bad);
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) { m.impl("permute", &permute_cpu); }

}  // namespace sparsekern
