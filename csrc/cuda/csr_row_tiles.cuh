// The one CUDA kernel behind the CSR Linear ops: a warp walks the stored entries of one row of S for one
// tile of the batch, and the template decides what it makes of each dense slice it loads.
//
//   csr_spmm           out[r, tile]       = Σ_i values[i] · dense[col(i), tile]     (n_rows, B)
//   csr_spmm_bt        out[tile, r]       = the same, transposed, + bias[r]          (B, n_rows)
//   csr_sddmm          dots[i]           += other[r, tile] · dense[col(i), tile]    (nnz,)
//   csr_spmm_sddmm_bt  both of the last two from the same loaded slices
//
// Tiling. A block is 8 warps, one row each (rows blockIdx.x * 8 + warp); blockIdx.y picks batch tiles
// (grid-strided, so any batch fits gridDim.y <= 65535). A tile is 32 lanes × V consecutive batch columns,
// V = 16 bytes / element where alignment allows: every lane issues one 128-bit load per entry, a warp reads
// 512 contiguous bytes of dense's row col(i) (narrower packs for small problems: plan_row_tiles). Dense
// operands are feature-major with unit column stride and any row stride (transpose()'s padded rows included).
//
// Entries. The warp loads 32 (col, value) pairs at once, one per lane, coalesced, and broadcasts each with
// __shfl_sync; entries then go 4 (16-byte packs) or 8 at a time, their slice loads issued before any FMA so
// that 64 bytes per lane are in flight. Past the row's end the broadcast repeats the last entry (its slice is
// in L1 already) and the FMA is skipped, so the loads need no branch.
//
// Sums. Each output element sums its row's entries in order, in float for half types (double for double),
// blocked: each stage of 32 entries is summed by its own FMA chain, then added to the row's total. A plain
// chain over a 700-entry row had ~3x the float32 error of a blocked GEMM (emulated, vs MKL), over DESIGN.md's
// 2x; blocked, at most 1.4x (rows of 20 to 4000 entries). The order does not depend on V or on the grid, so
// csr_spmm_bt is bit for bit csr_spmm transposed, and so is the fused kernel's output. A dot
// product's partial sums are spread over the lanes; 16 entries' partials are summed at once by a transposing
// butterfly (16 shuffles for 16 sums instead of 5 each). When the batch spans several tiles, the tiles of
// blockIdx.y add into partial[blockIdx.y] (the same lane owns an entry in every tile, so no atomics), and a
// second kernel sums the (at most kMaxDotSplits) partials in a fixed order: deterministic.
//
// Work balance: one warp per row, so the scheduler balances rows of different lengths across SMs; only the
// 8 rows of one block wait for each other (batch-major output, at the transpose's __syncthreads).
//
// Batch-major output. csr_spmm_bt writes out[b, r]: row-contiguous stores from a warp would be 32 separate
// sectors, so the 8 rows × tile are staged in shared memory and written with consecutive threads on
// consecutive rows (8 rows = one 32-byte sector of floats per batch column).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

