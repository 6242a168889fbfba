// Bad input must raise a c10::Error (ValueError for shapes and index contents, TypeError for dtypes, as
// they surface in Python) whose message names the offending argument, never read out of bounds.
#include <ATen/ATen.h>

#include <functional>
#include <string>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

enum class Kind { Value, Type };

void expect_error(const std::string& what, const std::function<void()>& call, Kind kind,
                  std::initializer_list<const char*> needles) {
  skt::Context ctx(what);
  skt::count_case();
  try {
    call();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (kind == Kind::Value) {
      SKT_CHECK(dynamic_cast<const c10::ValueError*>(&e) != nullptr, "expected c10::ValueError, message: ", msg);
    } else {
      SKT_CHECK(dynamic_cast<const c10::TypeError*>(&e) != nullptr, "expected c10::TypeError, message: ", msg);
    }
    for (const char* needle : needles) {
      SKT_CHECK(msg.find(needle) != std::string::npos, "message does not mention '", needle, "': ", msg);
    }
    return;
  } catch (const std::exception& e) {
    SKT_CHECK(false, "expected a c10::Error, got std::exception: ", e.what());
    return;
  }
  SKT_CHECK(false, "expected a c10::Error, the call returned normally");
}

// A valid CSR case (7x13 weight, half kept, batch 5) whose arguments the tests spoil one at a time.
struct CsrCase {
  skt::Layout l;
  at::Tensor values, dense, a, b;
  at::Tensor row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv;

  CsrCase() {
    skt::Rng rng(11);
    l = skt::layout_from_mask(skt::random_mask(7, 13, 0.5, rng));
    values = skt::random_data({l.nnz()}, at::kFloat, rng, false).tensor;
    dense = skt::random_data({13, 5}, at::kFloat, rng, false).tensor;
    a = skt::random_data({7, 5}, at::kFloat, rng, false).tensor;
    b = skt::random_data({13, 5}, at::kFloat, rng, false).tensor;
    row_offsets = l.row_offsets.clone();
    col_indices = l.col_indices.clone();
    t_row_offsets = l.t_row_offsets.clone();
    t_col_indices = l.t_col_indices.clone();
    t_perm = l.t_perm.clone();
    t_perm_inv = l.t_perm_inv.clone();
  }
  at::Tensor spmm() const {
    return sparsekern::csr_spmm_cpu(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                    t_perm_inv, dense);
  }
  at::Tensor sddmm() const {
    return sparsekern::csr_sddmm_cpu(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                     t_perm_inv);
  }
};

// A valid BSR case: 3x5 grid of 2x3 blocks (6x15 weight), batch 5.
struct BsrCase {
  skt::Layout l;
  at::Tensor values, dense, a, b;

  BsrCase() {
    skt::Rng rng(12);
    l = skt::layout_from_mask(skt::random_mask(3, 5, 0.5, rng));
    values = skt::random_data({l.nnz(), 2, 3}, at::kFloat, rng, false).tensor;
    dense = skt::random_data({15, 5}, at::kFloat, rng, false).tensor;
    a = skt::random_data({6, 5}, at::kFloat, rng, false).tensor;
    b = skt::random_data({15, 5}, at::kFloat, rng, false).tensor;
  }
  at::Tensor spmm() const {
    return sparsekern::bsr_spmm_cpu(values, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm,
                                    l.t_perm_inv, dense);
  }
  at::Tensor sddmm() const {
    return sparsekern::bsr_sddmm_cpu(a, b, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm,
                                     l.t_perm_inv);
  }
};

}  // namespace

SKT_TEST(errors_valid_cases_run) {
  // The spoiled cases below must fail because of the spoiling: the unspoiled ones run.
  skt::count_case();
  const CsrCase c;
  SKT_CHECK(c.l.nnz() > 2, "the base case needs a few stored entries, has ", c.l.nnz());
  SKT_CHECK(c.spmm().sizes() == at::IntArrayRef({7, 5}), "csr_spmm base case");
  SKT_CHECK(c.sddmm().sizes() == at::IntArrayRef({c.l.nnz()}), "csr_sddmm base case");
  const BsrCase bc;
  SKT_CHECK(bc.l.nnz() > 0, "the BSR base case needs a kept block");
  SKT_CHECK(bc.spmm().sizes() == at::IntArrayRef({6, 5}), "bsr_spmm base case");
  SKT_CHECK(bc.sddmm().sizes() == at::IntArrayRef({bc.l.nnz(), 2, 3}), "bsr_sddmm base case");
}

