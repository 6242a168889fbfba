// bsr_spmm_cpu and bsr_sddmm_cpu against naive float64 triple loops: blocks 2x3, 4x4, 5x1 (the spmm
// kernel does block rows 4 at a time, so 5 rows leave a remainder of 1), 7x2 (remainder 3), 8x1 (two
// full tiles), 1x1 and 3x8,
// on odd block grids, every mask kind, batch sizes straddling the chunk widths, float and double,
// contiguous and strided operands, and 1/2/3 threads.
#include <ATen/ATen.h>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

using skt::Data;
using skt::Layout;

struct Block {
  int64_t h, w;
};
struct Grid {
  int64_t rows, cols;
};
const std::vector<Block> kBlocks = {{2, 3}, {4, 4}, {5, 1}, {7, 2}, {8, 1}, {1, 1}, {3, 8}};
const std::vector<Grid> kGrids = {{3, 5}, {5, 2}, {1, 1}, {4, 1}};
const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble};

// Row-major dense W (grid.rows·bh, grid.cols·bw) from a block layout and its (nnzb, bh, bw) values.
std::vector<double> dense_of(const Layout& l, const std::vector<double>& values, int64_t bh, int64_t bw) {
  const int64_t n_cols = l.n_cols * bw;
  std::vector<double> w(l.n_rows * bh * n_cols, 0.0);
  for (int64_t k = 0; k < l.nnz(); ++k)
    for (int64_t i = 0; i < bh; ++i)
      for (int64_t j = 0; j < bw; ++j) w[(l.rows[k] * bh + i) * n_cols + l.cols[k] * bw + j] = values[(k * bh + i) * bw + j];
  return w;
}

}  // namespace

SKT_TEST(bsr_spmm_matches_naive) {
  skt::Rng rng(20240603);
  for (at::ScalarType dtype : kDtypes) {
    for (const Block& blk : kBlocks) {
      for (const Grid& grid : kGrids) {
        for (const skt::MaskKind& kind : skt::mask_kinds()) {
          const Layout layout = skt::layout_from_mask(skt::make_mask(kind, grid.rows, grid.cols, rng));
          const int64_t n_rows = grid.rows * blk.h, n_cols = grid.cols * blk.w;
          for (bool transposed : {false, true}) {
            // transposed: spmm(values[t_perm].transpose(1, 2), transposed layout, dY) = Wᵀ @ dY, the
            // input gradient as _ops.py computes it.
            const Layout l = transposed ? layout.transposed() : layout;
            const int64_t out_rows = transposed ? n_cols : n_rows, in_rows = transposed ? n_rows : n_cols;
            int64_t case_index = 0;
            for (int64_t batch : skt::batch_sizes()) {
              const bool strided = (case_index++ % 3) == 1;
              skt::Context ctx(c10::str("bsr_spmm ", skt::dtype_name(dtype), " block ", blk.h, "x", blk.w,
                                        " grid ", grid.rows, "x", grid.cols, " mask=", kind.name,
                                        " nnzb=", layout.nnz(), " batch=", batch, transposed ? " transposed" : "",
                                        strided ? " strided" : ""));
              const Data v = skt::random_data({layout.nnz(), blk.h, blk.w}, dtype, rng, strided);
              const Data x = skt::random_data({in_rows, batch}, dtype, rng, strided);
              std::vector<double> w = dense_of(layout, v.host, blk.h, blk.w);
              if (transposed) w = skt::transpose(w, n_rows, n_cols);
              const skt::Product ref = skt::matmul_ref(w, x.host, out_rows, in_rows, batch, false);
              const at::Tensor values =
                  transposed ? v.tensor.index_select(0, layout.t_perm).transpose(1, 2).contiguous() : v.tensor;
              skt::check_every_thread_count(
                  [&] {
                    return sparsekern::bsr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                    l.t_col_indices, l.t_perm, l.t_perm_inv, x.tensor);
                  },
                  dtype, {out_rows, batch}, ref.value, ref.abs_sum, ref.terms);
            }
          }
        }
      }
    }
  }
  std::cout << "    " << skt::poison_summary() << "\n";
}

SKT_TEST(bsr_sddmm_matches_naive) {
  skt::Rng rng(20240604);
  for (at::ScalarType dtype : kDtypes) {
    for (const Block& blk : kBlocks) {
      for (const Grid& grid : kGrids) {
        for (const skt::MaskKind& kind : skt::mask_kinds()) {
          const Layout l = skt::layout_from_mask(skt::make_mask(kind, grid.rows, grid.cols, rng));
          const int64_t n_rows = grid.rows * blk.h, n_cols = grid.cols * blk.w;
          int64_t case_index = 0;
          for (int64_t batch : skt::batch_sizes()) {
            const int64_t variant = case_index++ % 3;  // 0: contiguous, 1: b strided, 2: a strided
            skt::Context ctx(c10::str("bsr_sddmm ", skt::dtype_name(dtype), " block ", blk.h, "x", blk.w, " grid ",
                                      grid.rows, "x", grid.cols, " mask=", kind.name, " nnzb=", l.nnz(),
                                      " batch=", batch, variant == 1 ? " b strided" : variant == 2 ? " a strided" : ""));
            const Data a = skt::random_data({n_rows, batch}, dtype, rng, variant == 2);
            const Data b = skt::random_data({n_cols, batch}, dtype, rng, variant == 1);
            const skt::Product full = skt::matmul_ref(a.host, b.host, n_rows, batch, n_cols, true);
            // out[k, i, j] = (a @ bᵀ)[R·bh + i, C·bw + j] for kept block k at (R, C).
            std::vector<double> value(l.nnz() * blk.h * blk.w), abs_sum(value.size());
            for (int64_t k = 0; k < l.nnz(); ++k)
              for (int64_t i = 0; i < blk.h; ++i)
                for (int64_t j = 0; j < blk.w; ++j) {
                  const int64_t src = (l.rows[k] * blk.h + i) * n_cols + l.cols[k] * blk.w + j;
                  value[(k * blk.h + i) * blk.w + j] = full.value[src];
                  abs_sum[(k * blk.h + i) * blk.w + j] = full.abs_sum[src];
                }
            skt::check_every_thread_count(
                [&] {
                  return sparsekern::bsr_sddmm_cpu(a.tensor, b.tensor, l.row_offsets, l.col_indices, l.t_row_offsets,
                                                   l.t_col_indices, l.t_perm, l.t_perm_inv);
                },
                dtype, {l.nnz(), blk.h, blk.w}, value, abs_sum, full.terms);
          }
        }
      }
    }
  }
  std::cout << "    " << skt::poison_summary() << "\n";
}
