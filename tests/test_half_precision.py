"""float16 and bfloat16 in the op registry: the Python checks accept them, the reference computes them with
float32 accumulation, and on CPU the compiled kernels (which take float32/float64 only) refuse them with a
clear TypeError naming the argument.

The reference's rule is "products and sums in float32, one rounding at the end", so each element of its
result must be the float64 value rounded once to the 16-bit type, up to float32's own summation error:

    |out - exact| <= u·|exact| + k·2^-24·Σ|terms| + tiny

with u the unit roundoff of the 16-bit type (2^-11 for float16, 2^-8 for bfloat16), k the number of terms
and Σ|terms| the sum of the magnitudes of the products summed into that element (which bounds float32's
error whatever the cancellation). A 16-bit accumulation misses this by far (checked: with
float16 sums csr_spmm is off by 17x the bound, bfloat16 by 56x; the conv forward by 42x and 98x).
"""
from __future__ import annotations

import pytest
import torch

from helpers import block_mask, exact_mask
from sparsekern import BSRLayout, CSRLayout, _extension, _ops, reference

HALF = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
F32_EPS = 2.0**-24


def assert_rounded_once(out, exact, abs_terms, n_terms, what):
    """out (16-bit) against the float64 ``exact`` value, per element (see the module docstring)."""
    assert out.dtype in UNIT_ROUNDOFF and out.shape == exact.shape, what
    assert bool(torch.isfinite(out).all()), f"{what}: non-finite values"
    u = UNIT_ROUNDOFF[out.dtype]
    err = (out.double() - exact).abs()
    bound = u * exact.abs() + n_terms * F32_EPS * abs_terms + 2.0**-24
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: error reaches {worst:.2f}x the once-rounded bound"


def _csr(shape=(9, 70), sparsity=0.3):
    layout = CSRLayout.from_mask(exact_mask(shape, sparsity))
    return layout, layout.tensors()


def _bsr(grid=(3, 4), block=(4, 8), sparsity=0.4):
    layout = BSRLayout.from_mask(block_mask(grid, block, sparsity), block)
    return layout, layout.tensors()


# ----------------------------------------------------------------------------- the reference, 16-bit

@pytest.mark.parametrize("dtype", HALF)
def test_reference_csr_spmm_rounds_once(dtype):
    layout, lt = _csr()
    values, dense = torch.randn(layout.nnz).to(dtype), torch.randn(70, 33).to(dtype)
    out = reference.csr_spmm(values, *lt, dense)
    assert out.dtype == dtype
    exact = reference.csr_spmm(values.double(), *lt, dense.double())
    abs_terms = reference.csr_spmm(values.double().abs(), *lt, dense.double().abs())
    assert_rounded_once(out, exact, abs_terms, 70, f"csr_spmm {dtype}")


@pytest.mark.parametrize("dtype", HALF)
def test_reference_csr_sddmm_rounds_once(dtype):
    layout, lt = _csr()
    a, b = torch.randn(9, 300).to(dtype), torch.randn(70, 300).to(dtype)
    out = reference.csr_sddmm(a, b, *lt)
    exact = reference.csr_sddmm(a.double(), b.double(), *lt)
    abs_terms = reference.csr_sddmm(a.double().abs(), b.double().abs(), *lt)
    assert_rounded_once(out, exact, abs_terms, 300, f"csr_sddmm {dtype}")


@pytest.mark.parametrize("dtype", HALF)
def test_reference_bsr_spmm_rounds_once(dtype):
    layout, lt = _bsr()
    values = torch.randn(layout.block.nnz, 4, 8).to(dtype)
    dense = torch.randn(32, 17).to(dtype)
    out = reference.bsr_spmm(values, *lt, dense)
    exact = reference.bsr_spmm(values.double(), *lt, dense.double())
    abs_terms = reference.bsr_spmm(values.double().abs(), *lt, dense.double().abs())
    assert_rounded_once(out, exact, abs_terms, 32, f"bsr_spmm {dtype}")


