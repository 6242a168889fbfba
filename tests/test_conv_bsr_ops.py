"""The block-sparse conv ops (sparsekern::bsr_conv2d, _input_grad, _weight_grad; _ops_conv_bsr.py) on CPU,
where they run the reference, and SparseConv2d with ``block_size``.

The oracle is independent of the op: the dense weight rebuilt from the blocks (tests/helpers.py, plain
reshapes), then F.conv2d and its autograd in float64. The Triton kernels of the same ops are tested in
test_triton_bsr_conv2d.py.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_error_budget, blocks_to_dense, dense_to_blocks, from_tap_major, tap_block_mask, tap_major
from sparsekern import SparseConv2d, _extension, _ops, sparsify
from sparsekern.layout import BSRLayout
from sparsekern.nn.kept_weights import LAYOUT_BUFFERS

F32, F64 = torch.float32, torch.float64


def make_case(n=3, c_in=6, c_out=8, kernel_size=(3, 3), block=(4, 2), sparsity=0.5, groups=1, hw=(9, 7),
              dtype=F64, prune_lines=False):
    """(x, blocks, layout, bias, dense weight in float64) of a random block-sparse conv."""
    mask = tap_block_mask(c_out, c_in // groups, kernel_size, block, sparsity, prune_lines)
    layout = BSRLayout.from_mask(tap_major(mask), block)
    w = torch.randn(mask.shape, dtype=F64) * mask
    blocks = dense_to_blocks(tap_major(w), layout).to(dtype)
    x = torch.randn(n, c_in, *hw, dtype=dtype)
    bias = torch.randn(c_out, dtype=dtype)
    return x, blocks, layout, bias, w


def geometry(kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return [list(kernel_size), list(stride), list(padding), list(dilation), groups]


def dense_weight(blocks, layout, c_in, groups, kernel_size):
    return from_tap_major(blocks_to_dense(blocks.double(), layout), c_in // groups, kernel_size)


def oracle(x, blocks, layout, bias, geo, grad):
    """(y, dx, dW at the kept blocks, d_bias) by F.conv2d in float64."""
    kernel_size, stride, padding, dilation, groups = geo
    w = dense_weight(blocks, layout, x.shape[1], groups, kernel_size).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y = F.conv2d(x64, w, None if bias is None else bias.double(), stride, padding, dilation, groups)
    dx, dw = torch.autograd.grad(y, (x64, w), grad.double())
    return y.detach(), dx, dense_to_blocks(tap_major(dw), layout)


def plain(x, blocks, layout, bias, geo, grad):
    """The same three results by dense PyTorch in the op's dtype: the error baseline of the tolerance rule."""
    kernel_size, stride, padding, dilation, groups = geo
    w = dense_weight(blocks, layout, x.shape[1], groups, kernel_size).to(x.dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = F.conv2d(xr, w, bias, stride, padding, dilation, groups)
    dx, dw = torch.autograd.grad(y, (xr, w), grad)
    return y.detach(), dx, dense_to_blocks(tap_major(dw), layout)


def run_ops(x, blocks, layout, bias, geo, grad):
    t = layout.tensors()
    y = _ops.bsr_conv2d(x, blocks, *t, bias, *geo)
    dx = _ops.bsr_conv2d_input_grad(grad, blocks, *t, list(x.shape[2:]), *geo)
    dw = _ops.bsr_conv2d_weight_grad(grad, x, *t, *geo)
    return y, dx, dw


def check_against_oracle(x, blocks, layout, bias, geo):
    y = _ops.bsr_conv2d(x, blocks, *layout.tensors(), bias, *geo)
    grad = torch.randn(y.shape, dtype=x.dtype)
    got = run_ops(x, blocks, layout, bias, geo, grad)
    ref = oracle(x, blocks, layout, bias, geo, grad)
    if x.dtype == F64:
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
        return
    base = plain(x, blocks, layout, bias, geo, grad)
    for what, g, b, r, factor in zip(("y", "dx", "dW"), got, base, ref, (2, 3, 3)):
        assert_error_budget(g, b, r, factor, what)


GEOMETRIES = {
    "3x3": dict(),
    "3x3 pad 1": dict(padding=(1, 1)),
    "3x3 stride 2 pad 1": dict(stride=(2, 2), padding=(1, 1)),
    "3x3 dilation 2": dict(dilation=(2, 2), padding=(2, 1)),
    "1x3 stride (1,2)": dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1)),
    "1x1": dict(kernel_size=(1, 1)),
    "1x1 stride 2": dict(kernel_size=(1, 1), stride=(2, 2)),
    "5x5 pad 2": dict(kernel_size=(5, 5), padding=(2, 2)),
}


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometries_match_dense_conv(name, dtype):
    g = dict(GEOMETRIES[name])
    kernel_size = g.pop("kernel_size", (3, 3))
    x, blocks, layout, bias, _ = make_case(kernel_size=kernel_size, dtype=dtype)
    check_against_oracle(x, blocks, layout, bias, geometry(kernel_size, **g))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0, "pruned_lines"], ids=str)