SKT_TEST(errors_layout) {
  for (int op = 0; op < 2; ++op) {
    const char* name = op == 0 ? "csr_spmm" : "csr_sddmm";
    auto run = [op](const CsrCase& c) { return op == 0 ? c.spmm() : c.sddmm(); };
    auto check = [&](const std::string& what, auto spoil, Kind kind, std::initializer_list<const char*> needles) {
      CsrCase c;
      spoil(c);
      expect_error(c10::str(name, ": ", what), [&] { run(c); }, kind, needles);
    };
    check("column index == n_cols", [](CsrCase& c) { c.col_indices[c.l.nnz() - 1] = 13; }, Kind::Value,
          {"col_indices", "[0, 13)"});
    check("huge column index", [](CsrCase& c) { c.col_indices[0] = 1 << 30; }, Kind::Value, {"col_indices"});
    check("negative column index", [](CsrCase& c) { c.col_indices[1] = -1; }, Kind::Value, {"col_indices"});
    check("offsets end short of nnz", [](CsrCase& c) { c.row_offsets[7] = c.l.nnz() - 1; }, Kind::Value,
          {"row_offsets", "nnz"});
    check("offsets end past nnz", [](CsrCase& c) { c.row_offsets[7] = c.l.nnz() + 5; }, Kind::Value,
          {"row_offsets", "nnz"});
    check("offsets start at 1", [](CsrCase& c) { c.row_offsets[0] = 1; }, Kind::Value, {"row_offsets"});
    check("offsets decrease",
          [](CsrCase& c) {
            c.row_offsets[2] = c.l.nnz();
            c.row_offsets[3] = 0;
          },
          Kind::Value, {"row_offsets", "decreases"});
    check("offsets empty", [](CsrCase& c) { c.row_offsets = at::empty({0}, at::kInt); }, Kind::Value,
          {"row_offsets"});
    check("offsets not contiguous",
          [](CsrCase& c) { c.row_offsets = c.row_offsets.repeat_interleave(2).slice(0, 0, 16, 2); }, Kind::Value,
          {"row_offsets", "contiguous"});
    check("offsets int64", [](CsrCase& c) { c.row_offsets = c.row_offsets.to(at::kLong); }, Kind::Type,
          {"row_offsets", "Long"});
    check("col_indices 2-D", [](CsrCase& c) { c.col_indices = c.col_indices.view({1, -1}); }, Kind::Type,
          {"col_indices"});
    check("t_row_offsets int64", [](CsrCase& c) { c.t_row_offsets = c.t_row_offsets.to(at::kLong); }, Kind::Type,
          {"t_row_offsets"});
    check("t_col_indices float", [](CsrCase& c) { c.t_col_indices = c.t_col_indices.to(at::kFloat); }, Kind::Type,
          {"t_col_indices"});
    check("t_perm int32", [](CsrCase& c) { c.t_perm = c.t_perm.to(at::kInt); }, Kind::Type, {"t_perm"});
    check("t_perm_inv int32", [](CsrCase& c) { c.t_perm_inv = c.t_perm_inv.to(at::kInt); }, Kind::Type,
          {"t_perm_inv"});
    // n_cols comes from t_row_offsets: too short, and the column indices are out of range.
    check("t_row_offsets too short", [](CsrCase& c) { c.t_row_offsets = c.t_row_offsets.slice(0, 0, 5); },
          Kind::Value, {"col_indices", "[0, 4)"});
    check("t_col_indices one short", [](CsrCase& c) { c.t_col_indices = c.t_col_indices.slice(0, 1); },
          Kind::Value, {"t_col_indices", "nnz"});
    check("t_perm one short", [](CsrCase& c) { c.t_perm = c.t_perm.slice(0, 1); }, Kind::Value, {"t_perm", "nnz"});
    check("t_perm_inv one long", [](CsrCase& c) { c.t_perm_inv = at::cat({c.t_perm_inv, c.t_perm_inv.slice(0, 0, 1)}); },
          Kind::Value, {"t_perm_inv", "nnz"});
  }
}

