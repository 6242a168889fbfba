"""csr_linear / bsr_linear: a whole sparse layer on batch-major x, the op SparseLinear runs.

Its forward composes transpose and *_spmm_bt (tested bit for bit in test_ops.py); what is new here is its
autograd: dx comes batch-major from the transposed-layout kernel, dW from the SDDMM, db from a batch sum,
and the returned xᵀ, when used downstream, adds its own gradient."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from helpers import block_mask, mask_with_pruned_lines
from sparsekern import BSRLayout, CSRLayout, _ops

F64 = torch.float64


def _case(kind, batch=4, dtype=F64, bias=True, requires_grad=True, n_rows=6, n_cols=9):
    if kind == "csr":
        mask = mask_with_pruned_lines((n_rows, n_cols), 0.4)
        layout = CSRLayout.from_mask(mask)
        values = torch.randn(layout.nnz, dtype=dtype)
        op, spmm_bt = _ops.csr_linear, _ops.csr_spmm_bt
    else:
        mask = block_mask((n_rows // 2, n_cols // 3), (2, 3), 0.4, prune_lines=True)
        layout = BSRLayout.from_mask(mask, (2, 3))
        values = torch.randn(layout.block.nnz, 2, 3, dtype=dtype)
        op, spmm_bt = _ops.bsr_linear, _ops.bsr_spmm_bt
    x = torch.randn(batch, n_cols, dtype=dtype)
    b = torch.randn(n_rows, dtype=dtype) if bias else None
    for t in (x, values, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    return op, spmm_bt, x, values, layout.tensors(), b


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_forward_is_transpose_then_spmm_bt(kind, bias):
    op, spmm_bt, x, values, lt, b = _case(kind, batch=37, dtype=torch.float32, bias=bias, requires_grad=False)
    y, xt = op(x, values, *lt, b)
    assert torch.equal(xt, x.t())
    assert torch.equal(y, spmm_bt(values, *lt, x.t().contiguous(), b))


@pytest.mark.parametrize("use_xt", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_gradcheck_and_gradgradcheck(kind, bias, use_xt):
    op, _, x, values, lt, b = _case(kind, bias=bias)
    inputs = (x, values) + ((b,) if bias else ())

    def f(x, values, *maybe_bias):
        y, xt = op(x, values, *lt, maybe_bias[0] if maybe_bias else None)
        return (y, xt) if use_xt else y

    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_opcheck(kind, requires_grad):
    for dtype in (torch.float32, F64):
        op, _, x, values, lt, b = _case(kind, dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(op, (x, values, *lt, b))
        torch.library.opcheck(op, (x, values, *lt, None))


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_empty_batch(kind):
    op, _, x, values, lt, b = _case(kind, batch=0)
    y, xt = op(x, values, *lt, b)
    assert y.shape == (0, 6) and xt.shape == (9, 0)
    y.sum().backward()
    assert torch.equal(values.grad, torch.zeros_like(values)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_bad_input(kind):
    op, _, x, values, lt, b = _case(kind, requires_grad=False)
    with pytest.raises(ValueError, match=r"x: expected a 2-D \(batch, features\) tensor"):
        op(x[0], values, *lt, b)
    with pytest.raises(ValueError, match=r"x: expected 9 features \(columns\), got shape [([]4, 5[])\]]"):
        op(x[:, :5], values, *lt, b)
    with pytest.raises(TypeError, match="x: expected float32(, float64, float16 or bfloat16| or float64), got"):
        op(x.int(), values, *lt, b)
    with pytest.raises(ValueError, match=r"bias: expected shape \(6,\)"):
        op(x, values, *lt, b[:3])


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_cpu_autograd_is_the_compiled_one(kind):
    """With the extension, CPU layers differentiate through the C++ autograd (csrc/cpu/linear_autograd.cpp),
    not the Python formula (which serves other devices and SPARSEKERN_NO_EXT; both pass the tests here)."""
    from sparsekern import _extension

    op, _, x, values, lt, b = _case(kind)
    y, _ = op(x, values, *lt, b)
    compiled = "CppNode" in y.grad_fn.name()
    assert compiled == _extension.has_compiled_kernels("cpu"), y.grad_fn.name()


@pytest.mark.parametrize("kind", ["csr", "bsr"])
@pytest.mark.parametrize("needs", ["x", "values", "bias", "x+values"])
def test_linear_partial_gradients(kind, needs):
    """Only the inputs that require grad get one, and each equals the all-inputs gradient (the fused CSR
    backward runs only when both x and values need theirs)."""
    op, _, x, values, lt, b = _case(kind, requires_grad=False)
    grad = torch.randn(x.shape[0], b.shape[0], dtype=F64)
    full = [t.detach().clone().requires_grad_() for t in (x, values, b)]
    op(full[0], full[1], *lt, full[2])[0].backward(grad)
    part = [t.detach().clone().requires_grad_(name in needs) for t, name in zip((x, values, b), ("x", "values", "bias"))]
    op(part[0], part[1], *lt, part[2])[0].backward(grad)
    for f, p, name in zip(full, part, ("x", "values", "bias")):
        if name in needs:
            torch.testing.assert_close(p.grad, f.grad, rtol=1e-12, atol=1e-12)
        else:
            assert p.grad is None