@pytest.mark.parametrize("c_in,c_out,block,groups", [(6, 8, (4, 2), 1), (8, 12, (2, 4), 1), (4, 6, (3, 1), 2),
                                                      (6, 6, (1, 1), 6)], ids=str)
def test_blocks_groups_and_sparsity_match_dense_conv(c_in, c_out, block, groups, sparsity):
    prune = sparsity == "pruned_lines"
    x, blocks, layout, bias, _ = make_case(c_in=c_in, c_out=c_out, block=block, groups=groups,
                                           sparsity=0.3 if prune else sparsity, prune_lines=prune)
    check_against_oracle(x, blocks, layout, bias, geometry((3, 3), padding=(1, 1), groups=groups))


def test_fully_pruned_layer_gives_bias_and_zero_gradients():
    x, blocks, layout, bias, _ = make_case(sparsity=1.0)
    assert blocks.shape == (0, 4, 2)
    geo = geometry((3, 3), padding=(1, 1))
    grad = torch.randn(3, 8, 9, 7, dtype=F64)
    y, dx, dw = run_ops(x, blocks, layout, bias, geo, grad)
    assert torch.equal(y, bias.view(1, -1, 1, 1).expand_as(y))
    assert torch.equal(dx, torch.zeros_like(x)) and dw.shape == (0, 4, 2)


def test_empty_batch():
    x, blocks, layout, bias, _ = make_case(n=0)
    geo = geometry((3, 3), stride=(2, 2))
    grad = torch.randn(0, 8, 4, 3, dtype=F64)
    y, dx, dw = run_ops(x, blocks, layout, bias, geo, grad)
    assert y.shape == (0, 8, 4, 3) and dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(blocks))


@pytest.mark.parametrize("view", ["channels_last", "sliced"])
def test_input_layouts(view):
    x, blocks, layout, bias, _ = make_case(dtype=F32)
    if view == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(3, 12, 9, 14)[:, ::2, :, ::2]
    geo = geometry((3, 3), padding=(1, 1))
    check_against_oracle(x, blocks, layout, bias, geo)
    # The outputs follow the activations' layout: channels_last stays channels_last, anything else is NCHW.
    fmt = torch.channels_last if view == "channels_last" else torch.contiguous_format
    y = _ops.bsr_conv2d(x, blocks, *layout.tensors(), bias, *geo)
    dx = _ops.bsr_conv2d_input_grad(y.detach(), blocks, *layout.tensors(), list(x.shape[2:]), *geo)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)


