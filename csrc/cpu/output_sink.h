// Where an SpMM kernel's threads put their rows of the product P = S @ dense (n_rows, B).
//
// FeatureMajorSink writes P itself. BatchMajorSink writes Pᵀ + bias (B, n_rows), the layout a layer returns:
// each thread computes its rows into a scratch tile (still in cache when it is done) and transposes the tile
// into its columns of the output, adding the bias on the way. That replaces a separate transpose pass over
// memory and a separate bias pass.
//
// Protocol: `Rows rows = sink.begin(row_begin, row_end, batch)`; the kernel writes row r, batch column j at
// rows.at(r)[j]; then `sink.finish(rows, row_begin, row_end, batch)`.
#pragma once

#include <cstdint>

#include "scratch.h"
#include "transpose_simd.h"

namespace sparsekern {

template <typename T>
struct SinkRows {
  T* base;         // row `origin` starts here
  int64_t origin;  // first row stored at base
  int64_t ld;      // elements between consecutive rows
  T* at(int64_t r) const { return base + (r - origin) * ld; }
};

template <typename T>
struct FeatureMajorSink {
  T* out;  // (n_rows, batch)

  SinkRows<T> begin(int64_t, int64_t, int64_t batch) const { return {out, 0, batch}; }
  void finish(const SinkRows<T>&, int64_t, int64_t, int64_t) const {}
};

template <typename T>
struct BatchMajorSink {
  T* out;          // (batch, n_rows)
  const T* bias;   // (n_rows,) or nullptr
  int64_t n_rows;

  SinkRows<T> begin(int64_t row_begin, int64_t row_end, int64_t batch) const {
    return {scratch_buffer<T, struct SinkTileTag>((row_end - row_begin) * batch), row_begin, batch};
  }
  void finish(const SinkRows<T>& rows, int64_t row_begin, int64_t row_end, int64_t batch) const {
    const int64_t n = row_end - row_begin;
    if (bias != nullptr) {
      transpose_rows<T, true>(rows.base, 0, n, batch, batch, 1, out + row_begin, n_rows, bias + row_begin);
    } else {
      transpose_rows<T, false>(rows.base, 0, n, batch, batch, 1, out + row_begin, n_rows, nullptr);
    }
  }
};

}  // namespace sparsekern