@pytest.mark.parametrize("dtype", HALF)
def test_reference_bsr_sddmm_rounds_once(dtype):
    layout, lt = _bsr()
    a, b = torch.randn(12, 257).to(dtype), torch.randn(32, 257).to(dtype)
    out = reference.bsr_sddmm(a, b, *lt)
    exact = reference.bsr_sddmm(a.double(), b.double(), *lt)
    abs_terms = reference.bsr_sddmm(a.double().abs(), b.double().abs(), *lt)
    assert_rounded_once(out, exact, abs_terms, 257, f"bsr_sddmm {dtype}")


@pytest.mark.parametrize("dtype", HALF)
def test_reference_conv_rounds_once(dtype):
    """The conv references share _scatter_products / _entry_dots: forward, input and weight gradient."""
    c_out, c_in, k = 6, 4, 3
    layout = CSRLayout.from_mask(exact_mask((c_out, c_in * k * k), 0.4))
    lt = layout.tensors()
    geometry = dict(kernel_size=(k, k), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x, values = torch.randn(2, c_in, 7, 7).to(dtype), torch.randn(layout.nnz).to(dtype)
    g = torch.randn(2, c_out, 7, 7).to(dtype)

    def run(x, values, g):
        return (reference.csr_conv2d(x, values, *lt, None, output_size=(7, 7), **geometry),
                reference.csr_conv2d_input_grad(g, values, *lt, input_size=(7, 7), **geometry),
                reference.csr_conv2d_weight_grad(g, x, *lt, **geometry))

    outs = run(x, values, g)
    exacts = run(x.double(), values.double(), g.double())
    abs_terms = run(x.double().abs(), values.double().abs(), g.double().abs())
    for name, out, exact, terms, n in zip(("forward", "input_grad", "weight_grad"), outs, exacts, abs_terms,
                                          (c_in * k * k, c_out * k * k, 2 * 49)):
        assert out.dtype == dtype
        assert_rounded_once(out, exact, terms, n, f"conv {name} {dtype}")


def test_float32_and_float64_references_are_unchanged():
    """The 16-bit rule leaves float32 (float64 sums in _scatter_products) and float64 as they were."""
    layout, lt = _csr()
    values, dense = torch.randn(layout.nnz), torch.randn(70, 5)
    rows = torch.repeat_interleave(torch.arange(9), torch.diff(lt[0].long()))
    products = (values[:, None] * dense[lt[1].long()]).double()  # float32 products, float64 sums
    expected = torch.zeros(9, 5, dtype=torch.float64).index_add_(0, rows, products).float()
    assert torch.equal(reference.csr_spmm(values, *lt, dense), expected)
    assert reference.csr_spmm(values.double(), *lt, dense.double()).dtype == torch.float64


# ------------------------------------------------------------------------------------- the op checks

@pytest.mark.parametrize("dtype", HALF)
def test_python_checks_accept_16_bit_floats(dtype):
    layout, lt = _bsr()
    values = torch.randn(layout.block.nnz, 4, 8).to(dtype)
    dense = torch.randn(32, 5).to(dtype)
    bias = torch.randn(12).to(dtype)
    _ops._check_values_dtype("values", values)
    assert _ops._check_spmm_bt(values, lt, dense, bias, block=True) == 12
    # The registered reference (what CUDA tensors without a kernel, and SPARSEKERN_NO_EXT=1, run).
    out = _ops._spmm_bt_reference(True)(values, *lt, dense, bias)
    assert out.dtype == dtype and out.shape == (5, 12)
    assert _ops._bsr_sddmm_reference(torch.randn(12, 5).to(dtype), dense, *lt).dtype == dtype


def test_other_dtypes_are_still_refused_by_the_python_checks():
    for dtype in (torch.int32, torch.complex64, torch.float8_e4m3fn if hasattr(torch, "float8_e4m3fn") else
                  torch.uint8):
        with pytest.raises(TypeError, match=f"values: expected float32, float64, float16 or bfloat16, got {dtype}"):
            _ops._check_values_dtype("values", torch.empty(1, dtype=dtype))


# ---------------------------------------------------------------------------- CPU ops with 16-bit input

def _cpu_op_calls(dtype):
    """name -> (call, the argument the C++ check names)."""
    csr, clt = _csr((6, 9), 0.4)
    bsr, blt = _bsr((3, 2), (2, 3), 0.4)
    h = lambda *shape: torch.randn(*shape).to(dtype)  # noqa: E731
    conv = CSRLayout.from_mask(exact_mask((4, 2 * 9), 0.4))
    geometry = ([3, 3], [1, 1], [1, 1], [1, 1], 1)
    ops = torch.ops.sparsekern
    return {
        "csr_spmm": (lambda: ops.csr_spmm(h(csr.nnz), *clt, h(9, 3)), "values"),
        "csr_sddmm": (lambda: ops.csr_sddmm(h(6, 3), h(9, 3), *clt), "a"),
        "bsr_spmm": (lambda: ops.bsr_spmm(h(bsr.block.nnz, 2, 3), *blt, h(6, 3)), "values"),
        "bsr_spmm_bt": (lambda: ops.bsr_spmm_bt(h(bsr.block.nnz, 2, 3), *blt, h(6, 3), h(6)), "values"),
        "bsr_sddmm": (lambda: ops.bsr_sddmm(h(6, 3), h(6, 3), *blt), "a"),
        "csr_linear": (lambda: ops.csr_linear(h(3, 9), h(csr.nnz), *clt, None), "x"),
        "bsr_linear": (lambda: ops.bsr_linear(h(3, 6), h(bsr.block.nnz, 2, 3), *blt, h(6)), "x"),
        "transpose": (lambda: ops.transpose(h(4, 5)), "x"),
        "permute": (lambda: ops.permute(h(5), torch.arange(5), torch.arange(5)), "values"),
        "csr_conv2d": (lambda: ops.csr_conv2d(h(1, 2, 5, 5), h(conv.nnz), *conv.tensors(), None, *geometry),
                       "values"),
    }


@pytest.mark.skipif(not _extension.AVAILABLE, reason="without the compiled extension CPU ops run the reference")
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("op", list(_cpu_op_calls(torch.float16)))
def test_cpu_kernels_refuse_16_bit_floats_clearly(op, dtype):
    call, argument = _cpu_op_calls(dtype)[op]
    cpp_name = {torch.float16: "Half", torch.bfloat16: "BFloat16"}[dtype]
    with pytest.raises(TypeError, match=rf"^{argument}: expected float32 or float64, got {cpp_name}"):
        call()


@pytest.mark.skipif(_extension.AVAILABLE, reason="with the compiled extension CPU ops refuse 16-bit floats")
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("op", list(_cpu_op_calls(torch.float16)))
def test_cpu_reference_ops_compute_16_bit_floats(op, dtype):
    result = _cpu_op_calls(dtype)[op][0]()
    results = result if isinstance(result, tuple) else (result,)
    assert all(r.dtype == dtype and bool(torch.isfinite(r).all()) for r in results)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", ["csr", "bsr"])
def test_sparse_linear_holds_16_bit_weights(dtype, layout):
    """A SparseLinear may be 16-bit (the GPU kernels' dtypes). On CPU, without the extension, both backends
    run the reference ops and match the masked nn.Linear; with it, the compiled CPU kernels (float32/float64
    only: the sparse ones and the dense fallback's weight refill alike) raise a TypeError naming the argument."""
    import torch.nn as nn
    from sparsekern import SparseLinear
    block = None if layout == "csr" else (4, 4)
    mask = exact_mask((8, 12), 0.5) if block is None else block_mask((2, 3), block, 0.5)
    lin = nn.Linear(12, 8).to(dtype)
    x = torch.randn(5, 12).to(dtype)
    expected = nn.functional.linear(x.float(), (lin.weight * mask).float(), lin.bias.float())
    for backend in ("dense", "sparse"):
        layer = SparseLinear.from_dense(lin, mask, block_size=block, backend=backend)
        assert layer.weight_values.dtype == dtype
        if _extension.AVAILABLE:
            with pytest.raises(TypeError, match=r"(values|x): expected float32 or float64, got (BFloat16|Half)"):
                layer(x)
        else:
            torch.testing.assert_close(layer(x).float(), expected, rtol=2 * UNIT_ROUNDOFF[dtype], atol=1e-2)
