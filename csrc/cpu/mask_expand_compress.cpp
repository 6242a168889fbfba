// mask_expand_cpu / mask_compress_cpu: kept values <-> dense matrix, driven by the bool mask.
//
//   mask_expand_(values, row_offsets, mask, dense): dense = 0 where ~mask, the row's next value where mask
//   mask_compress(dense, row_offsets, mask) -> dense[mask] in row-major order
//
// The dense fallback's per-step hot path (refill the dense weight, gather the weight gradient). With
// AVX-512 one expand-load / compress (register form, then a masked store) moves 16 floats under a 16-bit
// mask, with AVX2 a table-driven permute moves 8, instead of one indexed store or load per kept value;
// row_offsets tell each thread where its rows' values start.
//
// A mask and row_offsets that disagree must raise, not read or write past a row: each row kernel checks
// its bound as it goes (per SIMD step, per element in the scalar loop; cheaper than a separate counting
// pass over the mask) and reports failure.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SPARSEKERN_MASK_SIMD 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define SPARSEKERN_MASK_AVX2 1
#endif

#include "../checks.h"
#include "kernels.h"
#include "partition.h"

namespace sparsekern {
namespace {

#ifdef SPARSEKERN_MASK_SIMD
inline __mmask16 keep_bits(const bool* keep) {
  return _mm_test_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep)), _mm_set1_epi8(1));
}
#endif

#ifdef SPARSEKERN_MASK_AVX2
// AVX2 has no expand-load / compress-store: a permute by a per-pattern index vector does the same for 8
// floats. For each 8-bit keep pattern m: expand[m][lane] = the rank of a kept lane among the kept ones (the
// value it takes), compress[m][k] = the lane of the k-th kept one.
struct MaskPermutes {
  alignas(32) int32_t expand[256][8];
  alignas(32) int32_t compress[256][8];
};

inline const MaskPermutes& mask_permutes() {
  static const MaskPermutes tables = [] {
    MaskPermutes t{};
    for (int m = 0; m < 256; ++m) {
      int rank = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if ((m >> lane) & 1) {
          t.expand[m][lane] = rank;
          t.compress[m][rank++] = lane;
        }
      }
    }
    return t;
  }();
  return tables;
}

inline unsigned keep_bits8(const bool* keep) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep));
  return static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpgt_epi8(bytes, _mm_setzero_si128()))) & 0xFFu;
}

// Lanes whose bit is set in m: all ones, others zero.
inline __m256 lane_mask8(unsigned m) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bit);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, bit));
}
#endif

template <typename T>
inline bool expand_row(const T* src, const T* src_end, const bool* keep, int64_t n, T* dst) {
  int64_t j = 0;
#ifdef SPARSEKERN_MASK_SIMD
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 16 <= n; j += 16) {
      const __mmask16 m = keep_bits(keep + j);
      const unsigned count = _mm_popcnt_u32(m);
      if (src + count > src_end) return false;
      _mm512_storeu_ps(dst + j, _mm512_maskz_expandloadu_ps(m, src));
      src += count;
    }
  }
#elif defined(SPARSEKERN_MASK_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const MaskPermutes& perm = mask_permutes();
    // Reads 8 values whatever the count, so it stops 8 short of the row's end; the loop below finishes.
    for (; j + 8 <= n && src + 8 <= src_end; j += 8) {
      const unsigned m = keep_bits8(keep + j);
      const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(perm.expand[m]));
      const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(src), index);
      _mm256_storeu_ps(dst + j, _mm256_and_ps(v, lane_mask8(m)));
      src += __builtin_popcount(m);
    }
  }
#endif
  // The rest of the row (all of it for double, or without SIMD): branch-free, since a random 50% mask
  // mispredicts a branch on every other element (a branchy loop here was 6 ms of a 512x512x3x3 layer's
  // 200 ms dense-fallback step on AVX2). The loads and the bound test stay in range: past the row's last
  // value, v is 0 and `over` records any kept position.
  // The value is selected with an integer mask, not `k ? v : 0`, which compilers may still turn into a branch.
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const T zero = T(0);
  bool over = false;
  for (; j < n; ++j) {
    const bool k = keep[j];
    const bool in_range = src < src_end;
    Bits bits;
    std::memcpy(&bits, in_range ? src : &zero, sizeof(T));
    bits &= Bits{0} - static_cast<Bits>(k);
    std::memcpy(dst + j, &bits, sizeof(T));
    over |= k & !in_range;
    src += k & in_range;
  }
  return !over && src == src_end;
}

template <typename T>
inline bool compress_row(const T* src, const bool* keep, int64_t n, T* dst, const T* dst_end) {
  int64_t j = 0;
#ifdef SPARSEKERN_MASK_SIMD
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 16 <= n; j += 16) {
      const __mmask16 m = keep_bits(keep + j);
      const unsigned count = _mm_popcnt_u32(m);
      if (dst + count > dst_end) return false;
      // Compress in a register, then store the first `count` lanes: the memory form of VPCOMPRESSPS is
      // microcoded on AMD Zen 4 (3.1 ms for a 4096x1024 weight at 50 % there, against 0.36 ms for the
      // expand-load of the same mask); the register form and a masked store are fast on both vendors' cores
      // by their published instruction tables, measured here on Zen 4 only (the Xeon was not re-measured).
      const __mmask16 head = static_cast<__mmask16>((1u << count) - 1u);  // count <= 16: no overflow in 32 bits
      _mm512_mask_storeu_ps(dst, head, _mm512_maskz_compress_ps(m, _mm512_loadu_ps(src + j)));
      dst += count;
    }
  }
