"""The im2col lowering of the CSR conv ops (sparsekern/conv_im2col.py), registered for CUDA tensors: here its
three functions run on CPU tensors, where the inner csr_spmm / csr_sddmm are the CPU kernels (the reference
with SPARSEKERN_NO_EXT=1), so the lowering itself (unfold, transposed values and layout, fold, chunking,
output layout, fallback, checks) is what is under test; on a GPU a short test runs it through SparseConv2d.

Accuracy follows DESIGN.md (helpers.assert_error_budget): error against a float64 reference at most 2x (3x
for the gradients) the error of F.conv2d (and its autograd) in the same dtype. The float64 reference is
``sparsekern.reference``'s conv ops on the float64 data for float32 cases; a float64 computation cannot judge
a float64 one, so float64 cases use an exact (double-double, helpers.exact_mm) oracle, ``exact_oracle``: the
construction of test_nn_conv's ``_oracle_conv`` without its one-hot basis (seconds per case), checked here to
give the same values; float64 results are also compared with the reference ops. The baseline is
test_nn_conv's ``_run_conv``, the masks its ``conv_mask``.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from helpers import _eps, assert_error_budget, exact_mm, max_err
from sparsekern import SparseConv2d, _extension, _ops, check_once, conv_im2col, reference
from sparsekern.layout import CSRLayout
from test_nn_conv import _oracle_conv, _run_conv, conv_mask

F32, F64 = torch.float32, torch.float64
X_SHAPE = (3, 5, 13, 11)  # odd everything; 7 output channels
C_OUT = 7

# (kernel_size, stride, padding, dilation)
GEOMETRIES = [
    (3, 1, 1, 1),
    ((1, 3), 1, 0, 1),
    (5, 2, 1, 1),
    (3, 2, 0, 2),
    ((3, 5), (2, 1), (1, 0), (1, 2)),
]
SPARSITIES = [0.0, 0.5, 0.9, 1.0, "pruned_channels"]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


class Case:
    """A random layer (mask, values, layout, bias), input and output gradient for one geometry."""

    def __init__(self, kernel_size=3, stride=1, padding=1, dilation=1, sparsity=0.5, dtype=F32, x_shape=X_SHAPE,
                 c_out=C_OUT, groups=1):
        n, c_in, h, w = x_shape
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation, self.groups = _pair(padding), _pair(dilation), groups
        self.mask = conv_mask((c_out, c_in // groups, *self.kernel_size), sparsity)
        self.layout = CSRLayout.from_mask(self.mask.reshape(c_out, -1)).tensors()
        nnz = int(self.mask.sum())
        self.dtype = dtype
        self.values = torch.randn(nnz, dtype=F64).to(dtype)
        self.bias = torch.randn(c_out, dtype=F64).to(dtype)
        self.x = torch.randn(x_shape, dtype=F64).to(dtype)
        out_shape = F.conv2d(self.x, self.dense_weight(), None, **self.conv_args()).shape
        self.grad = torch.randn(out_shape, dtype=F64).to(dtype)
        self.input_size = [h, w]

    @property
    def geometry(self):
        return (self.kernel_size, self.stride, self.padding, self.dilation, self.groups)

    def conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def dense_weight(self):
        w = torch.zeros(self.mask.shape, dtype=self.dtype)
        w[self.mask] = self.values
        return w

    def as_layer(self):  # what test_nn_conv's oracle and baseline read from a layer
        return types.SimpleNamespace(mask=self.mask, **self.conv_args(), kernel_size=tuple(self.kernel_size))

    # The three lowered functions, optionally on other views of the activations.
    def forward(self, bias=True, x=None):
        x = self.x if x is None else x
        return conv_im2col.csr_conv2d_im2col(x, self.values, *self.layout, self.bias if bias else None,
                                             *self.geometry)

    def input_grad(self, grad=None):
        grad = self.grad if grad is None else grad
        return conv_im2col.csr_conv2d_input_grad_im2col(grad, self.values, *self.layout, self.input_size,
                                                        *self.geometry)

    def weight_grad(self, grad=None, x=None):
        grad = self.grad if grad is None else grad
        x = self.x if x is None else x
        return conv_im2col.csr_conv2d_weight_grad_im2col(grad, x, *self.layout, *self.geometry)

    def all_three(self):
        return self.forward(), self.forward(bias=False), self.input_grad(), self.weight_grad()

    # The float64 reference ops (sparsekern.reference) on the same numbers.
    def reference_ops(self, bias=True):
        d = lambda t: t.double()  # noqa: E731
        out_size = self.grad.shape[2:]
        return (reference.csr_conv2d(d(self.x), d(self.values), *self.layout, d(self.bias) if bias else None,
                                     *self.geometry, out_size),
                reference.csr_conv2d_input_grad(d(self.grad), d(self.values), *self.layout, self.input_size,
                                                *self.geometry),
                reference.csr_conv2d_weight_grad(d(self.grad), d(self.x), *self.layout, *self.geometry))


def exact_oracle(case: Case, bias: bool = True):
    """Output, input gradient and weight gradient (at the kept weights) of a groups=1 case, each correctly
    rounded to float64 (helpers.exact_mm, double-double): as test_nn_conv._oracle_conv, but without its
    (C_in·H·W)² one-hot basis, which costs seconds per case at 13x11. U = im2col(x) and the adjoint gather
    of the gradient are exact copies (or zeros), so each result is one exact_mm:
    y = [W b] [U; 1], dW = dY Uᵀ, and dx[c, (n, h, w)] = Σ_(o, tap) W[o, c, tap] · dY[n, o, the output pixel
    that reads (h, w) through tap] (0 where none does)."""
    x, g, mask = case.x.double(), case.grad.double(), case.mask
    n, c_in, h, wd = x.shape
    c_out, taps = mask.shape[0], case.kernel_size[0] * case.kernel_size[1]
    pixels = g.shape[2] * g.shape[3]
    unfold = dict(kernel_size=case.kernel_size, dilation=case.dilation, padding=case.padding, stride=case.stride)
    u = F.unfold(x, **unfold).transpose(0, 1).reshape(c_in * taps, n * pixels)
    w = case.dense_weight().double().reshape(c_out, -1)
    g2 = g.transpose(0, 1).reshape(c_out, n * pixels)
    ones = u.new_ones(1, n * pixels)
    y = exact_mm(torch.cat([w, case.bias.double()[:, None]], 1), torch.cat([u, ones])) if bias else exact_mm(w, u)
    d_w = exact_mm(g2, u.T)[mask.reshape(c_out, -1)]
    # Which output pixel reads input pixel (h, w) through each tap: unfold the input pixels' ids (1-based, 0 =
    # padding), then invert per tap (one tap maps distinct output pixels to distinct input pixels).
    ids = F.unfold(torch.arange(1.0, h * wd + 1, dtype=F64).view(1, 1, h, wd), **unfold)[0]  # (taps, L)
    reader = torch.full((taps, h * wd + 1), pixels, dtype=torch.long)  # pixels: "none", a zero column
    reader.scatter_(1, ids.long(), torch.arange(pixels).expand(taps, pixels).contiguous())
    g_padded = torch.cat([g.reshape(n, c_out, pixels), g.new_zeros(n, c_out, 1)], 2)
    gathered = g_padded[:, :, reader[:, 1:]]  # (n, C_out, taps, H·W)
    d_x = exact_mm(w.view(c_out, c_in, taps).permute(1, 0, 2).reshape(c_in, c_out * taps),
                   gathered.permute(1, 2, 0, 3).reshape(c_out * taps, n * h * wd))
    return (y.view(c_out, n, *g.shape[2:]).transpose(0, 1), d_x.view(c_in, n, h, wd).transpose(0, 1), d_w)


def assert_accurate(case: Case):
    """All three functions (forward with and without bias) within DESIGN.md's budget."""
    y, y_nobias, dx, dw = case.all_three()
    layer, w, ident = case.as_layer(), case.dense_weight(), (lambda t: t)
    assert y.is_contiguous() and dx.is_contiguous(), "outputs must be NCHW-contiguous like the op's fake"
    for bias, out in ((case.bias, y), (None, y_nobias)):
        base = _run_conv(w, bias, case.mask, case.x, ident, case.grad, layer)
        ref_ops = case.reference_ops(bias is not None)
        if case.dtype == F64:
            ref = exact_oracle(case, bias is not None)
            for name, o, r in zip(("output", "d_input", "d_weight"), (out, dx, dw), ref_ops):
                torch.testing.assert_close(o, r, msg=f"{name}: differs from the reference op")
        else:
            ref = ref_ops
        for name, bl, r in zip(("output", "d_input", "d_weight"), base[:3], ref):
            # The oracle itself must agree with plain PyTorch (a wrong one would inflate the budget below).
            assert max_err(bl, r) <= 1e4 * _eps(case.dtype) * max(1.0, r.abs().max().item()), name
        for name, o, bl, r, factor in zip(("output", "d_input", "d_weight"), (out, dx, dw), base[:3], ref,
                                          (2, 3, 3)):
            assert o.dtype == case.dtype
            assert_error_budget(o, bl, r, factor, name)


