// plane_conv2d_forward: y = conv2d(x, W) + bias, vectorised over each sample's flattened output plane
// (conv_plane.h). For output channel o, y_flat[o][f] = bias[o] + Σ over o's kept weights of
// w · planes[off_w + f]: one broadcast weight times a run of contiguous vectors. Work is kept weights ×
// (output pixels + discarded columns) multiply-adds per sample; no dense weight, no im2col, no transpose.
//
// Tiling: one output channel's plane at a time, in register chunks of up to 8 vectors
// (conv_plane.h's accumulate_chunk), over the kept weights of that channel; the sample's input planes
// stay in L2 across channels. A finished chunk goes to a channel-sized scratch row, from which the valid
// OW columns of each output row are copied into y.
#include <ATen/ATen.h>

#include <vector>

#include "conv_plane.h"
#include "scratch.h"

namespace sparsekern {
namespace {

struct ForwardRowTag {};
struct ForwardPlanesTag {};

// Output channels [o0, o1) of one sample, from its filled planes.
template <typename T>
void forward_channels(const T* values, const int32_t* offsets, const int64_t* offs, const ConvGeometry& g,
                      const PlaneGeometry& p, const T* planes, const T* bias, int64_t o0, int64_t o1, T* y_n) {
  T* row = scratch_buffer<T, ForwardRowTag>(p.span);
  for (int64_t o = o0; o < o1; ++o) {
    const T init = bias ? bias[o] : T(0);
    for_each_plane_chunk<T>(p.span, [&](auto vectors, int64_t f) {
      accumulate_chunk<T, decltype(vectors)::value>(values, offs, offsets[o], offsets[o + 1], planes + f, init,
                                                     row + f);
    });
    T* out = y_n + o * g.oh * g.ow;
    for (int64_t r = 0; r < g.oh; ++r) std::memcpy(out + r * g.ow, row + r * p.pitch, sizeof(T) * g.ow);
  }
}

}  // namespace

template <typename T>
void plane_conv2d_forward(const T* values, const int32_t* offsets, const int32_t* cols, const ConvGeometry& g,
                          const T* x, const T* bias, T* y) {
  const PlaneGeometry p = plane_geometry<T>(g);
  const std::vector<int64_t> offs = plane_read_offsets(offsets, cols, g, p);
  const int64_t sample_in = g.c_in * g.h * g.w, sample_out = g.c_out * g.oh * g.ow;
  for_each_sample<T, ForwardPlanesTag>(
      plane_schedule(g.n), g.n, g.c_in * p.phases * p.plane, g.c_in, g.c_out,
      [&](int64_t n, int64_t c0, int64_t c1, T* planes) { fill_input_planes(x + n * sample_in, g, p, c0, c1, planes); },
      [&](int64_t n, int64_t o0, int64_t o1, const T* planes, int64_t) {
        forward_channels(values, offsets, offs.data(), g, p, planes, bias, o0, o1, y + n * sample_out);
      });
}

template void plane_conv2d_forward<float>(const float*, const int32_t*, const int32_t*, const ConvGeometry&,
                                          const float*, const float*, float*);
template void plane_conv2d_forward<double>(const double*, const int32_t*, const int32_t*, const ConvGeometry&,
                                           const double*, const double*, double*);

}  // namespace sparsekern