#elif defined(SPARSEKERN_MASK_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const MaskPermutes& perm = mask_permutes();
    // Writes 8 lanes whatever the count (the extra ones are overwritten next), so it stops 8 short of the
    // row's end; the loop below finishes.
    for (; j + 8 <= n && dst + 8 <= dst_end; j += 8) {
      const unsigned m = keep_bits8(keep + j);
      const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(perm.compress[m]));
      _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(_mm256_loadu_ps(src + j), index));
      dst += __builtin_popcount(m);
    }
  }
#endif
  // Branch-free, as expand_row: every element is written, to the next slot if there is one, else to a
  // local sink; only kept ones advance the slot.
  bool over = false;
  T sink;
  for (; j < n; ++j) {
    const bool k = keep[j];
    const bool in_range = dst < dst_end;
    *(in_range ? dst : &sink) = src[j];
    over |= k & !in_range;
    dst += k & in_range;
  }
  return !over && dst == dst_end;
}

void check_mask_and_offsets(const at::Tensor& mask, const at::Tensor& row_offsets) {
  check_cpu(mask, "mask");
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask: expected a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.is_contiguous(), "mask: expected a contiguous 2-D tensor, got shape ",
                    mask.sizes());
  check_index(row_offsets, "row_offsets", at::kInt);
  TORCH_CHECK_VALUE(row_offsets.is_contiguous() && row_offsets.numel() == mask.size(0) + 1, "row_offsets: expected ",
                    mask.size(0) + 1, " entries, got ", row_offsets.numel());
  const int32_t* off = row_offsets.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(off[0] == 0, "row_offsets: expected to start at 0, got ", off[0]);
  for (int64_t r = 0; r < mask.size(0); ++r) {
    TORCH_CHECK_VALUE(off[r] <= off[r + 1], "row_offsets: decreases at row ", r);
  }
}

constexpr const char* kMismatch =
    "row_offsets: some row's entry count differs from what the mask keeps (they must describe the same mask)";

}  // namespace

// Rows split across threads, except for small masks (under ATen's grain size of 32K elements, e.g. a conv
// layer's weight), which one thread copies: waking the pool cost more than the copy, up to 0.5 ms per
// training step of a 3 ms MobileNet layer's dense fallback.
template <typename Body>
void over_mask_rows(const at::Tensor& mask, const int32_t* offsets, const Body& body) {
  if (mask.numel() < at::internal::GRAIN_SIZE) {
    body(0, mask.size(0));
  } else {
    parallel_over_rows(offsets, mask.size(0), body);
  }
}

void mask_expand_cpu(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& mask,
                     const at::Tensor& dense) {
  check_mask_and_offsets(mask, row_offsets);
  check_float(values, "values");
  check_float(dense, "dense");
  TORCH_CHECK_TYPE(values.scalar_type() == dense.scalar_type(), "values: expected dtype ", dense.scalar_type(),
                   " (the dense buffer's), got ", values.scalar_type());
  TORCH_CHECK_VALUE(dense.is_contiguous() && dense.sizes() == mask.sizes(),
                    "dense: expected a contiguous tensor of the mask's shape ", mask.sizes(), ", got ", dense.sizes());
  const int32_t* off = row_offsets.data_ptr<int32_t>();
  const int64_t nnz = off[mask.size(0)];
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == nnz, "values: expected shape (", nnz, ",), got ",
                    values.sizes());
  const at::Tensor v = values.contiguous();
  const int64_t n_cols = mask.size(1);
  std::atomic<bool> mismatch{false};
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mask_expand_cpu", [&] {
    const scalar_t* src = v.data_ptr<scalar_t>();
    scalar_t* dst = dense.data_ptr<scalar_t>();
    const bool* keep = mask.data_ptr<bool>();
    over_mask_rows(mask, off, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t r = row_begin; r < row_end; ++r) {
        if (!expand_row(src + off[r], src + off[r + 1], keep + r * n_cols, n_cols, dst + r * n_cols)) mismatch = true;
      }
    });
  });
  TORCH_CHECK_VALUE(!mismatch, kMismatch);
}

at::Tensor mask_compress_cpu(const at::Tensor& dense, const at::Tensor& row_offsets, const at::Tensor& mask) {
  check_mask_and_offsets(mask, row_offsets);
  check_float(dense, "dense");
  TORCH_CHECK_VALUE(dense.sizes() == mask.sizes(), "dense: expected the mask's shape ", mask.sizes(), ", got ",
                    dense.sizes());
  const at::Tensor d = dense.contiguous();
  const int32_t* off = row_offsets.data_ptr<int32_t>();
  const int64_t n_cols = mask.size(1);
  at::Tensor out = at::empty({off[mask.size(0)]}, d.options());
  std::atomic<bool> mismatch{false};
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "mask_compress_cpu", [&] {
    const scalar_t* src = d.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const bool* keep = mask.data_ptr<bool>();
    over_mask_rows(mask, off, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t r = row_begin; r < row_end; ++r) {
        if (!compress_row(src + r * n_cols, keep + r * n_cols, n_cols, dst + off[r], dst + off[r + 1])) {
          mismatch = true;
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!mismatch, kMismatch);
  return out;
}

TORCH_LIBRARY_IMPL(sparsekern, CPU, m) {
  m.impl("mask_expand_", &mask_expand_cpu);
  m.impl("mask_compress", &mask_compress_cpu);
}

}  // namespace sparsekern