# ----------------------------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_matches_reference(geometry, sparsity, dtype):
    kernel_size, stride, padding, dilation = geometry
    case = Case(kernel_size, stride, padding, dilation, sparsity, dtype)
    if sparsity == 1.0:  # nothing kept: exact zeros (plus the bias), not merely small
        y, y_nobias, dx, dw = case.all_three()
        assert dw.shape == (0,) and bool((y_nobias == 0).all()) and bool((dx == 0).all())
        assert torch.equal(y, case.bias.view(1, -1, 1, 1).expand_as(y))
        return
    assert_accurate(case)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_pruned_output_channels_give_exactly_the_bias(dtype):
    case = Case(sparsity="pruned_channels", dtype=dtype)
    y = case.forward()
    pruned = ~case.mask.flatten(1).any(1)
    assert pruned.sum() == 3
    assert torch.equal(y[:, pruned], case.bias[pruned].view(1, -1, 1, 1).expand_as(y[:, pruned]))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_larger_case_meets_the_error_budget(dtype):
    """Long sums (C_in·kH·kW = 16·9 kept-weight candidates per output, 8·17·15 pixels per dot): where the
    2x / 3x rule, not the one-ulp floor, decides."""
    assert_accurate(Case(3, 1, 1, 1, 0.3, dtype, x_shape=(8, 16, 17, 15), c_out=9))


