"""The CUDA-key implementations of the bsr ops (sparsekern/triton/dispatch.py): argument checks, the
once-per-layout validation, the Triton path and the reference fallback.

Without a GPU the functions are called directly on CPU tensors, the Triton kernels running under the
interpreter (conftest.py sets TRITON_INTERPRET=1 before triton is imported); the dispatcher itself only
routes CUDA tensors to them, which the GPU-only tests at the end check (TRITON_INTERPRET=0 on a CUDA machine
runs every test here on the GPU). Results are judged by DESIGN.md's rule (helpers.assert_error_budget)
against the float64 reference, with the reference in the input dtype as the plain-PyTorch baseline.
"""
import gc
import os

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from helpers import assert_error_budget, block_mask, blocks_to_dense  # noqa: E402
from sparsekern import _ops, check_once, reference  # noqa: E402
from sparsekern.layout import BSRLayout  # noqa: E402
from sparsekern.triton import AVAILABLE  # noqa: E402

if not AVAILABLE:
    pytest.skip("sparsekern.triton could not load its kernels", allow_module_level=True)

from sparsekern.triton import dispatch  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is not 1 and there is no CUDA device to run the kernels on",
                allow_module_level=True)
needs_gpu = pytest.mark.skipif(INTERPRET, reason="the CUDA dispatch key needs CUDA tensors (a GPU)")

# See test_triton_bsr.py: the interpreter's bf16 tl.dot multiplies raw bit patterns.
_BF16 = pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.skipif(
    INTERPRET, reason="Triton's interpreter computes bfloat16 tl.dot on the raw uint16 bit patterns"))
TRITON_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"), _BF16]

# (block grid, block size, sparsity): small, rectangular, a 128-wide block, and an 8x8 one (fallback).
CASES = {
    "3x4-16x32": ((3, 4), (16, 32), 0.5),
    "2x2-128x16": ((2, 2), (128, 16), 0.25),
    "4x3-8x8": ((4, 3), (8, 8), 0.5),
}
TRITON_CASES = ["3x4-16x32", "2x2-128x16"]


def _layout(case):
    grid, block, sparsity = CASES[case]
    layout = BSRLayout.from_mask(block_mask(grid, block, sparsity), block)
    return layout, [t.to(DEVICE) for t in layout.tensors()]


def _values(layout, dtype):
    return torch.randn(layout.block.nnz, *layout.block_size).to(dtype)


@pytest.fixture(autouse=True)
def _fresh_validation_cache():
    dispatch.clear_validated_layouts()
    yield
    dispatch.clear_validated_layouts()


def _forbid(monkeypatch, target, name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} must not run here")
    monkeypatch.setattr(target, name, fail)


@pytest.fixture
def triton_only(monkeypatch):
    """The call must take the Triton path: the reference fallbacks raise."""
    for name in ("_reference_fallback_bsr_spmm", "_reference_fallback_bsr_spmm_bt", "_reference_fallback_bsr_sddmm"):
        _forbid(monkeypatch, dispatch, name)


@pytest.fixture
def fallback_only(monkeypatch):
    """The call must take the reference fallback: the Triton kernels raise."""
    for name in ("bsr_spmm", "bsr_spmm_bt"):
        _forbid(monkeypatch, dispatch._spmm_kernels, name)
    _forbid(monkeypatch, dispatch._sddmm_kernels, "bsr_sddmm")


def _to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


# ------------------------------------------------------------------------------------------- Triton path

@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", TRITON_CASES)
def test_spmm_runs_triton(case, dtype, triton_only, poisoned_empty):
    layout, lt = _layout(case)
    values, dense = _values(layout, dtype), torch.randn(layout.shape[1], 7).to(dtype)
    out = dispatch.bsr_spmm_cuda(*_to(DEVICE, values), *lt, *_to(DEVICE, dense)).cpu()
    cpu_lt = layout.tensors()
    assert_error_budget(out, reference.bsr_spmm(values, *cpu_lt, dense),
                        reference.bsr_spmm(values.double(), *cpu_lt, dense.double()), 2.0, f"spmm {case} {dtype}")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", TRITON_CASES)