namespace sparsekern {
namespace gpu {
namespace {  // internal linkage: every .cu file instantiates its own kernels

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 8;                       // one warp per row
constexpr int kThreads = kRowsPerBlock * kWarpSize;
constexpr int kStage = 32;                             // entries staged per warp, one per lane
constexpr int kGroup = 16;                             // entries per transposing dot reduction
#ifndef SK_MIN_BLOCKS_PRODUCT
#define SK_MIN_BLOCKS_PRODUCT 3
#endif
#ifndef SK_MIN_BLOCKS_DOTS
#define SK_MIN_BLOCKS_DOTS 2
#endif
// Resident blocks per SM the register allocation must allow (__launch_bounds__): 3 (24 warps, <= 80
// registers) for the products; 2 (16 warps, <= 128) with dot products, whose 16 partial sums per lane and
// transposing reduction need ~100-130 registers (ptxas sm_90 without a bound; capped at 80 they spilled up
// to 200 bytes). Overridable at build time to tune on a GPU.
constexpr int kMinBlocksProduct = SK_MIN_BLOCKS_PRODUCT;
constexpr int kMinBlocksDots = SK_MIN_BLOCKS_DOTS;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxDotSplits = 8;                   // partial dot buffers when the batch spans tiles
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kStage % kGroup == 0 && kGroup == 16, "tiling constants");

// Entries whose slices are loaded before their FMAs: 64 bytes in flight per lane (4 packs of 16 bytes, 8 of
// 8 bytes or less). 8 packs of 16 bytes took 128-174 registers (ptxas, sm_90), one block per SM.
template <typename T, int V>
constexpr int loads_in_flight() {
  return sizeof(T) * V >= 16 ? 4 : 8;
}

enum class Output { kNone, kFeatureMajor, kBatchMajor };

// V elements loaded or stored as one 2/4/8/16-byte access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T x[V];
};

template <int Bytes>
struct RawOf;
template <>
struct RawOf<2> { using type = unsigned short; };
template <>
struct RawOf<4> { using type = unsigned int; };
template <>
struct RawOf<8> { using type = uint2; };
template <>
struct RawOf<16> { using type = uint4; };

// Through the read-only data cache: dense slices are re-read by every row that has an entry in that column.
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  using Raw = typename RawOf<sizeof(T) * V>::type;
  const Raw raw = __ldg(reinterpret_cast<const Raw*>(p));
  Pack<T, V> out;
  memcpy(&out, &raw, sizeof(out));
  return out;
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& value) {
  using Raw = typename RawOf<sizeof(T) * V>::type;
  Raw raw;
  memcpy(&raw, &value, sizeof(raw));
  *reinterpret_cast<Raw*>(p) = raw;
}