def test_exact_oracle_is_test_nn_conv_s():
    """The cheap oracle above gives the correctly rounded values test_nn_conv's one-hot oracle gives."""
    for geometry in GEOMETRIES:
        case = Case(*geometry, sparsity=0.5, dtype=F64, x_shape=(2, 3, 11, 9), c_out=4)
        mine = exact_oracle(case)
        theirs = _oracle_conv(case.dense_weight(), case.bias, case.x, case.grad, case.as_layer())[:3]
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=2 * _eps(F64), atol=0)


def test_empty_batch():
    case = Case(x_shape=(0, 5, 13, 11))
    y, _, dx, dw = case.all_three()
    assert y.shape == (0, C_OUT, 13, 11) and dx.shape == (0, 5, 13, 11)
    assert torch.equal(dw, torch.zeros_like(case.values))


# ---------------------------------------------------------------------------------------- input layouts

VIEWS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "non_contiguous": lambda t: torch.stack([t, -t], 4)[..., 0],  # a view with stride 2 along W
    "transposed_hw": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dtype", [F32, F64])
def test_input_layouts_give_the_same_result(view, dtype):
    """x and grad of any strides: the unfold / the gradient's feature-major copy read them into the same
    matrices, so the results are bitwise those of contiguous inputs."""
    case = Case(3, 2, 1, 1, 0.5, dtype)
    v = VIEWS[view]
    xv, gv = v(case.x), v(case.grad)
    assert torch.equal(xv, case.x) and not xv.is_contiguous()
    assert torch.equal(case.forward(x=xv), case.forward())
    assert torch.equal(case.input_grad(grad=gv), case.input_grad())
    assert torch.equal(case.weight_grad(grad=gv, x=xv), case.weight_grad())


# --------------------------------------------------------------------------------------------- chunking

def _per_sample_bytes(case: Case) -> int:
    """One sample's unfolded matrix: (C_in·kH·kW) rows (the layout's columns) times OH·OW pixels."""
    return (case.layout[2].shape[0] - 1) * case.grad[0, 0].numel() * case.x.element_size()


