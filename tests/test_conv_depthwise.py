"""The depthwise conv kernels (csrc/cpu/conv_depthwise.h): groups = C_in = C_out; stride 1 with the output the
size of the input (planes read in place), or strided with "same"-style padding (planes split into their stride
phases first). They read each flattened plane in whole vectors, past its edges, and clear the lanes outside
the image with bit masks, so besides agreement with F.conv2d (DESIGN.md budget, float64 oracle of
test_nn_conv) these tests cover the edges: planes of 1 to 300 pixels (partial vectors, a single vector, many),
kernels and dilations whose reach exceeds the plane, odd sizes and strides 2, 3 and (1, 2), phases no tap
reads (their input gradient is zero), the first and last planes of the tensor (copied to a framed scratch),
and non-finite values next to an image, which must not leak into it.

Without the extension the module is skipped: the reference ops it would run are test_nn_conv.py's subject (and
its exact float64 oracle leaves the reference's bias sum at the edge of the budget on some of these shapes)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from sparsekern import _extension
from test_nn_conv import F32, F64, assert_matches_masked_conv, make_layer


pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="tests the compiled depthwise kernels")


@pytest.fixture(autouse=True)
def automatic_algorithm(monkeypatch):
    """The depthwise kernels are the automatic choice for these shapes: no forced algorithm."""
    monkeypatch.delenv("SPARSEKERN_CONV_ALGORITHM", raising=False)


# (channels, H, W, kernel_size, padding, dilation): every geometry keeps the output at the input's size.
SHAPES = [
    (5, 13, 11, 3, 1, 1),  # odd plane (143 pixels): partial last vector
    (3, 4, 4, 3, 1, 1),  # 16 pixels: one AVX-512 float vector, two AVX2 ones
    (4, 1, 1, 3, 1, 1),  # a single pixel: every off-centre tap reads outside the image
    (2, 2, 3, 5, 2, 1),  # the kernel reaches past the whole plane
    (6, 7, 7, 5, 2, 1),
    (4, 9, 6, 3, 2, 2),  # dilated
    (3, 12, 25, (3, 5), (1, 2), 1),  # rectangular kernel
    (2, 10, 30, 1, 0, 1),  # 1x1 depthwise: a per-channel scale
]
SPARSITIES = [0.0, 0.5, 0.9, 1.0, "pruned_channels"]

# (channels, H, W, kernel_size, stride, padding, dilation): strided geometries whose stride phases fit the
# output grid.
STRIDED_SHAPES = [
    (4, 16, 16, 3, 2, 1, 1),  # MobileNetV2's 3x3/s2
    (5, 13, 11, 3, 2, 1, 1),  # odd sizes: phases of different heights and widths
    (3, 8, 9, 5, 2, 2, 1),
    (3, 9, 7, 3, 2, 2, 2),  # dilated 2 at stride 2: only the even phase is read, odd pixels get no gradient
    (2, 7, 7, 3, (1, 2), 1, 1),  # stride 1 in one dimension only
    (3, 10, 10, 3, 3, 1, 1),  # stride 3
    (2, 2, 2, 3, 2, 1, 1),  # a 1x1 output
]


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
@pytest.mark.parametrize("channels,h,w,kernel_size,padding,dilation", SHAPES, ids=str)
def test_matches_masked_conv(channels, h, w, kernel_size, padding, dilation, sparsity):
    layer = make_layer(channels, channels, kernel_size, sparsity, "sparse", padding=padding, dilation=dilation,
                       groups=channels)
    assert_matches_masked_conv(layer, torch.randn(3, channels, h, w, dtype=F64))


@pytest.mark.parametrize("sparsity", SPARSITIES, ids=str)
@pytest.mark.parametrize("channels,h,w,kernel_size,stride,padding,dilation", STRIDED_SHAPES, ids=str)
def test_strided_matches_masked_conv(channels, h, w, kernel_size, stride, padding, dilation, sparsity):
    layer = make_layer(channels, channels, kernel_size, sparsity, "sparse", stride=stride, padding=padding,
                       dilation=dilation, groups=channels)
    assert_matches_masked_conv(layer, torch.randn(3, channels, h, w, dtype=F64))


@pytest.mark.parametrize("sparsity", [0.0, 0.9], ids=str)
def test_float32_matches_masked_conv(sparsity):
    """float32 on MobileNetV2-like planes (8x8, 16x16) and a batch long enough that the weight gradient sums
    many vectors per weight."""
    for h in (8, 16):
        for stride in (1, 2):
            layer = make_layer(12, 12, 3, sparsity, "sparse", F32, stride=stride, padding=1, groups=12)
            assert_matches_masked_conv(layer, torch.randn(24, 12, h, h, dtype=F64))


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(threads):
    """Threads split the planes or channels: more threads than channels, and one thread with all of them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for stride in (1, 2):
            layer = make_layer(2, 2, 3, 0.3, "sparse", stride=stride, padding=1, groups=2)
            assert_matches_masked_conv(layer, torch.randn(4, 2, 6, 5, dtype=F64))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("stride", [1, 2])
