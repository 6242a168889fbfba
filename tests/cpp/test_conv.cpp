// The sparse Conv2d kernels (csrc/cpu/conv2d_*.cpp) against ATen's dense convolution in double, over
// strides, paddings, dilations, groups (depthwise included), batch sizes around the vector widths, the
// sweep's masks (dense, 50%, 90%, empty, holes), 1/2/3 threads and every algorithm (vectorised over the
// batch or over the output plane, forced with SPARSEKERN_CONV_ALGORITHM, and the depthwise kernels, the
// automatic choice where they apply). In the sanitizer build this checks every access of the padded
// batch-innermost layout, of the tap bounds in the input gradient, of the plane kernels' stride phases and
// frames, and of the depthwise kernels' reads past each plane (in the tensor, or in the framed scratch).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdlib>

#include "../../csrc/cpu/kernels.h"
#include "harness.h"
#include "layout_builder.h"
#include "oracle.h"

namespace {

struct ConvCase {
  int64_t c_in, c_out, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = {
      {5, 7, 13, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // odd sizes, "same"-like padding
      {4, 6, 9, 10, 5, 3, 2, 1, 2, 0, 1, 2, 2},   // rectangular kernel, mixed stride and dilation, groups
      {6, 6, 7, 7, 3, 3, 2, 2, 1, 1, 2, 2, 6},    // depthwise, strided and dilated
      {3, 8, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1},    // pointwise
      {4, 4, 4, 6, 3, 3, 3, 2, 3, 1, 1, 1, 1},    // padding as large as the kernel, stride 3
      {3, 5, 17, 19, 5, 4, 2, 3, 2, 1, 2, 1, 1},  // larger map, six stride phases, dilated rows
      {5, 5, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1, 5},    // depthwise, output the input's size: the depthwise kernels
      {3, 3, 3, 2, 5, 3, 1, 1, 4, 2, 2, 2, 3},    // depthwise, dilated 5x3 reaching past the whole 3x2 plane
  };
  return cases;
}

void check_close(const at::Tensor& got, const at::Tensor& ref, double rtol, const char* what) {
  SKT_CHECK(got.sizes() == ref.sizes(), what, ": shape ", got.sizes(), " vs ", ref.sizes());
  if (got.sizes() != ref.sizes()) return;
  const double scale = ref.numel() ? ref.abs().max().item<double>() + 1.0 : 1.0;
  SKT_CHECK(at::allclose(got.to(at::kDouble), ref, rtol, rtol * scale), what, ": max error ",
            (got.to(at::kDouble) - ref).abs().max().item<double>());
}

}  // namespace

SKT_TEST(conv_matches_dense_convolution) {
  skt::Rng rng(20261125);
  const int previous = at::get_num_threads();
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    const double rtol = dtype == at::kFloat ? 1e-4 : 1e-10;
    for (const ConvCase& cc : conv_cases()) {
      const int64_t cols = cc.c_in / cc.groups * cc.kh * cc.kw;
      for (const skt::MaskKind& kind : skt::mask_kinds()) {
        const skt::Mask mask = skt::make_mask(kind, cc.c_out, cols, rng);
        const skt::Layout l = skt::layout_from_mask(mask);
        at::Tensor keep = at::empty({cc.c_out, cols}, at::kBool);
        for (int64_t r = 0; r < cc.c_out; ++r)
          for (int64_t c = 0; c < cols; ++c) keep[r][c] = mask.at(r, c);
        for (int64_t n : {1, 5, 17, 70}) {
          skt::Context ctx(c10::str("conv ", skt::dtype_name(dtype), " ", cc.c_in, "->", cc.c_out, " ", cc.h, "x",
                                    cc.w, " k", cc.kh, "x", cc.kw, " s", cc.sh, ",", cc.sw, " p", cc.ph, ",", cc.pw,
                                    " d", cc.dh, ",", cc.dw, " g", cc.groups, " mask=", kind.name, " n=", n));
          const at::Tensor values = skt::random_data({l.nnz()}, dtype, rng, false).tensor;
          const at::Tensor x = skt::random_data({n, cc.c_in, cc.h, cc.w}, dtype, rng, false).tensor;
          const at::Tensor bias = skt::random_data({cc.c_out}, dtype, rng, false).tensor;
          at::Tensor weight = at::zeros({cc.c_out, cols}, at::TensorOptions().dtype(at::kDouble));
          weight.masked_scatter_(keep, values.to(at::kDouble));
          weight = weight.view({cc.c_out, cc.c_in / cc.groups, cc.kh, cc.kw});
          const at::Tensor xd = x.to(at::kDouble).requires_grad_(true);
          const at::Tensor wd = weight.clone().requires_grad_(true);
          const at::Tensor y = at::conv2d(xd, wd, bias.to(at::kDouble), {cc.sh, cc.sw}, {cc.ph, cc.pw},
                                          {cc.dh, cc.dw}, cc.groups);
          const at::Tensor grad = skt::random_data(y.sizes().vec(), dtype, rng, false).tensor;
          y.backward(grad.to(at::kDouble));
          const at::Tensor ref_dw = wd.grad().reshape({cc.c_out, cols}).masked_select(keep);
          for (const char* algorithm : {"batch", "plane", "depthwise"})
          for (int threads : skt::thread_counts()) {
            setenv("SPARSEKERN_CONV_ALGORITHM", algorithm, 1);  // csrc/cpu/conv_plane.h: every kernel family
            at::set_num_threads(threads);
            skt::count_case();
            skt::Context algorithm_ctx(c10::str("algorithm=", algorithm, " threads=", threads));
            const at::Tensor got_y = sparsekern::csr_conv2d_cpu(
                x, values, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm, l.t_perm_inv,
                bias, {cc.kh, cc.kw}, {cc.sh, cc.sw}, {cc.ph, cc.pw}, {cc.dh, cc.dw}, cc.groups);
            check_close(got_y, y.detach(), rtol, "forward");
            const at::Tensor got_dx = sparsekern::csr_conv2d_input_grad_cpu(
                grad, values, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm,
                l.t_perm_inv, {cc.h, cc.w}, {cc.kh, cc.kw}, {cc.sh, cc.sw}, {cc.ph, cc.pw}, {cc.dh, cc.dw},
                cc.groups);
            check_close(got_dx, xd.grad(), rtol, "input gradient");
            const at::Tensor got_dw = sparsekern::csr_conv2d_weight_grad_cpu(
                grad, x, l.row_offsets, l.col_indices, l.t_row_offsets, l.t_col_indices, l.t_perm, l.t_perm_inv,
                {cc.kh, cc.kw}, {cc.sh, cc.sw}, {cc.ph, cc.pw}, {cc.dh, cc.dw}, cc.groups);
            check_close(got_dw, ref_dw, rtol, "weight gradient");
          }
        }
      }
    }
  }
  unsetenv("SPARSEKERN_CONV_ALGORITHM");
  at::set_num_threads(previous);
}