def test_spmm_bt_runs_triton(case, dtype, with_bias, triton_only, poisoned_empty):
    layout, lt = _layout(case)
    values, dense = _values(layout, dtype), torch.randn(layout.shape[1], 7).to(dtype)
    bias = torch.randn(layout.shape[0]).to(dtype) if with_bias else None
    out = dispatch.bsr_spmm_bt_cuda(*_to(DEVICE, values), *lt, *_to(DEVICE, dense, bias)).cpu()
    assert out.shape == (7, layout.shape[0]) and out.is_contiguous()
    cpu_lt = layout.tensors()
    ref64 = reference.bsr_spmm(values.double(), *cpu_lt, dense.double()).t()
    baseline = reference.bsr_spmm(values, *cpu_lt, dense).t().contiguous()
    if with_bias:
        ref64, baseline = ref64 + bias.double(), baseline + bias
    assert_error_budget(out, baseline, ref64, 2.0, f"spmm_bt {case} {dtype}")


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", TRITON_CASES)
def test_sddmm_runs_triton(case, dtype, triton_only, poisoned_empty):
    layout, lt = _layout(case)
    a, b = torch.randn(layout.shape[0], 7).to(dtype), torch.randn(layout.shape[1], 7).to(dtype)
    out = dispatch.bsr_sddmm_cuda(*_to(DEVICE, a, b), *lt).cpu()
    cpu_lt = layout.tensors()
    assert_error_budget(out, reference.bsr_sddmm(a, b, *cpu_lt), reference.bsr_sddmm(a.double(), b.double(), *cpu_lt),
                        3.0, f"sddmm {case} {dtype}")


# ------------------------------------------------------------------------------------- reference fallback

FALLBACKS = [pytest.param("3x4-16x32", torch.float64, id="float64"),
             pytest.param("4x3-8x8", torch.float32, id="8x8-float32"),
             pytest.param("4x3-8x8", torch.float16, id="8x8-float16")]


def test_uses_triton_names_the_supported_cases():
    assert dispatch.uses_triton(torch.float16, 128, 16) and dispatch.uses_triton(torch.bfloat16, 32, 64)
    assert not dispatch.uses_triton(torch.float64, 16, 16)
    assert not dispatch.uses_triton(torch.float32, 8, 8) and not dispatch.uses_triton(torch.float32, 256, 16)


@pytest.mark.parametrize("case,dtype", FALLBACKS)
def test_fallback_is_the_reference(case, dtype, fallback_only):
    """float64 and unsupported blocks run sparsekern.reference: the same numbers as the reference op."""
    layout, lt = _layout(case)
    values, dense = _values(layout, dtype), torch.randn(layout.shape[1], 5).to(dtype)
    bias = torch.randn(layout.shape[0]).to(dtype)
    a = torch.randn(layout.shape[0], 5).to(dtype)
    dv, dd, db, da = _to(DEVICE, values, dense, bias, a)
    expected = reference.bsr_spmm(dv, *lt, dd)
    assert torch.equal(dispatch.bsr_spmm_cuda(dv, *lt, dd), expected)
    assert torch.equal(dispatch.bsr_spmm_bt_cuda(dv, *lt, dd, db), expected.t().contiguous() + db)
    assert torch.equal(dispatch.bsr_spmm_bt_cuda(dv, *lt, dd, None), expected.t().contiguous())
    assert torch.equal(dispatch.bsr_sddmm_cuda(da, dd, *lt), reference.bsr_sddmm(da, dd, *lt))


@pytest.mark.parametrize("case,dtype", [f for f in FALLBACKS if f.id != "float64"])
def test_fallback_meets_the_error_budget(case, dtype):
    """And the 16/32-bit fallback is accurate, not just equal to itself (a float64 result cannot be judged
    against a float64 reference): a dense GEMM with float32 sums is the plain-PyTorch baseline."""
    layout, lt = _layout(case)
    values, dense = _values(layout, dtype), torch.randn(layout.shape[1], 9).to(dtype)
    out = dispatch.bsr_spmm_cuda(*_to(DEVICE, values), *lt, *_to(DEVICE, dense)).cpu()
    ref64 = reference.bsr_spmm(values.double(), *layout.tensors(), dense.double())
    plain = torch.mm(blocks_to_dense(values.float(), layout), dense.float()).to(dtype)
    assert_error_budget(out, plain, ref64, 2.0, f"fallback spmm {case} {dtype}")


# --------------------------------------------------------------------------------- layout validation

@pytest.fixture
def count_checks(monkeypatch):
    calls = []
    real = _ops._check_layout_values

    def counting(*layout):
        calls.append(1)
        return real(*layout)

    monkeypatch.setattr(_ops, "_check_layout_values", counting)
    return calls


def _spmm_args(case="3x4-16x32"):
    layout, lt = _layout(case)
    values, dense = _to(DEVICE, _values(layout, torch.float32), torch.randn(layout.shape[1], 3))
    return values, lt, dense