def test_non_finite_neighbours_do_not_leak(stride):
    """Loads run past each plane into the next one (and the previous): an Inf or NaN there must give exactly the
    same finite results as without it, in the forward and both gradients, for the planes that do not hold it."""
    layer = make_layer(4, 4, 3, 0.0, "sparse", stride=stride, padding=1, groups=4)
    x = torch.randn(3, 4, 5, 6, dtype=F64)
    grad = torch.randn(layer(x).shape, dtype=F64)
    poisoned_x, poisoned_grad = x.clone(), grad.clone()
    poisoned_x[1, 2] = float("inf")  # one whole plane: its neighbours (1, 1) and (1, 3) read next to it
    poisoned_x[0, 0, 0, 0] = float("nan")  # the tensor's first element
    poisoned_grad[1, 2] = float("nan")
    poisoned_grad[2, 3, -1, -1] = float("inf")  # the tensor's last element

    def run(xv, gv):
        layer.zero_grad(set_to_none=True)
        xr = xv.clone().requires_grad_()
        y = layer(xr)
        y.backward(gv)
        return y.detach(), xr.grad, layer.weight_values.grad

    clean_y, clean_dx, _ = run(x, grad)
    y, dx, _ = run(poisoned_x, poisoned_grad)
    untouched = torch.ones(3, 4, dtype=torch.bool)
    untouched[1, 2] = untouched[0, 0] = untouched[2, 3] = False
    assert torch.equal(y[untouched], clean_y[untouched])
    assert torch.equal(dx[untouched], clean_dx[untouched])
    # Weight gradient: with the poisoned planes' channel inputs finite, channel 1's taps only see clean data.
    finite_x = x.clone()
    finite_x[1, 2] = 5.0
    poisoned_grad2 = grad.clone()
    poisoned_grad2[1, 2] = float("nan")
    _, _, d_w_clean = run(finite_x, grad)
    d_w_clean = d_w_clean.clone()
    _, _, d_w = run(finite_x, poisoned_grad2)
    rows = torch.repeat_interleave(torch.arange(4), layer.mask.view(4, -1).sum(1))
    assert torch.equal(d_w[rows != 2], d_w_clean[rows != 2])
    assert torch.isnan(d_w[rows == 2]).all()


def test_gradcheck():
    layer = make_layer(3, 3, 3, 0.4, "sparse", padding=1, groups=3)
    x = torch.randn(2, 3, 5, 4, dtype=F64, requires_grad=True)
    assert gradcheck(lambda inp, vals: torch.func.functional_call(layer, {"weight_values": vals}, (inp,)),
                     (x, layer.weight_values.detach().clone().requires_grad_()))


@pytest.mark.skipif(not _extension.AVAILABLE, reason="compares the compiled algorithms")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("forced", ["batch", "plane"])
def test_agrees_with_the_other_algorithms(monkeypatch, forced, stride):
    """The depthwise kernels and the batch / plane kernels (forced) on the same float64 layer and data."""
    layer = make_layer(6, 6, 3, 0.6, "sparse", stride=stride, padding=1, groups=6)
    x = torch.randn(4, 6, 9, 7, dtype=F64, requires_grad=True)
    grad = torch.randn(layer(x).shape, dtype=F64)
    results = []
    for algorithm in (None, forced):
        if algorithm is None:
            monkeypatch.delenv("SPARSEKERN_CONV_ALGORITHM", raising=False)
        else:
            monkeypatch.setenv("SPARSEKERN_CONV_ALGORITHM", algorithm)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = layer(x)
        y.backward(grad)
        results.append((y.detach(), x.grad.clone(), layer.weight_values.grad.clone()))
    for got, other in zip(*results):
        torch.testing.assert_close(got, other, rtol=1e-12, atol=1e-12)


def test_other_geometries_fall_back():
    """An output smaller than the input at stride 1, or stride phases wider than the output grid (stride 2
    without padding), is not the depthwise kernels' case; those layers still match (plane / batch kernels)."""
    for geometry in (dict(stride=2, padding=0), dict(padding=0)):
        layer = make_layer(4, 4, 3, 0.5, "sparse", groups=4, **geometry)
        assert_matches_masked_conv(layer, torch.randn(2, 4, 9, 8, dtype=F64))
