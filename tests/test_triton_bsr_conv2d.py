"""The Triton block-sparse Conv2d kernels (sparsekern/triton/bsr_conv2d.py) and their CUDA-key functions
(dispatch_conv.py), against an independent float64 oracle, with DESIGN.md's tolerance rule.

The oracle: the dense weight rebuilt from the blocks in float64 (the tap-major matrix by plain reshapes,
tests/helpers.py, then back to (C_out, C_in, kH, kW)), F.conv2d and its autograd in float64. The baseline of
the rule is the same dense computation in float32 on the same, already rounded inputs, rounded to the input
dtype (for float16 / bfloat16 that is PyTorch's GPU convolution: float32 accumulation, one rounding; the
CPU has no half convolution to compare with). Forward results may be 2x, gradients 3x the baseline's error,
plus one ulp of the largest element (helpers.assert_error_budget).

Without a GPU the kernels run on CPU tensors under Triton's interpreter (conftest.py sets TRITON_INTERPRET=1),
slowly: the shapes are a handful of pixels, and each case runs each kernel once. Every kernel call runs with
``poisoned_empty`` (torch.empty filled with NaN), so an output element left unwritten fails.
"""
import importlib
import os
from dataclasses import dataclass

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from helpers import assert_error_budget, blocks_to_dense, config_params, dense_to_blocks, grid_mask  # noqa: E402
from sparsekern import reference  # noqa: E402
from sparsekern.layout import BSRLayout  # noqa: E402
from sparsekern.triton import AVAILABLE  # noqa: E402

if not AVAILABLE:
    pytest.skip("sparsekern.triton could not load its kernels", allow_module_level=True)

# By module path: the package attribute bsr_conv2d is the kernel function.
conv = importlib.import_module("sparsekern.triton.bsr_conv2d")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is not 1 and there is no CUDA device to run the kernels on",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
# See test_triton_bsr.py: the interpreter's tl.dot multiplies bfloat16 as raw uint16 bit patterns.
_BF16 = pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.skipif(
    INTERPRET, reason="Triton's interpreter computes bfloat16 tl.dot on the raw uint16 bit patterns; needs a GPU"))


# ---------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    n: int
    c_in: int
    c_out: int
    hw: tuple
    kernel: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    block: tuple = (16, 16)
    density: float = 0.5  # fraction of the block grid kept
    pruned_row: int | None = None  # a block row with no kept block (output channels that only get the bias)
    pruned_col: int | None = None  # a block column with no kept block (a tap's channels nobody reads)
    layout: str = "contiguous"  # of x and of grad: "contiguous", "channels_last" or "strided" (views)
    bias: bool = True
    split: bool = False  # shrink the weight gradient's split sizes so the few pixels here split

    @property
    def geometry(self):
        return list(self.kernel), list(self.stride), list(self.padding), list(self.dilation), 1