def test_a_layout_is_checked_once(count_checks):
    values, lt, dense = _spmm_args()
    for _ in range(3):
        dispatch.bsr_spmm_cuda(values, *lt, dense)
        dispatch.bsr_spmm_bt_cuda(values, *lt, dense, None)
    dispatch.bsr_sddmm_cuda(torch.randn(48, 3, device=DEVICE), dense, *lt)
    assert len(count_checks) == 1
    copies = [t.clone() for t in lt]  # the same layout in other memory: checked on its own
    dispatch.bsr_spmm_cuda(values, *copies, dense)
    dispatch.bsr_spmm_cuda(values, *copies, dense)
    assert len(count_checks) == 2


def test_an_edited_layout_is_checked_again(count_checks):
    values, lt, dense = _spmm_args()
    dispatch.bsr_spmm_cuda(values, *lt, dense)
    lt[1][-1] = 99  # in place: bumps col_indices._version
    with pytest.raises(ValueError, match=r"layout: col_indices must lie in \[0, 4\)"):
        dispatch.bsr_spmm_cuda(values, *lt, dense)
    assert len(count_checks) == 2


def test_a_corrupt_layout_is_never_remembered(count_checks):
    values, lt, dense = _spmm_args()
    lt[0] = lt[0].clone()
    lt[0][-1] += 1
    for _ in range(2):
        with pytest.raises(ValueError, match="layout: row_offsets must run from 0 to nnz"):
            dispatch.bsr_spmm_cuda(values, *lt, dense)
    assert len(count_checks) == 2


def test_a_freed_layout_does_not_vouch_for_its_address(monkeypatch, count_checks):
    """The allocator reuses a freed layout's address for the next tensor of its size: simulated by making
    every layout look alike to the cache, a dead entry must not let a corrupt layout through."""
    monkeypatch.setattr(check_once, "_storage_key", lambda tensors: ("same",))
    values, lt, dense = _spmm_args()
    corrupt = [t.clone() for t in lt]
    corrupt[1][0] = -5
    dispatch.bsr_spmm_cuda(values, *lt, dense)
    del lt
    gc.collect()
    assert all(ref() is None for ref in check_once._validated[("layout", ("same",))])  # its tensors are gone
    with pytest.raises(ValueError, match=r"layout: col_indices must lie in \[0, 4\)"):
        dispatch.bsr_spmm_cuda(values, *corrupt, dense)
    assert len(count_checks) == 2


def test_inference_mode_layouts_are_checked_every_call(count_checks):
    with torch.inference_mode():
        values, lt, dense = _spmm_args()
        for _ in range(2):
            dispatch.bsr_spmm_cuda(values, *lt, dense)
    assert len(count_checks) == 2


# ------------------------------------------------------------------------------------------ bad input

def _bad_cases():
    """(call, error, message): the reference's messages, plus the device checks only these functions make."""
    layout, lt = _layout("3x4-16x32")
    nnzb = layout.block.nnz
    v = torch.randn(nnzb, 16, 32, device=DEVICE)
    x = torch.randn(128, 5, device=DEVICE)
    a = torch.randn(48, 5, device=DEVICE)
    bias = torch.randn(48, device=DEVICE)
    meta = torch.device("meta")
    moved = list(lt)
    moved[3] = lt[3].to(meta)
    return {
        "values_int": (lambda: dispatch.bsr_spmm_cuda(v.int(), *lt, x), TypeError,
                       "values: expected float32, float64, float16 or bfloat16, got torch.int32"),
        "dense_dtype": (lambda: dispatch.bsr_spmm_cuda(v, *lt, x.half()), TypeError,
                        "dense: expected dtype torch.float32 .same as the values., got torch.float16"),
        "values_nnzb": (lambda: dispatch.bsr_spmm_cuda(v[1:], *lt, x), ValueError,
                        rf"values: expected \(nnzb={nnzb}, bh, bw\)"),
        "dense_rows": (lambda: dispatch.bsr_spmm_cuda(v, *lt, x[1:]), ValueError, "dense: expected 128 rows"),
        "offsets_int64": (lambda: dispatch.bsr_spmm_cuda(v, lt[0].long(), *lt[1:], x), TypeError,
                          "row_offsets: expected a 1-D int32 tensor, got torch.int64"),
        "layout_device": (lambda: dispatch.bsr_spmm_cuda(v, *moved, x), ValueError,
                          rf"t_col_indices: expected a tensor on {DEVICE}.* \(where values is\), got one on meta"),
        "dense_device": (lambda: dispatch.bsr_spmm_cuda(v, *lt, x.to(meta)), ValueError,
                         "dense: expected a tensor on .*got one on meta"),
        "bias_shape": (lambda: dispatch.bsr_spmm_bt_cuda(v, *lt, x, bias[1:]), ValueError,
                       r"bias: expected shape \(48,\), got \(47,\)"),
        "bias_dtype": (lambda: dispatch.bsr_spmm_bt_cuda(v, *lt, x, bias.double()), TypeError,
                       "bias: expected dtype torch.float32, got torch.float64"),
        "bias_device": (lambda: dispatch.bsr_spmm_bt_cuda(v, *lt, x, bias.to(meta)), ValueError,
                        "bias: expected a tensor on .*got one on meta"),
        "sddmm_b_dtype": (lambda: dispatch.bsr_sddmm_cuda(a, x.double(), *lt), TypeError,
                          "b: expected dtype torch.float32 .same as a., got torch.float64"),
        "sddmm_split": (lambda: dispatch.bsr_sddmm_cuda(a[1:], x, *lt), ValueError,
                        "a: 47 rows do not split into 3 block rows"),
        "sddmm_batch": (lambda: dispatch.bsr_sddmm_cuda(a, x[:, :4], *lt), ValueError,
                        "a, b: batch sizes differ: 5 and 4"),
        "sddmm_device": (lambda: dispatch.bsr_sddmm_cuda(a, x.to(meta), *lt), ValueError,
                         r"b: expected a tensor on .* \(where a is\), got one on meta"),
    }