def _count_gemms(monkeypatch):
    calls = []
    for name in ("csr_spmm", "csr_sddmm"):
        real = getattr(_ops, name)

        def counting(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(_ops, name, counting)
    return calls


@pytest.mark.parametrize("n, samples_per_chunk, n_chunks", [(5, 2, 3), (7, 3, 3), (4, 2, 2)])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_chunked_batch_matches_one_chunk(n, samples_per_chunk, n_chunks, dtype, monkeypatch):
    """A CHUNK_BYTES that fits ``samples_per_chunk`` samples' unfolded matrix (N not a multiple of it in two
    cases): the batch runs in ``n_chunks`` GEMM calls per op, with the results of one chunk."""
    case = Case(5, 2, 1, 1, 0.5, dtype, x_shape=(n, 5, 13, 11))
    one_chunk = case.all_three()
    per_sample = _per_sample_bytes(case)
    monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", samples_per_chunk * per_sample + per_sample // 2)
    calls = _count_gemms(monkeypatch)
    chunked = case.all_three()
    assert calls.count("csr_spmm") == 3 * n_chunks and calls.count("csr_sddmm") == n_chunks
    for name, c, o in zip(("output", "output without bias", "d_input", "d_weight"), chunked, one_chunk):
        # Forward and input gradient: per-pixel columns, unaffected by where the batch is cut (up to the
        # kernels' choice of tiling by batch width); the weight gradient's dots are summed in another order.
        torch.testing.assert_close(c, o, rtol=16 * _eps(dtype), atol=16 * _eps(dtype) * o.abs().max().item(),
                                   msg=name)
    assert_accurate(case)  # still under the chunk bound patched above


def test_one_sample_larger_than_the_bound_still_runs(monkeypatch):
    monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", 1)
    case = Case(x_shape=(3, 5, 13, 11))
    calls = _count_gemms(monkeypatch)
    assert_accurate(case)
    assert calls.count("csr_sddmm") == 3  # one sample per chunk


def test_default_bound_keeps_resnet18_first_layer_chunked():
    """256 MiB: a 3x3, 64-channel layer on 32x32 maps at batch 128 (~302 MB unfolded in float32) takes two
    chunks; a small layer one."""
    assert conv_im2col.CHUNK_BYTES == 256 << 20
    assert len(list(conv_im2col._chunks(128, 64 * 9, 32 * 32, 4))) == 2
    assert len(list(conv_im2col._chunks(128, 16 * 9, 8 * 8, 4))) == 1


def test_outputs_are_fully_written(poisoned_empty, monkeypatch):
    """torch.empty fills with NaN: every element of the preallocated outputs is written, chunked or not."""
    case = Case(5, 2, 1, 1, "pruned_channels", F32, x_shape=(5, 5, 13, 11))
    for bound in (conv_im2col.CHUNK_BYTES, 2 * _per_sample_bytes(case)):
        monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", bound)
        for out in case.all_three():
            assert bool(torch.isfinite(out).all())
        assert_accurate(case)


# ------------------------------------------------------------------------------------ groups: reference

def test_groups_take_the_reference(monkeypatch):
    case = Case(3, (1, 2), (1, 0), (2, 1), 0.4, F64, x_shape=(2, 6, 9, 8), c_out=4, groups=2)
    calls = _count_gemms(monkeypatch)
    y, y_nobias, dx, dw = case.all_three()
    assert calls == []
    ref = case.reference_ops()
    assert torch.equal(y, ref[0]) and torch.equal(dx, ref[1]) and torch.equal(dw, ref[2])
    base = _run_conv(case.dense_weight(), None, case.mask, case.x, lambda t: t, case.grad, case.as_layer())
    torch.testing.assert_close(y_nobias, base[0])


# ---------------------------------------------------------------------------------------- checks, errors

def test_argument_errors_are_the_registry_ones():
    case = Case()
    meta = torch.device("meta")
    bad = [
        (lambda: conv_im2col.csr_conv2d_im2col(case.x.double(), case.values, *case.layout, None, *case.geometry),
         TypeError, "x: expected dtype torch.float32"),
        (lambda: conv_im2col.csr_conv2d_im2col(case.x, case.values, *case.layout, case.bias.to(meta),
                                               *case.geometry),
         ValueError, "bias: expected a tensor on cpu"),
        (lambda: conv_im2col.csr_conv2d_input_grad_im2col(case.grad[:, :3], case.values, *case.layout,
                                                          case.input_size, *case.geometry),
         ValueError, "grad: expected 7 channels"),
        (lambda: conv_im2col.csr_conv2d_input_grad_im2col(case.grad, case.values.to(meta), *case.layout,
                                                          case.input_size, *case.geometry),
         ValueError, "values: expected a tensor on cpu"),
        (lambda: conv_im2col.csr_conv2d_weight_grad_im2col(case.grad, case.x.to(meta), *case.layout,
                                                           *case.geometry),
         ValueError, "x: expected a tensor on cpu"),
        (lambda: conv_im2col.csr_conv2d_weight_grad_im2col(case.grad[:2], case.x, *case.layout, *case.geometry),
         ValueError, "grad: expected shape"),
    ]
    for call, error, message in bad:
        with pytest.raises(error, match=message):
            call()


def test_layout_contents_are_checked_once(monkeypatch):
    check_once.clear()
    calls = []
    real = _ops._check_layout_values

    def counting(*layout):
        calls.append(1)
        return real(*layout)

    monkeypatch.setattr(_ops, "_check_layout_values", counting)
    case = Case()
    for _ in range(2):
        case.all_three()
    if not _extension.AVAILABLE:  # the inner reference ops check the layout on every call themselves
        calls.clear()
        check_once.clear()
        case.forward()
        assert len(calls) == 2  # once by the lowering, once by the reference csr_spmm
        return
    assert len(calls) == 1
    corrupt = list(case.layout)
    corrupt[1] = corrupt[1].clone()
    corrupt[1][0] = 10 ** 6
    with pytest.raises(ValueError, match="col_indices must lie in"):
        conv_im2col.csr_conv2d_im2col(case.x, case.values, *corrupt, None, *case.geometry)
    # The transpose half too: the input gradient reads the values through t_perm.
    for position, message in ((4, r"t_perm must lie in"), (5, r"t_perm_inv is not the inverse")):
        corrupt = list(case.layout)
        corrupt[position] = corrupt[position].clone()
        corrupt[position][0] = 10 ** 6 if position == 4 else corrupt[position][1]
        with pytest.raises(ValueError, match=message):
            conv_im2col.csr_conv2d_input_grad_im2col(case.grad, case.values, *corrupt, case.input_size,
                                                     *case.geometry)


# --------------------------------------------------------------------------------------------- registration

@pytest.mark.parametrize("op", list(conv_im2col.IMPLS))
def test_registered_for_cuda(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CUDA")
    # CPU tensors keep the compiled CPU conv kernels (or the reference): not this lowering.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CPU") == _extension.AVAILABLE


def test_has_compiled_kernels_for_conv_on_cuda(monkeypatch):
    """conv2d_csr counts on CUDA only with the lowering *and* CUDA kernels of csr_spmm and csr_sddmm;
    conv2d_bsr when all three bsr_conv2d ops have CUDA kernels; an op that does not exist has none."""
    real = torch._C._dispatch_has_kernel_for_dispatch_key
    gemms = real("sparsekern::csr_spmm", "CUDA") and real("sparsekern::csr_sddmm", "CUDA")
    assert _extension.has_compiled_kernels("cuda", "conv2d_csr") == gemms  # False on a CPU-only build
    if not torch.cuda.is_available():
        assert not _extension.has_compiled_kernels("cuda", "conv2d_csr")

    def fake_registry(registered):
        def has_kernel(op, key):
            if op == "sparsekern::no_such_op":
                raise RuntimeError(f"operator {op} does not exist")
            return key == "CUDA" and op.removeprefix("sparsekern::") in registered
        monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", has_kernel)

    conv = {"csr_conv2d", "csr_conv2d_input_grad", "csr_conv2d_weight_grad"}
    fake_registry(conv | {"csr_spmm", "csr_sddmm"})
    assert _extension.has_compiled_kernels("cuda", "conv2d_csr")
    assert not _extension.has_compiled_kernels("cuda", "conv2d_bsr")
    for missing in ("csr_spmm", "csr_sddmm", "csr_conv2d_weight_grad"):
        fake_registry((conv | {"csr_spmm", "csr_sddmm"}) - {missing})
        assert not _extension.has_compiled_kernels("cuda", "conv2d_csr"), missing
    fake_registry({"bsr_conv2d", "bsr_conv2d_input_grad"})  # a backward op without a kernel: not served
    assert not _extension.has_compiled_kernels("cuda", "conv2d_bsr")
    fake_registry({"bsr_conv2d", "bsr_conv2d_input_grad", "bsr_conv2d_weight_grad"})
    assert _extension.has_compiled_kernels("cuda", "conv2d_bsr")
    assert not _extension.has_compiled_kernels("cuda", "conv2d_csr")
    monkeypatch.setitem(_extension._FAMILY_OPS, "conv2d_bsr", ("no_such_op",))
    assert not _extension.has_compiled_kernels("cuda", "conv2d_bsr")
    assert not _extension.has_compiled_kernels("mps", "conv2d_csr")


def test_has_compiled_kernels_conv2d_bsr_follows_the_dispatcher():
    try:
        registered = torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::bsr_conv2d", "CUDA")
    except RuntimeError:  # the block conv family is not in this build
        registered = False
    assert _extension.has_compiled_kernels("cuda", "conv2d_bsr") == registered


# ------------------------------------------------------------------------------------------------- GPU

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_gpu
@pytest.mark.parametrize("dtype", [F32, F64])
def test_sparse_conv2d_on_cuda_matches_the_reference(dtype, monkeypatch):
    """SparseConv2d(backend="sparse") on CUDA: forward and all gradients through the lowering (its GEMM calls
    counted), chunked and not, against the float64 reference with DESIGN.md's budget."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # a float32 baseline, not TF32
    mask = conv_mask((C_OUT, 5, 3, 3), 0.7)
    calls = _count_gemms(monkeypatch)
    for bound in (conv_im2col.CHUNK_BYTES, 1):
        monkeypatch.setattr(conv_im2col, "CHUNK_BYTES", bound)
        layer = SparseConv2d(5, C_OUT, 3, stride=2, padding=1, dtype=dtype, mask=mask, backend="sparse").cuda()
        x = torch.randn(X_SHAPE, dtype=F64).to(dtype)
        xc = x.cuda().requires_grad_()
        calls.clear()
        y = layer(xc)
        g = torch.randn(y.shape, dtype=F64).to(dtype)
        y.backward(g.cuda())
        assert calls.count("csr_sddmm") == (1 if bound > 1 else X_SHAPE[0])
        w = torch.zeros(mask.shape, dtype=dtype)
        w[mask] = layer.weight_values.detach().cpu()
        b = layer.bias.detach().cpu()
        lay = types.SimpleNamespace(mask=mask, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1,
                                    kernel_size=(3, 3))
        base = _run_conv(w.cuda(), b.cuda(), mask.cuda(), x.cuda(), lambda t: t, g.cuda(), lay)
        if dtype == F64:
            ref = _oracle_conv(w, b, x, g, lay)
        else:
            geometry = ([3, 3], [2, 2], [1, 1], [1, 1], 1)
            lt = CSRLayout.from_mask(mask.reshape(C_OUT, -1)).tensors()
            v = layer.weight_values.detach().cpu().double()
            ref = (reference.csr_conv2d(x.double(), v, *lt, b.double(), *geometry, y.shape[2:]),
                   reference.csr_conv2d_input_grad(g.double(), v, *lt, [13, 11], *geometry),
                   reference.csr_conv2d_weight_grad(g.double(), x.double(), *lt, *geometry))
        got = (y.detach(), xc.grad, layer.weight_values.grad)
        for name, o, bl, r, factor in zip(("output", "d_input", "d_weight"), got, base, ref, (2, 3, 3)):
            assert o.is_cuda
            assert_error_budget(o.cpu(), bl.cpu(), r, factor, name)
        assert max_err(layer.bias.grad.cpu(), g.double().sum((0, 2, 3))) <= 1e3 * _eps(dtype) * g.numel()


@needs_gpu
def test_opcheck_on_cuda():
    case = Case(3, 2, 1, 1, 0.5, F32)
    to = lambda t: t.cuda()  # noqa: E731
    x, v, g, b = to(case.x), to(case.values), to(case.grad), to(case.bias)
    lt = [to(t) for t in case.layout]
    torch.library.opcheck(_ops.csr_conv2d, (x, v, *lt, b, *case.geometry))
    torch.library.opcheck(_ops.csr_conv2d_input_grad, (g, v, *lt, case.input_size, *case.geometry))
    torch.library.opcheck(_ops.csr_conv2d_weight_grad, (g, x, *lt, *case.geometry))