SKT_TEST(errors_csr_spmm_operands) {
  auto check = [](const std::string& what, auto spoil, Kind kind, std::initializer_list<const char*> needles) {
    CsrCase c;
    spoil(c);
    expect_error(c10::str("csr_spmm: ", what), [&] { c.spmm(); }, kind, needles);
  };
  check("values int32", [](CsrCase& c) { c.values = c.values.to(at::kInt); }, Kind::Type, {"values", "Int"});
  check("values half", [](CsrCase& c) { c.values = c.values.to(at::kHalf); }, Kind::Type, {"values", "Half"});
  check("values one short", [](CsrCase& c) { c.values = c.values.slice(0, 1); }, Kind::Value, {"values"});
  check("values 2-D", [](CsrCase& c) { c.values = c.values.view({1, -1}); }, Kind::Value, {"values"});
  check("dense double, values float", [](CsrCase& c) { c.dense = c.dense.to(at::kDouble); }, Kind::Type,
        {"dense", "Double"});
  check("dense wrong row count", [](CsrCase& c) { c.dense = c.dense.slice(0, 1); }, Kind::Value,
        {"dense", "13 rows"});
  check("dense 1-D", [](CsrCase& c) { c.dense = c.dense.reshape({-1}); }, Kind::Value, {"dense", "2-D"});
  check("dense 3-D", [](CsrCase& c) { c.dense = c.dense.unsqueeze(0); }, Kind::Value, {"dense", "2-D"});
}

SKT_TEST(errors_csr_sddmm_operands) {
  auto check = [](const std::string& what, auto spoil, Kind kind, std::initializer_list<const char*> needles) {
    CsrCase c;
    spoil(c);
    expect_error(c10::str("csr_sddmm: ", what), [&] { c.sddmm(); }, kind, needles);
  };
  check("a int64", [](CsrCase& c) { c.a = c.a.to(at::kLong); }, Kind::Type, {"a:"});
  check("b double, a float", [](CsrCase& c) { c.b = c.b.to(at::kDouble); }, Kind::Type, {"b:", "Double"});
  check("a wrong row count", [](CsrCase& c) { c.a = c.a.slice(0, 1); }, Kind::Value, {"a:", "7 rows"});
  check("b wrong row count", [](CsrCase& c) { c.b = c.b.slice(0, 2); }, Kind::Value, {"b:", "13 rows"});
  check("a 1-D", [](CsrCase& c) { c.a = c.a.reshape({-1}); }, Kind::Value, {"a:", "2-D"});
  check("batch sizes differ", [](CsrCase& c) { c.b = c.b.slice(1, 1); }, Kind::Value, {"batch sizes differ"});
}

SKT_TEST(errors_bsr_operands) {
  auto spmm = [](const std::string& what, auto spoil, Kind kind, std::initializer_list<const char*> needles) {
    BsrCase c;
    spoil(c);
    expect_error(c10::str("bsr_spmm: ", what), [&] { c.spmm(); }, kind, needles);
  };
  spmm("values 1-D", [](BsrCase& c) { c.values = c.values.reshape({-1}); }, Kind::Value, {"values", "nnzb"});
  spmm("values one block short", [](BsrCase& c) { c.values = c.values.slice(0, 1); }, Kind::Value, {"values"});
  spmm("values int32", [](BsrCase& c) { c.values = c.values.to(at::kInt); }, Kind::Type, {"values"});
  spmm("dense rows != n_block_cols * bw", [](BsrCase& c) { c.dense = c.dense.slice(0, 1); }, Kind::Value,
       {"dense", "15 rows"});
  spmm("dense double", [](BsrCase& c) { c.dense = c.dense.to(at::kDouble); }, Kind::Type, {"dense"});
  spmm("column index out of range", [](BsrCase& c) { c.l.col_indices = c.l.col_indices.clone().fill_(5); },
       Kind::Value, {"col_indices"});

  auto sddmm = [](const std::string& what, auto spoil, Kind kind, std::initializer_list<const char*> needles) {
    BsrCase c;
    spoil(c);
    expect_error(c10::str("bsr_sddmm: ", what), [&] { c.sddmm(); }, kind, needles);
  };
  sddmm("a rows do not split into block rows", [](BsrCase& c) { c.a = c.a.slice(0, 1); }, Kind::Value,
        {"a:", "block rows"});
  sddmm("b rows do not split into block columns", [](BsrCase& c) { c.b = c.b.slice(0, 1); }, Kind::Value,
        {"b:", "block columns"});
  sddmm("b double", [](BsrCase& c) { c.b = c.b.to(at::kDouble); }, Kind::Type, {"b:"});
  sddmm("a int32", [](BsrCase& c) { c.a = c.a.to(at::kInt); }, Kind::Type, {"a:"});
  sddmm("batch sizes differ", [](BsrCase& c) { c.b = c.b.slice(1, 2); }, Kind::Value, {"batch sizes differ"});
  sddmm("a 3-D", [](BsrCase& c) { c.a = c.a.unsqueeze(0); }, Kind::Value, {"a, b"});
  sddmm("grid with no block rows",
        [](BsrCase& c) {
          skt::Mask m;
          m.n_rows = 0;
          m.n_cols = 5;
          c.l = skt::layout_from_mask(m);
        },
        Kind::Value, {"a:", "block rows"});
}