def test_gradcheck_and_gradgradcheck():
    x, blocks, layout, bias, _ = make_case(n=1, c_in=4, c_out=4, block=(2, 2), hw=(5, 4), sparsity=0.4)
    geo = geometry((3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    t = layout.tensors()
    inputs = (x.requires_grad_(), blocks.requires_grad_(), bias.requires_grad_())

    def f(x, blocks, bias):
        return _ops.bsr_conv2d(x, blocks, *t, bias, *geo)

    assert torch.autograd.gradcheck(f, inputs)
    # fast_mode: random projections of the Jacobians instead of all of them (the full check takes minutes).
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("dtype,requires_grad", [(F32, False), (F64, True)], ids=str)
def test_opcheck(dtype, requires_grad):
    x, blocks, layout, bias, _ = make_case(n=2, c_in=4, c_out=6, kernel_size=(2, 3), block=(3, 1), groups=2,
                                           hw=(5, 7), dtype=dtype)
    geo = geometry((2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2)
    t = layout.tensors()
    x, blocks, bias = (v.requires_grad_(requires_grad) for v in (x, blocks, bias))
    y = _ops.bsr_conv2d(x, blocks, *t, bias, *geo)
    grad = torch.randn(y.shape, dtype=dtype, requires_grad=requires_grad)
    torch.library.opcheck(_ops.bsr_conv2d, (x, blocks, *t, bias, *geo))
    torch.library.opcheck(_ops.bsr_conv2d, (x, blocks, *t, None, *geo))
    torch.library.opcheck(_ops.bsr_conv2d_input_grad, (grad, blocks, *t, [5, 7], *geo))
    torch.library.opcheck(_ops.bsr_conv2d_weight_grad, (grad, x, *t, *geo))
    # channels_last in, channels_last out: the fakes must give the same strides.
    x_cl, grad_cl = (v.detach().contiguous(memory_format=torch.channels_last).requires_grad_(requires_grad)
                     for v in (x, grad))
    torch.library.opcheck(_ops.bsr_conv2d, (x_cl, blocks, *t, bias, *geo))
    torch.library.opcheck(_ops.bsr_conv2d_input_grad, (grad_cl, blocks, *t, [5, 7], *geo))


def test_half_precision_reference_accumulates_in_float32():
    for dtype in (torch.bfloat16, torch.float16):
        x, blocks, layout, bias, _ = make_case(c_in=16, c_out=16, block=(8, 8), dtype=dtype)
        geo = geometry((3, 3), padding=(1, 1))
        y = _ops.bsr_conv2d(x, blocks, *layout.tensors(), bias, *geo)
        grad = torch.randn(y.shape, dtype=dtype)
        got = run_ops(x, blocks, layout, bias, geo, grad)
        ref = oracle(x, blocks, layout, bias, geo, grad)
        # The baseline: the exact result on the same 16-bit inputs, rounded once to the dtype (stricter than
        # what tensor cores with float32 accumulation give).
        base = [r.to(dtype) for r in oracle(x.float(), blocks.float(), layout, bias.float(), geo, grad.float())]
        for what, g, b, r, factor in zip(("y", "dx", "dW"), got, base, ref, (2, 3, 3)):
            assert g.dtype == dtype
            assert_error_budget(g, b, r, factor, what)


# ------------------------------------------------------------------------------------------ bad input

def _bad(**changes):
    x, blocks, layout, bias, _ = make_case()
    args = dict(x=x, blocks=blocks, t=list(layout.tensors()), bias=bias, geo=geometry((3, 3)))
    args.update(changes)
    return args


def test_bad_arguments_raise_clear_errors():
    good = _bad()
    t = good["t"]
    cases = [
        (dict(blocks=good["blocks"].view(-1, 8)), ValueError, r"values: expected \(nnzb=\d+, bh, bw\) blocks"),
        (dict(x=good["x"][:, :4]), ValueError, r"x: expected 6 channels \(dim 1\)"),
        (dict(x=good["x"].float()), TypeError, r"x: expected dtype torch.float64"),
        (dict(bias=good["bias"][:5]), ValueError, r"bias: expected shape \(8,\)"),
        (dict(geo=geometry((2, 2))), ValueError, r"layout: its 54 columns \(27 blocks of 2\) are not a multiple of kH·kW = 4"),
        (dict(geo=geometry((3, 3), stride=(0, 1))), ValueError, r"stride: expected two integers >= 1"),
        (dict(geo=geometry((3, 3), groups=2)), ValueError, r"x: expected 12 channels"),
        (dict(geo=geometry((3, 3), groups=4)), ValueError, r"values: block height 4 does not divide the 2 output "
                                                           r"channels of a group \(C_out=8, groups=4\)"),
        (dict(x=good["x"][:, :, :2]), ValueError, r"x: input size \[2, 7\] is too small"),
    ]
    for changes, error, message in cases:
        a = {**good, **changes}
        with pytest.raises(error, match=message):
            _ops.bsr_conv2d(a["x"], a["blocks"], *a["t"], a["bias"], *a["geo"])
    grad = torch.randn(3, 8, 7, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"grad: expected spatial size \[7, 5\]"):
        _ops.bsr_conv2d_input_grad(grad[:, :, :6], good["blocks"], *t, [9, 7], *good["geo"])
    with pytest.raises(ValueError, match=r"grad: 7 channels do not split into the layout's 2 block rows"):
        _ops.bsr_conv2d_weight_grad(grad[:, :7], good["x"], *t, *good["geo"])
    with pytest.raises(ValueError, match=r"grad: expected shape \(3, 8, 7, 5\)"):
        _ops.bsr_conv2d_weight_grad(grad[:2], good["x"], *t, *good["geo"])
    corrupt = list(t)
    corrupt[1] = t[1].clone().fill_(99)
    with pytest.raises(ValueError, match=r"col_indices must lie in"):
        _ops.bsr_conv2d(good["x"], good["blocks"], *corrupt, good["bias"], *good["geo"])


# ------------------------------------------------------------------------------- SparseConv2d(block_size)

def _block_layer(**kwargs):
    args = dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, block_size=(4, 2), backend="sparse",
                dtype=F64)
    args.update(kwargs)
    mask = tap_block_mask(args["out_channels"], args["in_channels"] // args.get("groups", 1),
                          (args["kernel_size"],) * 2, args["block_size"], 0.5)
    return SparseConv2d(mask=mask, **args)


def _with_block_ops(layer, monkeypatch):
    """Make the layer take the bsr_conv2d ops on CPU, as it does on CUDA."""
    monkeypatch.setattr(layer, "_runs_block_kernels", lambda device_type: True)


@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2), dict(groups=2, out_channels=8, block_size=(2, 3)),
                                    dict(padding="same", dilation=2)], ids=str)