__device__ __forceinline__ float mul_add(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double mul_add(double a, double b, double c) { return fma(a, b, c); }

// One step of the transposing butterfly: lanes exchange the half of their O·2 sums the partner keeps.
template <int O, typename A>
__device__ __forceinline__ void scatter_step(A (&d)[kGroup], int lane) {
  const bool upper = (lane & O) != 0;
#pragma unroll
  for (int i = 0; i < O; ++i) {
    const A send = upper ? d[i] : d[i + O];
    const A keep = upper ? d[i + O] : d[i];
    d[i] = keep + __shfl_xor_sync(kFullMask, send, O);
  }
}

// Every lane holds 16 partial sums d[0..15]; returns, in lane l, the sum over all 32 lanes of d[l % 16].
// After the step with offset O a lane keeps the sums whose index bit O equals its own lane bit O, so after
// offsets 8, 4, 2, 1 lane l holds index l % 16 summed over the 16 lanes that share its bit 4; the last
// shuffle adds the other half-warp. 16 shuffles for 16 sums.
template <typename A>
__device__ __forceinline__ A group_sums(A (&d)[kGroup], int lane) {
  scatter_step<8>(d, lane);
  scatter_step<4>(d, lane);
  scatter_step<2>(d, lane);
  scatter_step<1>(d, lane);
  return d[0] + __shfl_xor_sync(kFullMask, d[0], 16);
}

template <typename T>
struct RowTilesArgs {
  using acc_t = at::opmath_type<T>;
  const T* values = nullptr;    // (nnz,); unused without an output (SDDMM)
  const int32_t* offsets = nullptr;  // (n_rows + 1,), validated: 0..nnz, non-decreasing
  const int32_t* cols = nullptr;     // (nnz,), validated: in [0, n_cols)
  const T* dense = nullptr;     // (n_cols, batch), row stride ld_dense, unit column stride
  const T* other = nullptr;     // (n_rows, batch), row stride ld_other; dots only
  const T* bias = nullptr;      // (n_rows,) or nullptr; batch-major output only
  T* out = nullptr;             // (n_rows, batch) feature-major or (batch, n_rows) batch-major, contiguous
  T* dots = nullptr;            // (nnz,): written directly when the batch is a single tile
  acc_t* partial = nullptr;     // (gridDim.y, nnz) partial dots when it is more than one tile
  int64_t n_rows = 0, batch = 0, ld_dense = 0, ld_other = 0, nnz = 0, n_tiles = 0;
};

template <typename T, int V, Output kOut, bool kDots>
__global__ void __launch_bounds__(kThreads, kDots ? kMinBlocksDots : kMinBlocksProduct)
    csr_row_tiles_kernel(const RowTilesArgs<T> a) {
  using acc_t = at::opmath_type<T>;
  constexpr int kTile = kWarpSize * V;
  constexpr int kBatch = loads_in_flight<T, V>();
  static_assert(kGroup % kBatch == 0, "a dot group is a whole number of load batches");
  constexpr bool kProduct = kOut != Output::kNone;
  constexpr bool kStaged = kOut == Output::kBatchMajor;
  // Row pitch: with +4 floats (+2 doubles) the write-out's 8 rows × 4 columns per warp (8 × 2 per half-warp
  // for doubles) fall into distinct banks.
  constexpr int kPitch = kTile + 16 / static_cast<int>(sizeof(acc_t));
  __shared__ acc_t staged[kStaged ? kRowsPerBlock : 1][kStaged ? kPitch : 1];

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const int64_t row = row0 + warp;
  const bool row_ok = row < a.n_rows;
  // Warp-uniform bounds: every loop below that shuffles runs the same trip count in all 32 lanes.
  const int64_t begin = row_ok ? a.offsets[row] : 0;
  const int64_t end = row_ok ? a.offsets[row + 1] : 0;

  for (int64_t t = blockIdx.y; t < a.n_tiles; t += gridDim.y) {
    const int64_t b = t * kTile + static_cast<int64_t>(lane) * V;  // this lane's first batch column
    const bool lane_ok = b < a.batch;  // batch % V == 0 (host), so the lane's V columns are all in range
    acc_t acc[kProduct ? V : 1];
    acc_t o[kDots ? V : 1];
#pragma unroll
    for (int v = 0; v < (kProduct ? V : 1); ++v) acc[v] = acc_t(0);
#pragma unroll
    for (int v = 0; v < (kDots ? V : 1); ++v) o[v] = acc_t(0);
    if constexpr (kDots) {
      if (row_ok && lane_ok) {
        const Pack<T, V> p = load_pack<T, V>(a.other + row * a.ld_other + b);
#pragma unroll
        for (int v = 0; v < V; ++v) o[v] = static_cast<acc_t>(p.x[v]);
      }
    }

    for (int64_t s = begin; s < end; s += kStage) {
      const int count = static_cast<int>(end - s < kStage ? end - s : kStage);  // 1..32, warp-uniform
      int my_col = 0;
      acc_t my_value = acc_t(0);
      if (lane < count) {
        my_col = __ldg(a.cols + s + lane);
        if constexpr (kProduct) my_value = static_cast<acc_t>(a.values[s + lane]);
      }
      acc_t part[kProduct ? V : 1];  // this stage's sum, added to acc at its end (see "Sums" above)
#pragma unroll
      for (int v = 0; v < (kProduct ? V : 1); ++v) part[v] = acc_t(0);
#pragma unroll
      for (int g = 0; g < kStage; g += kGroup) {
        if (g >= count) break;  // warp-uniform
        acc_t d[kDots ? kGroup : 1];
#pragma unroll
        for (int j = 0; j < (kDots ? kGroup : 1); ++j) d[j] = acc_t(0);
#pragma unroll
        for (int j0 = 0; j0 < kGroup; j0 += kBatch) {
          if (g + j0 >= count) break;  // warp-uniform
          Pack<T, V> x[kBatch];
          acc_t w[kBatch];
#pragma unroll
          for (int k = 0; k < kBatch; ++k) {
            // Past the end: the last entry again (in range, its slice already cached); its FMA is skipped.
            const int src = g + j0 + k < count ? g + j0 + k : count - 1;
            const int c = __shfl_sync(kFullMask, my_col, src);
            w[k] = kProduct ? __shfl_sync(kFullMask, my_value, src) : acc_t(0);
            if (lane_ok) x[k] = load_pack<T, V>(a.dense + static_cast<int64_t>(c) * a.ld_dense + b);
          }
#pragma unroll
          for (int k = 0; k < kBatch; ++k) {
            if (lane_ok && g + j0 + k < count) {
#pragma unroll
              for (int v = 0; v < V; ++v) {
                const acc_t xv = static_cast<acc_t>(x[k].x[v]);
                if constexpr (kProduct) part[v] = mul_add(w[k], xv, part[v]);
                if constexpr (kDots) d[j0 + k] = mul_add(o[v], xv, d[j0 + k]);
              }
            }
          }
        }
        if constexpr (kDots) {
          // All 32 lanes shuffle (lanes past the batch hold zeros); lane e < 16 owns entry s + g + e.
          const acc_t sum = group_sums(d, lane);
          const int e = g + lane;
          if (lane < kGroup && e < count) {
            const int64_t i = s + e;
            if (a.n_tiles == 1) {
              a.dots[i] = static_cast<T>(sum);
            } else {
              // This block's tiles t = blockIdx.y, + gridDim.y, ...: the first writes, the later ones add
              // (same thread, program order). Every split has a first tile: gridDim.y <= n_tiles.
              acc_t* p = a.partial + static_cast<int64_t>(blockIdx.y) * a.nnz + i;
              *p = t == static_cast<int64_t>(blockIdx.y) ? sum : *p + sum;
            }
          }
        }
      }
      if constexpr (kProduct) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += part[v];
      }
    }

    if constexpr (kOut == Output::kFeatureMajor) {
      if (row_ok && lane_ok) {
        Pack<T, V> p;
#pragma unroll
        for (int v = 0; v < V; ++v) p.x[v] = static_cast<T>(acc[v]);
        store_pack<T, V>(a.out + row * a.batch + b, p);
      }
    }
    if constexpr (kStaged) {
      // Rounded to T here, as csr_spmm would return it; the bias is then added as torch adds two T tensors
      // (in acc_t, rounded once), so the result equals csr_spmm(...).t() + bias bit for bit.
      if (lane_ok) {
#pragma unroll
        for (int v = 0; v < V; ++v) staged[warp][lane * V + v] = static_cast<acc_t>(static_cast<T>(acc[v]));
      }
      __syncthreads();
      // Consecutive threads take consecutive rows of one batch column: out[col, row0 .. row0 + 7].
      for (int idx = static_cast<int>(threadIdx.x); idx < kRowsPerBlock * kTile; idx += kThreads) {
        const int r = idx % kRowsPerBlock;
        const int c = idx / kRowsPerBlock;
        const int64_t out_row = row0 + r;
        const int64_t out_col = t * kTile + c;
        if (out_row < a.n_rows && out_col < a.batch) {
          acc_t y = staged[r][c];
          if (a.bias != nullptr) y += static_cast<acc_t>(a.bias[out_row]);
          a.out[out_col * a.n_rows + out_row] = static_cast<T>(y);
        }
      }
      __syncthreads();  // the next tile overwrites `staged`
    }
  }
}