// Legal but degenerate: nothing kept, nothing in the batch, nothing at all. Results are exact zeros or
// empty, with the right shape.
SKT_TEST(edge_empty_operands) {
  skt::Rng rng(13);
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    skt::Context ctx(skt::dtype_name(dtype));
    const auto opts = at::TensorOptions().dtype(dtype);
    // nnz 0, batch 0.
    const skt::Layout l = skt::layout_from_mask(skt::random_mask(7, 13, 1.0, rng));
    for (int64_t batch : {int64_t{0}, int64_t{3}}) {
      skt::count_case();
      const at::Tensor out = sparsekern::csr_spmm_cpu(at::empty({0}, opts), l.row_offsets, l.col_indices,
                                                      l.t_row_offsets, l.t_col_indices, l.t_perm, l.t_perm_inv,
                                                      at::ones({13, batch}, opts));
      SKT_CHECK(out.sizes() == at::IntArrayRef({7, batch}) && (batch == 0 || out.abs().max().item<double>() == 0.0),
                "csr_spmm with nnz=0 must give zeros of shape (7, ", batch, "), got ", out.sizes());
      const at::Tensor d = sparsekern::csr_sddmm_cpu(at::ones({7, batch}, opts), at::ones({13, batch}, opts),
                                                     l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices,
                                                     l.t_perm, l.t_perm_inv);
      SKT_CHECK(d.sizes() == at::IntArrayRef({0}), "csr_sddmm with nnz=0 must be empty, got ", d.sizes());
    }
    // Batch 0 with stored entries: sddmm dots over nothing are exactly 0.
    const skt::Layout full = skt::layout_from_mask(skt::random_mask(7, 13, 0.0, rng));
    skt::count_case();
    const at::Tensor d = sparsekern::csr_sddmm_cpu(at::empty({7, 0}, opts), at::empty({13, 0}, opts),
                                                   full.row_offsets, full.col_indices, full.t_row_offsets,
                                                   full.t_col_indices, full.t_perm, full.t_perm_inv);
    SKT_CHECK(d.sizes() == at::IntArrayRef({91}) && d.abs().max().item<double>() == 0.0,
              "csr_sddmm with batch 0 must give nnz zeros");
    const skt::Layout grid = skt::layout_from_mask(skt::random_mask(3, 2, 0.0, rng));
    const at::Tensor bd = sparsekern::bsr_sddmm_cpu(at::empty({12, 0}, opts), at::empty({6, 0}, opts),
                                                    grid.row_offsets, grid.col_indices, grid.t_row_offsets,
                                                    grid.t_col_indices, grid.t_perm, grid.t_perm_inv);
    SKT_CHECK(bd.sizes() == at::IntArrayRef({6, 4, 3}) && bd.abs().max().item<double>() == 0.0,
              "bsr_sddmm with batch 0 must give (nnzb, bh, bw) zeros, got ", bd.sizes());
    // Zero-sized blocks are degenerate but well defined: an empty output.
    const at::Tensor bz = sparsekern::bsr_spmm_cpu(at::empty({6, 0, 3}, opts), grid.row_offsets, grid.col_indices,
                                                   grid.t_row_offsets, grid.t_col_indices, grid.t_perm,
                                                   grid.t_perm_inv, at::ones({6, 4}, opts));
    SKT_CHECK(bz.sizes() == at::IntArrayRef({0, 4}), "bsr_spmm with 0-row blocks, got ", bz.sizes());
  }
}