def test_block_layer_matches_its_csr_path_and_masked_conv(kwargs, monkeypatch):
    layer = _block_layer(**kwargs)
    assert layer.layout_kind == "conv2d_bsr" and not layer._runs_block_kernels("cpu")
    assert layer._runs_block_kernels("cuda") == _extension.has_compiled_kernels("cuda", "conv2d_bsr")
    x = torch.randn(2, 6, 9, 8, dtype=F64, requires_grad=True)
    y_csr = layer(x)
    g = torch.randn_like(y_csr)
    grads_csr = torch.autograd.grad(y_csr, (x, layer.weight_values, layer.bias), g)
    _with_block_ops(layer, monkeypatch)
    y_bsr = layer(x)
    grads_bsr = torch.autograd.grad(y_bsr, (x, layer.weight_values, layer.bias), g)
    torch.testing.assert_close(y_bsr, y_csr, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_bsr, grads_csr):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_bsr, layer.to_dense()(x), rtol=1e-12, atol=1e-12)


def test_block_layer_gradcheck_through_the_block_ops(monkeypatch):
    layer = _block_layer(in_channels=4, out_channels=4, block_size=(2, 2), stride=2)
    _with_block_ops(layer, monkeypatch)
    x = torch.randn(2, 4, 5, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: torch.func.functional_call(
        layer, {"weight_values": v, "bias": b}, (x,)), (x, layer.weight_values, layer.bias), fast_mode=True)


def test_block_layer_training_keeps_pruned_weights_zero(monkeypatch):
    layer = _block_layer(dtype=F32)
    _with_block_ops(layer, monkeypatch)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(2, 6, 7, 7)).square().mean().backward()
        opt.step()
    w = layer.dense_weight().detach()
    assert torch.equal(w[~layer.mask], torch.zeros_like(w[~layer.mask]))
    assert layer.weight_values.shape == (int(layer.mask.sum()),)


def test_block_layer_state_dict_round_trip_and_from_dense(monkeypatch):
    layer = _block_layer()
    fresh = _block_layer()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.mask, layer.mask) and torch.equal(fresh.weight_values, layer.weight_values)
    for name in LAYOUT_BUFFERS:
        assert torch.equal(getattr(fresh, "_blocks_" + name), getattr(layer, "_blocks_" + name))
    dense = layer.to_dense()
    again = SparseConv2d.from_dense(dense, layer.mask, block_size=(4, 2), backend="sparse")
    assert again.block_size == (4, 2) and torch.equal(again.weight_values, layer.weight_values)
    _with_block_ops(again, monkeypatch)
    x = torch.randn(1, 6, 6, 6, dtype=F64)
    torch.testing.assert_close(again(x), dense(x), rtol=1e-12, atol=1e-12)
    assert "block_size=(4, 2)" in repr(layer)


def test_block_layer_set_mask_rebuilds_the_block_layout(monkeypatch):
    layer = _block_layer()
    other = tap_block_mask(8, 6, (3, 3), (4, 2), 0.8)
    layer.set_mask(other)
    _with_block_ops(layer, monkeypatch)
    x = torch.randn(2, 6, 5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), layer.to_dense()(x), rtol=1e-12, atol=1e-12)