BAD = list(_bad_cases().keys())


@pytest.mark.parametrize("case", BAD)
def test_bad_input(case):
    call, error, message = _bad_cases()[case]
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------- registration

@pytest.mark.parametrize("op", list(dispatch.IMPLS))
def test_registered_for_cuda(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CUDA")


@needs_gpu
def test_cuda_tensors_reach_the_triton_kernels(monkeypatch):
    """Through torch.ops on CUDA tensors: the dispatcher calls these functions (counted), and the results are
    the kernels'."""
    calls = []
    real = dispatch._spmm_kernels.bsr_spmm_bt

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dispatch._spmm_kernels, "bsr_spmm_bt", counting)
    values, lt, dense = _spmm_args()
    out = torch.ops.sparsekern.bsr_spmm_bt(values, *lt, dense, None)
    assert calls and torch.equal(out, dispatch.bsr_spmm_bt_cuda(values, *lt, dense, None))


@needs_gpu
@pytest.mark.parametrize("op", list(dispatch.IMPLS))
def test_opcheck_on_cuda(op):
    values, lt, dense = _spmm_args()
    args = {"bsr_spmm": (values, *lt, dense), "bsr_spmm_bt": (values, *lt, dense, torch.randn(48, device=DEVICE)),
            "bsr_sddmm": (torch.randn(48, 3, device=DEVICE), dense, *lt)}[op]
    torch.library.opcheck(getattr(torch.ops.sparsekern, op).default, args)


@needs_gpu
def test_bsr_linear_trains_on_cuda_like_on_cpu():
    """The whole layer (forward bsr_spmm_bt, backward bsr_spmm_bt + bsr_sddmm) on CUDA against the CPU."""
    layout, lt = _layout("2x2-128x16")
    values = _values(layout, torch.float32).requires_grad_()
    x = torch.randn(9, layout.shape[1], requires_grad=True)
    bias = torch.randn(layout.shape[0], requires_grad=True)
    outs = {}
    for device in ("cpu", "cuda"):
        leaves = [t.detach().to(device).requires_grad_() for t in (x, values, bias)]
        y, _ = _ops.bsr_linear(leaves[0], leaves[1], *[t.to(device) for t in layout.tensors()], leaves[2])
        (y * y).sum().backward()
        outs[device] = [y.detach().cpu()] + [t.grad.cpu() for t in leaves]
    for got, want in zip(outs["cuda"], outs["cpu"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_gpu
def test_gradcheck_float64_on_cuda_takes_the_fallback():
    layout, lt = _layout("4x3-8x8")
    values = _values(layout, torch.float64).to(DEVICE).requires_grad_()
    x = torch.randn(3, layout.shape[1], dtype=torch.float64, device=DEVICE, requires_grad=True)
    bias = torch.randn(layout.shape[0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: _ops.bsr_linear(x, v, *lt, b)[0], (x, values, bias))