// dots[i] = Σ_k partial[k, i], k in order: the deterministic end of a multi-tile dot product.
template <typename T>
__global__ void __launch_bounds__(256)
    sum_partial_dots_kernel(const at::opmath_type<T>* partial, int64_t splits, int64_t nnz, T* dots) {
  using acc_t = at::opmath_type<T>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nnz; i += step) {
    acc_t sum = partial[i];
    for (int64_t k = 1; k < splits; ++k) sum += partial[k * nnz + i];
    dots[i] = static_cast<T>(sum);
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A feature-major operand as the kernel reads it: rows with unit column stride and row stride ld. Any row
// stride is read in place (transpose()'s padded one included); only a non-unit column stride is copied.
struct FeatureMajorOperand {
  at::Tensor tensor;
  int64_t ld;
};

inline FeatureMajorOperand feature_major_operand(const at::Tensor& t) {
  const int64_t rows = t.size(0), batch = t.size(1);
  if (batch > 1 && t.stride(1) != 1) return {t.contiguous(), batch};
  // A single row is never stepped over; a single column ignores stride(1).
  return {t, rows > 1 ? t.stride(0) : batch};
}

inline int multiprocessor_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, static_cast<int>(device)));
  return count;
}

// How a call is cut: the pack width V (elements per lane per load), the batch tiles and the splits
// (gridDim.y). The sums do not depend on V; the dot products' summation order does, but deterministically.
struct TilePlan {
  int v;
  int64_t n_tiles, splits;
};

