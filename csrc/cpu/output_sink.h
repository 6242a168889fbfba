// Where an SpMM kernel's threads put their rows of the product P = S @ dense (n_rows, B).
//
// FeatureMajorSink writes P itself. BatchMajorSink writes Pᵀ + bias (B, n_rows), the layout a layer returns:
// each thread computes one batch chunk of its rows into a scratch tile (rows × ≤64 columns, so it stays in
// L2 whatever the batch) and transposes it into the output, adding the bias on the way. That replaces a
// separate transpose pass, and a bias pass, over the whole output.
//
// Protocol, per thread and batch chunk [col_begin, col_end):
//   SinkRows rows = sink.chunk(row_begin, row_end, col_begin, col_end, batch);
//   ... the kernel writes row r, batch column j (col_begin <= j < col_end) at rows.at(r, j) ...
//   sink.done(rows, row_begin, row_end, col_begin, col_end);
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "scratch.h"
#include "transpose_simd.h"

namespace sparsekern {

// Rows a kernel hands to a sink at once: a tile of at most 2048 rows × 64 columns (512 KB of floats) stays
// in L2, and the per-thread scratch stays bounded for any layer size.
constexpr int64_t kSinkRows = 2048;

template <typename T>
struct SinkRows {
  T* base;                // element (row0, col0)
  int64_t row0, col0;
  int64_t ld;             // elements between consecutive rows
  T* at(int64_t r, int64_t col) const { return base + (r - row0) * ld + (col - col0); }
};

template <typename T>
struct FeatureMajorSink {
  T* out;  // (n_rows, batch)

  SinkRows<T> chunk(int64_t, int64_t, int64_t, int64_t, int64_t batch) const { return {out, 0, 0, batch}; }
  void done(const SinkRows<T>&, int64_t, int64_t, int64_t, int64_t) const {}
};

template <typename T>
struct BatchMajorSink {
  T* out;          // (batch, n_rows)
  const T* bias;   // (n_rows,) or nullptr
  int64_t n_rows;

  SinkRows<T> chunk(int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end, int64_t) const {
    const int64_t width = col_end - col_begin;
    return {scratch_buffer<T, struct SinkTileTag>((row_end - row_begin) * width), row_begin, col_begin, width};
  }
  void done(const SinkRows<T>& rows, int64_t row_begin, int64_t row_end, int64_t col_begin, int64_t col_end) const {
    const int64_t n = row_end - row_begin, width = col_end - col_begin;
    T* dst = out + col_begin * n_rows + row_begin;
    if (bias != nullptr) {
      transpose_rows<T, true>(rows.base, 0, n, width, rows.ld, 1, dst, n_rows, bias + row_begin);
    } else {
      transpose_rows<T, false>(rows.base, 0, n, width, rows.ld, 1, dst, n_rows, nullptr);
    }
  }
};

// What an SpMM entry point allocates for each output layout, and the sink its kernel writes through.
struct FeatureMajorOutput {
  at::Tensor allocate(int64_t n_rows, int64_t batch, const at::TensorOptions& options) const {
    return at::empty({n_rows, batch}, options);
  }
  template <typename T>
  FeatureMajorSink<T> sink(const at::Tensor& out, int64_t) const {
    return {out.data_ptr<T>()};
  }
};

struct BatchMajorOutput {
  at::Tensor bias;  // (n_rows,), contiguous; undefined for none

  at::Tensor allocate(int64_t n_rows, int64_t batch, const at::TensorOptions& options) const {
    return at::empty({batch, n_rows}, options);
  }
  template <typename T>
  BatchMajorSink<T> sink(const at::Tensor& out, int64_t n_rows) const {
    return {out.data_ptr<T>(), bias.defined() ? bias.data_ptr<T>() : nullptr, n_rows};
  }
};

}  // namespace sparsekern