CASES = {
    "3x3-s1-p1": Case(2, 32, 48, (7, 6), (3, 3), padding=(1, 1), split=True),
    "3x3-s2-p1-pruned-row-col-channels-last": Case(3, 48, 32, (7, 5), (3, 3), (2, 2), (1, 1), pruned_row=1,
                                                   pruned_col=4, layout="channels_last", bias=False),
    "3x3-d2-strided": Case(1, 32, 32, (9, 8), (3, 3), dilation=(2, 2), layout="strided", split=True),
    "1x1-dense": Case(2, 32, 48, (6, 5), (1, 1), density=1.0),
    "1x1-s2-32x32": Case(2, 64, 32, (7, 7), (1, 1), (2, 2), block=(32, 32), density=0.6, layout="channels_last"),
    "1x3-s12-p01-16x32": Case(2, 32, 48, (5, 7), (1, 3), (1, 2), (0, 1), block=(16, 32), density=0.6,
                              split=True),
    "3x3-p1-32x16-channels-last": Case(2, 32, 64, (5, 5), (3, 3), padding=(1, 1), block=(32, 16),
                                       layout="channels_last", bias=False),
    "3x3-s2-d2-p1-32x32-strided": Case(1, 32, 64, (9, 9), (3, 3), (2, 2), (1, 1), (2, 2), block=(32, 32),
                                       layout="strided", split=True),
    "3x3-empty": Case(2, 32, 32, (5, 5), (3, 3), padding=(1, 1), density=0.0),
    "3x3-p1-64x64": Case(1, 64, 64, (5, 5), (3, 3), padding=(1, 1), block=(64, 64), density=0.5),
    "3x3-s2-p1-128x128": Case(1, 128, 128, (4, 4), (3, 3), (2, 2), (1, 1), block=(128, 128), density=0.3),
    "1x1-16x128-strided": Case(2, 128, 32, (3, 3), (1, 1), block=(16, 128), density=1.0, layout="strided"),
}
# For the sweep over every tuned config: 128x128 blocks (no cap cut down), stride 2, as few pixels as will do.
CONFIG_CASE = "1x1-s2-128x128"
CASES[CONFIG_CASE] = Case(1, 256, 128, (5, 5), (1, 1), (2, 2), block=(128, 128), density=1.0)
# 16-bit dtypes on a few cases (one per block shape family).
HALF_CASES = ["3x3-s2-p1-pruned-row-col-channels-last", "1x3-s12-p01-16x32", "3x3-p1-64x64"]
CASE_DTYPES = ([pytest.param(name, F32, id=f"{name}-float32") for name in CASES]
               + [pytest.param(name, torch.float16, id=f"{name}-float16") for name in HALF_CASES]
               + [pytest.param(name, _BF16.values[0], id=f"{name}-bfloat16", marks=_BF16.marks)
                  for name in HALF_CASES])