// V: the widest pack of 16 bytes or less that the batch, every operand's row stride and base address allow,
// then narrower while that costs nothing (the batch fits in half a tile, so lanes would idle) or buys needed
// parallelism (fewer than 32 warps per SM would run). Splits: as many as the grid allows for the products;
// for dot products only as many as the parallelism needs (each split costs nnz partial sums), at most 8.
template <typename T>
TilePlan plan_row_tiles(int64_t n_rows, int64_t batch, std::initializer_list<FeatureMajorOperand> operands,
                        bool dots, c10::DeviceIndex device) {
  auto fits = [&](int v) {
    if (batch % v != 0) return false;
    for (const FeatureMajorOperand& op : operands) {
      const auto address = reinterpret_cast<uintptr_t>(op.tensor.const_data_ptr());
      if (op.ld % v != 0 || address % (static_cast<uintptr_t>(v) * sizeof(T)) != 0) return false;
    }
    return true;
  };
  const int64_t max_splits = dots ? kMaxDotSplits : kMaxGridY;
  const int64_t enough_warps = 32 * static_cast<int64_t>(multiprocessor_count(device));
  auto tiles = [&](int v) { return ceil_div(batch, static_cast<int64_t>(kWarpSize) * v); };
  int v = static_cast<int>(16 / sizeof(T));
  while (v > 1 && !fits(v)) v /= 2;
  while (v > 1 && (batch <= (kWarpSize / 2) * v || n_rows * std::min(tiles(v), max_splits) < enough_warps)) v /= 2;
  const int64_t n_tiles = tiles(v);
  int64_t splits = std::min(n_tiles, max_splits);
  if (dots) splits = std::max<int64_t>(1, std::min(splits, ceil_div(enough_warps, n_rows)));
  return {v, n_tiles, splits};
}

// Calls f(std::integral_constant<int, v>) for a pack width the element type supports (16 bytes at most).
template <typename T, typename F>
void with_pack_width(int v, F&& f) {
  switch (v) {
    case 1:
      f(std::integral_constant<int, 1>{});
      return;
    case 2:
      if constexpr (16 / sizeof(T) >= 2) {
        f(std::integral_constant<int, 2>{});
        return;
      }
      break;
    case 4:
      if constexpr (16 / sizeof(T) >= 4) {
        f(std::integral_constant<int, 4>{});
        return;
      }
      break;
    case 8:
      if constexpr (16 / sizeof(T) >= 8) {
        f(std::integral_constant<int, 8>{});
        return;
      }
      break;
    default:
      break;
  }
  TORCH_CHECK(false, "sparsekern: internal error, pack width ", v, " for a ", sizeof(T), "-byte type");
}

// Launches the kernel over all rows and batch tiles and, for dot products over several tiles, sums the
// splits. The caller has allocated the outputs and handled the empty cases: n_rows > 0 and batch > 0 here.
template <typename T, Output kOut, bool kDots>
void run_row_tiles(RowTilesArgs<T> args, const TilePlan& plan, const at::Tensor& like) {
  using acc_t = at::opmath_type<T>;
  TORCH_INTERNAL_ASSERT(args.n_rows > 0 && args.batch > 0 && args.batch % plan.v == 0 && plan.splits >= 1 &&
                        plan.splits <= plan.n_tiles && plan.splits <= kMaxGridY);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  args.n_tiles = plan.n_tiles;
  at::Tensor partial;
  bool sum_splits = false;
  if (kDots && plan.n_tiles > 1) {
    if constexpr (std::is_same_v<acc_t, T>) {
      if (plan.splits == 1) args.partial = args.dots;  // one split, no extra precision to keep: add in place
    }
    if (args.partial == nullptr) {
      partial = at::empty({plan.splits, args.nnz}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      args.partial = partial.mutable_data_ptr<acc_t>();
      sum_splits = args.nnz > 0;
    }
  }
  // n_rows < 2^31 (int32 offsets), so gridDim.x = n_rows / 8 is within its 2^31 - 1 limit.
  const dim3 grid(static_cast<unsigned>(ceil_div(args.n_rows, kRowsPerBlock)), static_cast<unsigned>(plan.splits));
  with_pack_width<T>(plan.v, [&](auto width) {
    csr_row_tiles_kernel<T, decltype(width)::value, kOut, kDots><<<grid, kThreads, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (sum_splits) {
    const int64_t blocks = std::min<int64_t>(ceil_div(args.nnz, 256), 65535);
    sum_partial_dots_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(args.partial, plan.splits,
                                                                                  args.nnz, args.dots);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace
}  // namespace gpu
}  // namespace sparsekern
