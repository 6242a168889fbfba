// Test data and the float64 oracle: random masks and operands, naive triple-loop products in double, and a
// comparison whose tolerance is the textbook bound for a dot product of n terms in precision T,
//
//     |computed - exact| <= n · eps(T) · Σ|a_i · b_i|       (γ_n ≤ n·u with u = eps/2, doubled for margin)
//
// which holds for any summation order and with or without FMA contraction, yet is far below the error of
// a single wrong, missing or duplicated term. A fully pruned row has Σ|a_i b_i| = 0 and must come out
// exactly 0.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "layout_builder.h"

namespace skt {

using Rng = std::mt19937_64;

// Each entry kept with probability 1 - sparsity (sparsity 0: all kept; 1: none kept).
Mask random_mask(int64_t n_rows, int64_t n_cols, double sparsity, Rng& rng);
// Half-density random mask with fully pruned rows (the first, the middle one, the last) and a fully
// pruned column 1: empty rows and columns next to non-empty ones.
Mask mask_with_holes(int64_t n_rows, int64_t n_cols, Rng& rng);

// A named mask generator used by the sweep: "dense", "s0.5", "s0.9", "empty", "holes".
struct MaskKind {
  const char* name;
  double sparsity;  // < 0: mask_with_holes
};
const std::vector<MaskKind>& mask_kinds();
Mask make_mask(const MaskKind& kind, int64_t n_rows, int64_t n_cols, Rng& rng);

// Batch sizes that straddle the kernels' batch blocking: a vector is 16 floats / 8 doubles with AVX-512
// (4 / 2 on the x86-64 baseline), spmm walks chunks of 4 vectors, then single vectors, then a scalar
// tail; sddmm chunks are 128 floats / 64 doubles. Plus 0 and 1.
const std::vector<int64_t>& batch_sizes();
// torch intra-op thread counts to run every case with (more threads than cores is fine and exercises
// the row partition with more parts).
const std::vector<int>& thread_counts();

// Random values in [-1, 1] (never exactly 0) of `dtype`, and the same values rounded to dtype, in double,
// row-major. strided=true returns a non-contiguous view holding the same values (stride 2 innermost).
struct Data {
  at::Tensor tensor;
  std::vector<double> host;
};
Data random_data(std::vector<int64_t> sizes, at::ScalarType dtype, Rng& rng, bool strided);

// Any tensor as row-major doubles.
std::vector<double> to_host(const at::Tensor& t);

// out = a @ b (b_transposed: a @ bᵀ) in double with the naive triple loop; a is (m, k), b is (k, n) or
// (n, k). abs_sum[i] = Σ|a·b| of the terms of out[i]; terms = k.
struct Product {
  std::vector<double> value, abs_sum;
  int64_t terms = 0;
};
Product matmul_ref(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k, int64_t n,
                   bool b_transposed);

// Checks dtype, shape, contiguity and every element of `got` against the reference (see the header
// comment for the tolerance). Reports the number of bad elements and the first few.
void expect_close(const at::Tensor& got, at::ScalarType dtype, const std::vector<int64_t>& sizes,
                  const std::vector<double>& ref, const std::vector<double>& abs_sum, int64_t terms);

// Allocates a few blocks of `bytes`, fills them with all-ones bits (NaN as float and as double) and frees
// them, so the kernel's output, allocated next with the same size, probably reuses one (malloc hands out
// recently freed chunks of a size first): an element the kernel forgets to write then reads as NaN and
// fails expect_close. note_output() records whether the reuse
// happened (the summary line prints the rate; under ASan the freed block is quarantined and it is 0).
using Poisoned = std::vector<const void*>;
Poisoned poison_heap(int64_t bytes);
void note_output(const Poisoned& poisoned, const at::Tensor& out);
// "outputs allocated in a poisoned block: hits of tries" since the last call.
std::string poison_summary();

// RAII: sets torch's intra-op thread count, restores the previous one.
class ThreadCount {
 public:
  explicit ThreadCount(int n);
  ~ThreadCount();

 private:
  int previous_;
};

// Runs `call` (a kernel call returning its output) under every thread count in thread_counts(), with a
// poisoned heap before each call; checks each output against the reference and checks that the outputs
// are bitwise equal across thread counts (threads only split rows, so every output element is computed
// by the same arithmetic whatever the count).
template <typename Call>
void check_every_thread_count(const Call& call, at::ScalarType dtype, const std::vector<int64_t>& sizes,
                              const std::vector<double>& value, const std::vector<double>& abs_sum,
                              int64_t terms) {
  int64_t bytes = static_cast<int64_t>(c10::elementSize(dtype));
  for (int64_t s : sizes) bytes *= s;
  at::Tensor first;
  for (int threads : thread_counts()) {
    ThreadCount tc(threads);
    Context ctx(c10::str("threads=", threads));
    const Poisoned poisoned = poison_heap(bytes);
    at::Tensor out = call();
    note_output(poisoned, out);
    expect_close(out, dtype, sizes, value, abs_sum, terms);
    if (!first.defined()) {
      first = out;
    } else if (out.sizes() == first.sizes() && out.scalar_type() == first.scalar_type()) {
      SKT_CHECK(at::equal(out, first), "result differs from the ", thread_counts().front(),
                "-thread result: the kernel is not deterministic across thread counts");
    }
  }
}

// The transpose of a row-major (rows, cols) matrix.
std::vector<double> transpose(const std::vector<double>& m, int64_t rows, int64_t cols);

// "float"/"double".
const char* dtype_name(at::ScalarType dtype);

}  // namespace skt