def test_block_layer_bad_masks_and_block_sizes():
    with pytest.raises(ValueError, match=r"block_size: \(4, 4\) must divide the \(out, in\) channels of a group, "
                                         r"\(8, 6\)"):
        SparseConv2d(6, 8, 3, block_size=4)
    mask = tap_block_mask(8, 6, (3, 3), (4, 2), 0.5)
    mask[5, 3, 2, 1] = ~mask[5, 3, 2, 1]
    with pytest.raises(ValueError, match=r"mask: with block_size=\(4, 2\) it must be made of whole blocks of 4 "
                                         r"output x 2 input channels at each kernel tap, but mask\[4:8, 2:4, 2, 1\] "
                                         r"is partly kept"):
        SparseConv2d(6, 8, 3, mask=mask, block_size=(4, 2))
    layer = _block_layer()
    before = {name: t.clone() for name, t in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"mask\[4:8, 2:4, 2, 1\] is partly kept"):
        layer.set_mask(mask)
    with pytest.raises(ValueError, match=r"masks\['conv.weight'\]: mask: with block_size"):
        sparsify(nn.ModuleDict({"conv": layer}), {"conv.weight": mask})
    for name, t in layer.state_dict().items():  # a refused mask changes nothing
        assert torch.equal(t, before[name]), name
    x = torch.randn(1, 6, 5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), layer.to_dense()(x))


def test_sparsify_passes_block_size_to_convs():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    masks = {"0.weight": tap_block_mask(8, 4, (3, 3), (4, 4), 0.5), "2.weight": tap_block_mask(8, 8, (1, 1), (4, 4), 0.5)}
    x = torch.randn(2, 4, 6, 6)
    expected = nn.Sequential(*[m for m in model])  # the same modules, masked by hand
    with torch.no_grad():
        for name, mask in masks.items():
            expected.get_parameter(name).mul_(mask)
        want = expected(x)
    sparsify(model, masks, block_size=4, backend="sparse")
    assert [type(m) for m in model] == [SparseConv2d, nn.ReLU, SparseConv2d]
    assert model[0].block_size == (4, 4) and model[2].block_size == (4, 4)
    torch.testing.assert_close(model(x), want)


def test_block_layer_on_cuda_resolves_auto_to_dense_until_measured():
    layer = _block_layer(backend="auto")
    assert layer.resolved_backend("cuda") == "dense"  # backend.CUDA_MIN_SPARSITY has no conv2d_bsr entry


def test_grouped_layer_on_cuda_without_block_kernels_resolves_auto_to_dense(monkeypatch):
    from sparsekern.nn import backend
    monkeypatch.setitem(backend.CUDA_MIN_SPARSITY, "conv2d_csr", 0.0)
    monkeypatch.setattr(_extension, "has_compiled_kernels", lambda device_type, kind="csr": True)
    grouped = SparseConv2d(4, 4, 3, groups=2, mask=torch.rand(4, 2, 3, 3) > 0.5, backend="auto")
    plain = SparseConv2d(4, 4, 3, mask=torch.rand(4, 4, 3, 3) > 0.5, backend="auto")
    assert grouped.resolved_backend("cuda") == "dense"  # the CUDA lowering serves groups == 1 only
    assert plain.resolved_backend("cuda") == "sparse"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2), dict(kernel_size=1, padding=0)], ids=str)
def test_block_layer_on_cuda_runs_the_block_kernels(kwargs, dtype):
    """On a GPU: the layer takes the Triton block ops, and they match the masked conv in float64."""
    args = dict(in_channels=32, out_channels=48, kernel_size=3, padding=1, block_size=(16, 16), backend="sparse",
                dtype=F32)
    args.update(kwargs)
    mask = tap_block_mask(48, 32, (args["kernel_size"],) * 2, (16, 16), 0.5)
    layer = SparseConv2d(mask=mask, **args).cuda()
    assert layer._runs_block_kernels("cuda")
    dense = layer.to_dense().double()
    layer = layer.to(dtype)
    x = torch.randn(3, 32, 9, 7, device="cuda")
    xs, x64 = x.to(dtype).requires_grad_(), x.double().requires_grad_()
    y, y64 = layer(xs), dense(x64)
    g = torch.randn_like(y64)
    y.backward(g.to(dtype))
    y64.backward(g)
    plain = layer.to_dense()  # the same weights in the layer's dtype: the error baseline
    xp = x.to(dtype).requires_grad_()
    yp = plain(xp)
    yp.backward(g.to(dtype))
    assert_error_budget(y.detach(), yp.detach(), y64.detach(), 2.0, "y")
    assert_error_budget(xs.grad, xp.grad, x64.grad, 3.0, "dx")
    kept = dense.weight.grad[layer.mask]
    assert_error_budget(layer.weight_values.grad, plain.weight.grad[layer.mask], kept, 3.0, "dW")