def _activation(shape, dtype, kind):
    """A random (N, C, H, W) tensor of the given memory layout (values rounded to dtype once)."""
    n, c, h, w = shape
    if kind == "channels_last":
        t = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        assert t.stride(1) == 1
    elif kind == "strided":  # every other column of a wider tensor, channels and rows transposed in memory
        t = torch.randn(n, h, c, 2 * w).to(dtype).permute(0, 2, 1, 3)[..., ::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    else:
        t = torch.randn(shape).to(dtype)
    return t.to(DEVICE)


def _dense_weight(values, layout, case):
    """The float64 (C_out, C_in, kH, kW) weight the blocks stand for: tap-major matrix, then un-permuted."""
    w2d = blocks_to_dense(values.double().cpu(), layout)  # (C_out, kH·kW·C_in), column t·C_in + c
    return w2d.view(case.c_out, *case.kernel, case.c_in).permute(0, 3, 1, 2)


def _kept_blocks(dw, layout):
    """dW (C_out, C_in, kH, kW) at the layout's kept blocks of its tap-major view: (nnzb, bh, bw)."""
    return dense_to_blocks(dw.permute(0, 2, 3, 1).reshape(dw.shape[0], -1), layout)


@dataclass
class Problem:
    case: Case
    layout: BSRLayout
    lt: list  # the 6 layout tensors on DEVICE
    values: torch.Tensor
    x: torch.Tensor
    bias: torch.Tensor | None
    grad: torch.Tensor
    out_size: tuple


def _problem(name, dtype):
    case = CASES[name]
    bh, bw = case.block
    taps = case.kernel[0] * case.kernel[1]
    grid = grid_mask((case.c_out // bh, taps * case.c_in // bw), case.density, case.pruned_row, case.pruned_col)
    layout = BSRLayout.from_mask(grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1), case.block)
    values = torch.randn(layout.block.nnz, bh, bw).to(dtype).to(DEVICE)
    x = _activation((case.n, case.c_in, *case.hw), dtype, case.layout)
    bias = torch.randn(case.c_out).to(dtype).to(DEVICE) if case.bias else None
    out_size = tuple((i + 2 * p - d * (k - 1) - 1) // s + 1 for i, k, s, p, d in
                     zip(case.hw, case.kernel, case.stride, case.padding, case.dilation))
    grad = _activation((case.n, case.c_out, *out_size), dtype, case.layout)
    return Problem(case, layout, [t.to(DEVICE) for t in layout.tensors()], values, x, bias, grad, out_size)


def _dense_results(pb, compute):
    """(y, dx, dW at the kept blocks) by dense F.conv2d in ``compute`` (float64: the oracle; float32: the
    baseline before rounding), on the problem's rounded inputs."""
    kernel, stride, padding, dilation, _ = pb.case.geometry
    w = _dense_weight(pb.values, pb.layout, pb.case).to(compute).requires_grad_()
    x = pb.x.cpu().to(compute).requires_grad_()
    bias = None if pb.bias is None else pb.bias.cpu().to(compute)
    y = F.conv2d(x, w, bias, stride, padding, dilation)
    dx, dw = torch.autograd.grad(y, (x, w), pb.grad.cpu().to(compute))
    return y.detach(), dx, _kept_blocks(dw, pb.layout)


def _check(out, pb, which, factor, what):
    dtype = pb.values.dtype
    ref64 = _dense_results(pb, F64)[which]
    baseline = _dense_results(pb, F32)[which].to(dtype)
    assert out.dtype == dtype, what
    assert_error_budget(out.cpu(), baseline, ref64, factor, what)


# ---------------------------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("name, dtype", CASE_DTYPES)
def test_forward(name, dtype, poisoned_empty):
    pb = _problem(name, dtype)
    y = conv.bsr_conv2d(pb.x, pb.values, *pb.lt, pb.bias, *pb.case.geometry)
    assert y.shape == (pb.case.n, pb.case.c_out, *pb.out_size)
    assert y.is_contiguous(memory_format=reference.activation_format(pb.x))  # channels_last follows x
    _check(y, pb, 0, 2.0, f"bsr_conv2d {name} {dtype}")


@pytest.mark.parametrize("name, dtype", CASE_DTYPES)
def test_input_grad(name, dtype, poisoned_empty):
    pb = _problem(name, dtype)
    dx = conv.bsr_conv2d_input_grad(pb.grad, pb.values, *pb.lt, list(pb.case.hw), *pb.case.geometry)
    assert dx.shape == pb.x.shape and dx.is_contiguous(memory_format=reference.activation_format(pb.grad))
    _check(dx, pb, 1, 3.0, f"bsr_conv2d_input_grad {name} {dtype}")


@pytest.mark.parametrize("name, dtype", CASE_DTYPES)
def test_weight_grad(name, dtype, poisoned_empty, monkeypatch):
    pb = _problem(name, dtype)
    nnzb = pb.values.shape[0]
    n_pixels = pb.case.n * pb.out_size[0] * pb.out_size[1]
    if pb.case.split:
        # Splits of a few pixels (each one partial tile of BLOCK_P = 32), the last one shorter.
        monkeypatch.setattr(conv, "MIN_PIXELS_PER_SPLIT", 8)
        monkeypatch.setattr(conv, "SPLIT_GRANULE", 4)
        assert conv._split_pixels(n_pixels, nnzb)[0] > 1
    else:
        assert conv._split_pixels(n_pixels, nnzb)[0] == 1  # stored straight into the output
    dw = conv.bsr_conv2d_weight_grad(pb.grad, pb.x, *pb.lt, *pb.case.geometry)
    assert dw.shape == (nnzb, *pb.case.block) and dw.is_contiguous()
    _check(dw, pb, 2, 3.0, f"bsr_conv2d_weight_grad {name} {dtype}")


def test_the_split_policy():
    """Few kept blocks of a long reduction split into ~TARGET_PROGRAMS programs of >= MIN pixels; many
    blocks do not split; the splits cover the pixels exactly once."""
    split, per_split = conv._split_pixels(128 * 32 * 32, 5)
    assert split > 64 and 5 * split <= 2 * conv.TARGET_PROGRAMS
    assert per_split >= conv.MIN_PIXELS_PER_SPLIT and per_split % conv.SPLIT_GRANULE == 0
    assert (split - 1) * per_split < 128 * 32 * 32 <= split * per_split
    assert conv._split_pixels(128 * 32 * 32, 4096) == (1, 128 * 32 * 32)
    assert conv._split_pixels(7, 1)[0] == 1


def test_empty_batch(poisoned_empty):
    pb = _problem("3x3-s1-p1", F32)
    x = pb.x[:0]
    grad = pb.grad[:0]
    geo = pb.case.geometry
    assert conv.bsr_conv2d(x, pb.values, *pb.lt, pb.bias, *geo).shape == (0, 48, 7, 6)
    assert conv.bsr_conv2d_input_grad(grad, pb.values, *pb.lt, [7, 6], *geo).shape == (0, 32, 7, 6)
    dw = conv.bsr_conv2d_weight_grad(grad, x, *pb.lt, *geo)
    assert torch.equal(dw.cpu(), torch.zeros(pb.values.shape))  # a sum over no pixel


def test_fully_pruned_layer(poisoned_empty):
    """nnzb = 0: y is the bias everywhere, dx zeros, dW has no block."""
    pb = _problem("3x3-empty", F32)
    assert pb.values.shape[0] == 0
    y = conv.bsr_conv2d(pb.x, pb.values, *pb.lt, pb.bias, *pb.case.geometry)
    assert torch.equal(y.cpu(), pb.bias.cpu().view(1, -1, 1, 1).expand(2, 32, 5, 5))
    dx = conv.bsr_conv2d_input_grad(pb.grad, pb.values, *pb.lt, [5, 5], *pb.case.geometry)
    assert torch.equal(dx.cpu(), torch.zeros(2, 32, 5, 5))
    assert conv.bsr_conv2d_weight_grad(pb.grad, pb.x, *pb.lt, *pb.case.geometry).shape == (0, 16, 16)


def test_groups_are_not_for_the_kernels():
    pb = _problem("1x1-dense", F32)
    with pytest.raises(ValueError, match="groups: the Triton conv kernels support groups == 1, got 2"):
        conv.bsr_conv2d(pb.x, pb.values, *pb.lt, None, [1, 1], [1, 1], [0, 0], [1, 1], 2)


# ------------------------------------------------------------------------------------ every GPU config
# The tests above run the one fixed config; here each tuned config runs once, on 128x128 blocks where no
# cap is cut down to the block, with every kernel (under the interpreter too: a few seconds).

@pytest.mark.parametrize("config", config_params(conv.FORWARD_CONFIGS))
def test_every_forward_and_input_grad_config(config, only_config, poisoned_empty):
    only_config(conv._bsr_conv2d_gemm_kernel, config)
    pb = _problem(CONFIG_CASE, torch.float16)
    y = conv.bsr_conv2d(pb.x, pb.values, *pb.lt, pb.bias, *pb.case.geometry)
    _check(y, pb, 0, 2.0, f"forward {config}")
    dx = conv.bsr_conv2d_input_grad(pb.grad, pb.values, *pb.lt, list(pb.case.hw), *pb.case.geometry)
    _check(dx, pb, 1, 3.0, f"input grad {config}")


@pytest.mark.parametrize("config", config_params(conv.WEIGHT_GRAD_CONFIGS))
def test_every_weight_grad_config(config, only_config, poisoned_empty):
    only_config(conv._bsr_conv2d_weight_grad_kernel, config)
    pb = _problem(CONFIG_CASE, torch.float16)
    dw = conv.bsr_conv2d_weight_grad(pb.grad, pb.x, *pb.lt, *pb.case.geometry)
    _check(dw, pb, 2, 3.0, f"weight grad {config}")


def test_prune_caps_the_tiles_to_the_block():
    """The estimate sees the tiles the kernels use: caps cut down to the block, M and K swapped for the input
    gradient; no duplicates survive."""
    args = {"values_ptr": torch.empty(0, dtype=torch.float16), "BH": 16, "BW": 128, "TRANSPOSED": True}
    kept = conv.tuning.make_prune(conv._gemm_tile)(conv.FORWARD_CONFIGS, args)
    tiles = [(conv._gemm_tile(c, args)[0], c.num_warps, c.num_stages) for c in kept]
    assert len(tiles) == len(set(tiles)) and all(m in (64, 128) and k == 16 for (m, k, _), _, _ in tiles)
    args = {"x_ptr": torch.empty(0), "BH": 16, "BW": 32}
    kept = conv.tuning.make_prune(conv._weight_grad_tile)(conv.WEIGHT_GRAD_CONFIGS, args)
    assert all(conv._weight_grad_tile(c, args)[0][:2] == (16, 32) for c in kept)


# --------------------------------------------------------------------------------------------- dispatch
# The CUDA-key functions, called directly (they work on any device): the registry's checks, the Triton
# kernels for what they support, the reference for the rest.

@pytest.fixture
def dispatch_conv():
    module = importlib.import_module("sparsekern.triton.dispatch_conv")
    from sparsekern.triton import dispatch
    dispatch.clear_validated_layouts()
    yield module
    dispatch.clear_validated_layouts()


def _forbid(monkeypatch, target, names):
    for name in names:
        def fail(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} must not run here")
        monkeypatch.setattr(target, name, fail)


_FALLBACKS = ("_reference_fallback_bsr_conv2d", "_reference_fallback_bsr_conv2d_input_grad",
              "_reference_fallback_bsr_conv2d_weight_grad")
_KERNELS = ("bsr_conv2d", "bsr_conv2d_input_grad", "bsr_conv2d_weight_grad")


def test_dispatch_runs_the_kernels(dispatch_conv, monkeypatch, poisoned_empty):
    _forbid(monkeypatch, dispatch_conv, _FALLBACKS)
    pb = _problem("1x3-s12-p01-16x32", F32)
    geo = pb.case.geometry
    y = dispatch_conv.bsr_conv2d_cuda(pb.x, pb.values, *pb.lt, pb.bias, *geo)
    dx = dispatch_conv.bsr_conv2d_input_grad_cuda(pb.grad, pb.values, *pb.lt, list(pb.case.hw), *geo)
    dw = dispatch_conv.bsr_conv2d_weight_grad_cuda(pb.grad, pb.x, *pb.lt, *geo)
    assert torch.equal(y, conv.bsr_conv2d(pb.x, pb.values, *pb.lt, pb.bias, *geo))
    assert torch.equal(dx, conv.bsr_conv2d_input_grad(pb.grad, pb.values, *pb.lt, list(pb.case.hw), *geo))
    assert torch.equal(dw, conv.bsr_conv2d_weight_grad(pb.grad, pb.x, *pb.lt, *geo))


def _grouped_problem(dtype):
    """groups = 2: C_in 32 (16 per group), C_out 32, 3x3, 16x16 blocks of the (32, 9·16) tap-major weight."""
    grid = grid_mask((2, 9), 0.5, None, None)
    layout = BSRLayout.from_mask(grid.repeat_interleave(16, 0).repeat_interleave(16, 1), (16, 16))
    values = torch.randn(layout.block.nnz, 16, 16, dtype=dtype, device=DEVICE)
    x = torch.randn(2, 32, 5, 6, dtype=dtype, device=DEVICE)
    grad = torch.randn(2, 32, 5, 6, dtype=dtype, device=DEVICE)
    return layout, [t.to(DEVICE) for t in layout.tensors()], values, x, grad


@pytest.mark.parametrize("what", ["float64", "groups2"])
def test_dispatch_falls_back_to_the_reference(what, dispatch_conv, monkeypatch):
    _forbid(monkeypatch, dispatch_conv._conv_kernels, _KERNELS)
    if what == "float64":
        pb = _problem("3x3-s2-p1-pruned-row-col-channels-last", F64)
        lt, values, x, grad, bias = pb.lt, pb.values, pb.x, pb.grad, torch.randn(32, dtype=F64, device=DEVICE)
        geo, hw = pb.case.geometry, list(pb.case.hw)
    else:
        _, lt, values, x, grad = _grouped_problem(F32)
        bias, geo, hw = torch.randn(32, device=DEVICE), ([3, 3], [1, 1], [1, 1], [1, 1], 2), [5, 6]
    assert not dispatch_conv.uses_triton(values.dtype, 16, 16, geo[4])
    y = dispatch_conv.bsr_conv2d_cuda(x, values, *lt, bias, *geo)
    out_size = list(y.shape[2:])
    assert torch.equal(y, reference.bsr_conv2d(x, values, *lt, bias, *geo, out_size))
    assert torch.equal(dispatch_conv.bsr_conv2d_input_grad_cuda(grad, values, *lt, hw, *geo),
                       reference.bsr_conv2d_input_grad(grad, values, *lt, hw, *geo))
    assert torch.equal(dispatch_conv.bsr_conv2d_weight_grad_cuda(grad, x, *lt, *geo),
                       reference.bsr_conv2d_weight_grad(grad, x, *lt, *geo))


def test_dispatch_uses_triton_names_the_supported_cases(dispatch_conv):
    assert dispatch_conv.uses_triton(torch.bfloat16, 128, 16, 1)
    assert not dispatch_conv.uses_triton(F32, 16, 16, 2)
    assert not dispatch_conv.uses_triton(F32, 8, 16, 1) and not dispatch_conv.uses_triton(F64, 16, 16, 1)
    # int32 pixel indices in the kernels: a pixel count beyond them takes the reference.
    assert dispatch_conv.uses_triton(F32, 16, 16, 1, 2 ** 31 - 1)
    assert not dispatch_conv.uses_triton(F32, 16, 16, 1, 2 ** 31)


def test_dispatch_bad_arguments_raise_the_registry_errors(dispatch_conv, monkeypatch):
    _forbid(monkeypatch, dispatch_conv._conv_kernels, _KERNELS)  # nothing may launch
    pb = _problem("1x1-dense", F32)
    geo = pb.case.geometry
    with pytest.raises(ValueError, match=r"bias: expected shape \(48,\)"):
        dispatch_conv.bsr_conv2d_cuda(pb.x, pb.values, *pb.lt, pb.bias[:-1], *geo)
    with pytest.raises(ValueError, match="x: expected 32 channels"):
        dispatch_conv.bsr_conv2d_cuda(pb.x[:, :16], pb.values, *pb.lt, None, *geo)
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        dispatch_conv.bsr_conv2d_cuda(pb.x.half(), pb.values, *pb.lt, None, *geo)
    with pytest.raises(ValueError, match="grad: expected spatial size"):
        dispatch_conv.bsr_conv2d_input_grad_cuda(pb.grad[..., :-1], pb.values, *pb.lt, list(pb.case.hw), *geo)
    with pytest.raises(ValueError, match="grad: expected shape"):
        dispatch_conv.bsr_conv2d_weight_grad_cuda(pb.grad[:1], pb.x, *pb.lt, *geo)
    with pytest.raises(ValueError, match="bias: expected a tensor on"):
        dispatch_conv.bsr_conv2d_cuda(pb.x, pb.values, *pb.lt, pb.bias.to("meta"), *geo)
    bad = list(pb.lt)
    bad[1] = bad[1].flip(0)  # column indices out of order: the layout's content check
    with pytest.raises(ValueError):
        dispatch_conv.bsr_conv2d_cuda(pb.x, pb.values, *bad, None, *geo)


@pytest.mark.parametrize("op", ["bsr_conv2d", "bsr_conv2d_input_grad", "bsr_conv2d_weight_grad"])
def test_registered_for_cuda(op):
    from sparsekern.triton import CONV_REGISTERED
    assert CONV_REGISTERED
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CUDA")
