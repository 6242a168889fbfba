"""The CUDA kernels of the CSR Linear ops (csrc/cuda/*.cu): csr_spmm, csr_spmm_bt, csr_sddmm, csr_spmm_sddmm_bt.

Skipped without a GPU. On one, each op runs on CUDA tensors and is held to DESIGN.md's rule against a
float64 oracle: its error at most 2x the error of the same-precision plain-PyTorch computation (a dense cuBLAS
GEMM on the same rounded inputs), plus helpers.py's one-ulp floor. float16/bfloat16 get 4x: both the kernel and
cuBLAS accumulate in float32 and round once, so the two errors are of the same size and which one is larger on
a given draw is noise. Oracles (helpers.oracle_mm, computed on the GPU): a float64 GEMM for float32 and half
data, exact double-double arithmetic for float64 data.

Outputs are allocated inside the ops, so "poisoning" works through the caching allocator: a NaN-filled block of
the output's size is freed just before the call, which the output's allocation then reuses; an element the
kernel did not write stays NaN and fails the finiteness check of assert_error_budget.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from helpers import assert_error_budget, exact_mask, mask_with_pruned_lines, oracle_mm
from sparsekern import CSRLayout, SparseLinear, _ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

CUDA = torch.device("cuda", 0)  # an explicit index: modules compare devices with ==, and "cuda" != "cuda:0"
F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DTYPES = [F32, F64, F16, BF16]
FACTOR = {F32: 2.0, F64: 2.0, F16: 4.0, BF16: 4.0}
OPS = ["csr_spmm", "csr_spmm_bt", "csr_sddmm", "csr_spmm_sddmm_bt"]
# The registry's fakes (sparsekern/_ops.py) take half types once its FLOAT_DTYPES lists them.
OPCHECK_DTYPES = [d for d in DTYPES if d in (F32, F64) or d in getattr(_ops, "FLOAT_DTYPES", ())]

# (n_rows, n_cols, batch): odd sizes (431 = 13·32 + 15: no vector width fits, 14 batch tiles), one row, one
# column, batch 1 and 0, and two larger ones whose batch spans several tiles of 16-byte packs (several partial
# dot buffers, and batch tiles per block).
SHAPES = [(7, 123, 431), (1, 37, 19), (29, 1, 23), (16, 40, 1), (16, 40, 0), (64, 96, 70), (300, 700, 256),
          (40, 64, 3000)]
KINDS = [0.0, 0.5, 0.9, 0.99, 1.0, "pruned_lines"]


@pytest.fixture(autouse=True)
def _exact_cublas_baseline():
    """The baseline must be the dtype's own GEMM: no TF32, no reduced-precision split-K reductions."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
             matmul.allow_bf16_reduced_precision_reduction)
    matmul.allow_tf32 = False
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_bf16_reduced_precision_reduction = False
    yield
    (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction,
     matmul.allow_bf16_reduced_precision_reduction) = saved


def _mask(n_rows, n_cols, kind):
    mask = mask_with_pruned_lines((n_rows, n_cols)) if kind == "pruned_lines" else exact_mask((n_rows, n_cols), kind)
    return mask.to(CUDA)


def _weight(mask, dtype):
    """Random weights (never zero at kept positions), zero at pruned ones, already rounded to ``dtype``."""
    return (torch.randn(mask.shape, dtype=F64, device=CUDA) * mask).to(dtype)


def _randn(*shape, dtype):
    return torch.randn(*shape, dtype=F64, device=CUDA).to(dtype)


def _poison(numel, dtype):
    """Leave a NaN-filled block of ``numel`` elements in the caching allocator for the next allocation to reuse."""
    if numel:
        torch.full((numel,), float("nan"), dtype=dtype, device=CUDA)  # freed at once, back to the cache


def _call(op, args, out_numels, dtype):
    """The op once to warm it (its first call validates the layout, with temporaries of its own), then poisoned."""
    op(*args)
    for numel in out_numels:
        _poison(numel, dtype)
    return op(*args)


def _budget(out, baseline, ref, dtype, what):
    assert out.device.type == "cuda", f"{what}: output on {out.device}"
    assert_error_budget(out.cpu(), baseline.cpu(), ref.cpu(), FACTOR[dtype], what)


def _assert_exact_zero_rows(out, rows, what):
    assert torch.equal(out[rows], torch.zeros_like(out[rows])), f"{what}: rows of pruned lines are not exactly 0"


def test_cuda_kernels_are_registered():
    """On a GPU the extension must have been built with its CUDA kernels; without them these tests would run the
    Python reference on CUDA tensors and pass for the wrong reason."""
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CUDA")]
    assert not missing, (f"no CUDA kernel registered for {missing}: build with a CUDA torch and CUDA_HOME set "
                         f"(pip install --no-build-isolation -e .)")


# ------------------------------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_csr_spmm_accuracy(shape, kind, dtype):
    n_rows, n_cols, batch = shape
    mask = _mask(n_rows, n_cols, kind)
    lt = CSRLayout.from_mask(mask).tensors()
    w = _weight(mask, dtype)
    dense = _randn(n_cols, batch, dtype=dtype)

    out = _call(_ops.csr_spmm, (w[mask], *lt, dense), [n_rows * batch], dtype)

    assert out.shape == (n_rows, batch) and out.dtype == dtype and out.is_contiguous()
    _budget(out, w @ dense, oracle_mm(w, dense), dtype, "csr_spmm")
    _assert_exact_zero_rows(out, ~mask.any(1), "csr_spmm")


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_csr_spmm_bt_accuracy(shape, kind, dtype, with_bias):
    """(S @ dense)ᵀ + bias through the kernel's shared-memory transpose: bit for bit csr_spmm's product
    transposed plus the bias as torch adds it, and within the error budget of the dense GEMM."""
    n_rows, n_cols, batch = shape
    mask = _mask(n_rows, n_cols, kind)
    lt = CSRLayout.from_mask(mask).tensors()
    w = _weight(mask, dtype)
    dense = _randn(n_cols, batch, dtype=dtype)
    bias = _randn(n_rows, dtype=dtype) if with_bias else None

    out = _call(_ops.csr_spmm_bt, (w[mask], *lt, dense, bias), [n_rows * batch], dtype)

    assert out.shape == (batch, n_rows) and out.dtype == dtype and out.is_contiguous()
    product = _ops.csr_spmm(w[mask], *lt, dense).t()
    assert torch.equal(out, product + bias if with_bias else product)
    baseline = (w @ dense).t() + bias if with_bias else (w @ dense).t()
    ref = oracle_mm(w, dense).t()
    _budget(out, baseline, ref + bias.double() if with_bias else ref, dtype, "csr_spmm_bt")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_csr_sddmm_accuracy(shape, kind, dtype):
    n_rows, n_cols, batch = shape
    mask = _mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    a = _randn(n_rows, batch, dtype=dtype)
    b = _randn(n_cols, batch, dtype=dtype)

    out = _call(_ops.csr_sddmm, (a, b, *layout.tensors()), [layout.nnz], dtype)

    assert out.shape == (layout.nnz,) and out.dtype == dtype
    _budget(out, (a @ b.T)[mask], oracle_mm(a, b.T)[mask], dtype, "csr_sddmm")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_csr_spmm_sddmm_bt_accuracy(shape, kind, dtype):
    """The fused backward pass: its output is csr_spmm_bt's bit for bit, its dot products within budget."""
    n_rows, n_cols, batch = shape
    mask = _mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    lt = layout.tensors()
    w = _weight(mask, dtype)
    dense = _randn(n_cols, batch, dtype=dtype)
    other = _randn(n_rows, batch, dtype=dtype)

    out, dots = _call(_ops.csr_spmm_sddmm_bt, (w[mask], *lt, dense, other), [n_rows * batch, layout.nnz], dtype)

    assert out.shape == (batch, n_rows) and dots.shape == (layout.nnz,) and out.dtype == dots.dtype == dtype
    assert torch.equal(out, _ops.csr_spmm_bt(w[mask], *lt, dense, None))
    _budget(out, (w @ dense).t(), oracle_mm(w, dense).t(), dtype, "out")
    _budget(dots, (other @ dense.T)[mask], oracle_mm(other, dense.T)[mask], dtype, "dots")
    _assert_exact_zero_rows(out.t(), ~mask.any(1), "out")


# ------------------------------------------------------------------------------------- operand layouts

def _operand_variants(n_rows, batch, dtype):
    """The same (n_rows, batch) values laid out in every way the kernels accept, each named, with its strides."""
    x = _randn(n_rows, batch, dtype=dtype)
    padded = torch.empty_strided((n_rows, batch), (batch + 3, 1), dtype=dtype, device=CUDA).copy_(x)
    shifted_storage = torch.empty(n_rows, batch + 1, dtype=dtype, device=CUDA)
    shifted = shifted_storage[:, 1:].copy_(x)  # base address one element off a 16-byte boundary
    column_major = x.t().contiguous().t()  # stride(1) != 1: the kernels take a contiguous copy
    # transpose()'s row stride (odd cache lines for rows of 257 B to 1 KB), built directly: the registry's
    # transpose takes no half types.
    stride = _ops.feature_major_stride(batch, x.element_size())
    transpose_padded = torch.empty_strided((n_rows, batch), (stride, 1), dtype=dtype, device=CUDA).copy_(x)
    variants = {"contiguous": x, "transpose_padded": transpose_padded, "padded_by_3": padded,
                "unaligned_base": shifted, "column_major": column_major}
    for name, t in variants.items():
        assert torch.equal(t, x), name
    assert variants["padded_by_3"].stride(0) == batch + 3 and variants["column_major"].stride(1) != 1
    return variants


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [100, 48, 256, 431])
def test_strided_and_padded_operands(batch, dtype):
    """Feature-major operands with a row stride larger than the batch (transpose()'s padding, or any other),
    a misaligned base address or a non-unit column stride give the contiguous operand's results: the products
    bit for bit (their sums do not depend on the pack width the layout allows), the dot products within budget
    (their partial sums are grouped by pack width)."""
    n_rows, n_cols = 37, 53
    mask = _mask(n_rows, n_cols, 0.6)
    layout = CSRLayout.from_mask(mask)
    lt = layout.tensors()
    w = _weight(mask, dtype)
    values = w[mask]
    dense_variants = _operand_variants(n_cols, batch, dtype)
    other_variants = _operand_variants(n_rows, batch, dtype)
    dense, other = dense_variants["contiguous"], other_variants["contiguous"]
    spmm = _ops.csr_spmm(values, *lt, dense)
    spmm_bt = _ops.csr_spmm_bt(values, *lt, dense, None)
    dots_ref = oracle_mm(other, dense.T)[mask]
    dots_base = (other @ dense.T)[mask]
    for name in dense_variants:
        d, o = dense_variants[name], other_variants[name]
        assert torch.equal(_ops.csr_spmm(values, *lt, d), spmm), name
        assert torch.equal(_ops.csr_spmm_bt(values, *lt, d, None), spmm_bt), name
        _budget(_ops.csr_sddmm(o, d, *lt), dots_base, dots_ref, dtype, f"csr_sddmm ({name})")
        out, dots = _ops.csr_spmm_sddmm_bt(values, *lt, d, o)
        assert torch.equal(out, spmm_bt), name
        _budget(dots, dots_base, dots_ref, dtype, f"csr_spmm_sddmm_bt dots ({name})")
    strided_values = torch.empty(2 * layout.nnz, dtype=dtype, device=CUDA)[::2].copy_(values)
    assert torch.equal(_ops.csr_spmm(strided_values, *lt, dense), spmm)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_batch_and_no_entries(dtype):
    """An empty batch: empty products, exactly-zero dot products. No stored entries: zero rows, or the bias."""
    mask = _mask(6, 12, 0.5)
    lt = CSRLayout.from_mask(mask).tensors()
    values = _weight(mask, dtype)[mask]
    nnz = values.numel()
    bias = _randn(6, dtype=dtype)
    assert _ops.csr_spmm(values, *lt, _randn(12, 0, dtype=dtype)).shape == (6, 0)
    assert _ops.csr_spmm_bt(values, *lt, _randn(12, 0, dtype=dtype), bias).shape == (0, 6)
    sddmm = _call(_ops.csr_sddmm, (_randn(6, 0, dtype=dtype), _randn(12, 0, dtype=dtype), *lt), [nnz], dtype)
    assert torch.equal(sddmm, torch.zeros(nnz, dtype=dtype, device=CUDA))
    out, dots = _ops.csr_spmm_sddmm_bt(values, *lt, _randn(12, 0, dtype=dtype), _randn(6, 0, dtype=dtype))
    assert out.shape == (0, 6) and torch.equal(dots, torch.zeros(nnz, dtype=dtype, device=CUDA))

    empty = CSRLayout.from_mask(torch.zeros(6, 12, dtype=torch.bool, device=CUDA)).tensors()
    none = torch.empty(0, dtype=dtype, device=CUDA)
    dense, other = _randn(12, 70, dtype=dtype), _randn(6, 70, dtype=dtype)
    assert torch.equal(_ops.csr_spmm(none, *empty, dense), torch.zeros(6, 70, dtype=dtype, device=CUDA))
    assert torch.equal(_ops.csr_spmm_bt(none, *empty, dense, bias), bias.expand(70, 6))
    assert _ops.csr_sddmm(other, dense, *empty).shape == (0,)
    out, dots = _ops.csr_spmm_sddmm_bt(none, *empty, dense, other)
    assert torch.equal(out, torch.zeros(70, 6, dtype=dtype, device=CUDA)) and dots.shape == (0,)


@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
def test_tall_layer_and_wide_batch(dtype):
    """Many row blocks (5003 rows) and a batch of many tiles: every block and tile is written, results in budget."""
    mask = _mask(5003, 7, 0.5)
    lt = CSRLayout.from_mask(mask).tensors()
    w = _weight(mask, dtype)
    dense, other = _randn(7, 1030, dtype=dtype), _randn(5003, 1030, dtype=dtype)
    out, dots = _call(_ops.csr_spmm_sddmm_bt, (w[mask], *lt, dense, other), [5003 * 1030, int(mask.sum())], dtype)
    _budget(out, (w @ dense).t(), oracle_mm(w, dense).t(), dtype, "out")
    _budget(dots, (other @ dense.T)[mask], oracle_mm(other, dense.T)[mask], dtype, "dots")


# Shapes whose launch plan keeps the widest pack (16 bytes per lane: V = 4 float32, 8 half, 2 float64): enough
# rows to fill a 132-SM GPU with one batch tile (plan_row_tiles halves V below 32 warps per SM), which the
# smaller shapes above never reach. Offsets (misaligned bases) and padded rows must fall back or read right.
WIDE_PACK = {F32: 128, F16: 256, BF16: 256, F64: 64}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("operand", ["contiguous", "padded", "unaligned"])
def test_every_op_with_the_widest_pack(dtype, operand):
    n_rows, n_cols, batch = 4500, 96, WIDE_PACK[dtype]
    mask = _mask(n_rows, n_cols, 0.9)
    lt = CSRLayout.from_mask(mask).tensors()
    w = _weight(mask, dtype)

    def feature_major(rows):
        if operand == "contiguous":
            return _randn(rows, batch, dtype=dtype)
        if operand == "padded":
            return _randn(rows, batch + 8, dtype=dtype)[:, :batch]
        return _randn(rows * batch + 1, dtype=dtype)[1:].view(rows, batch)  # base one element off
    dense, other = feature_major(n_cols), feature_major(n_rows)
    bias = _randn(n_rows, dtype=dtype)
    nnz = int(mask.sum())
    y = _call(_ops.csr_spmm, (w[mask], *lt, dense), [n_rows * batch], dtype)
    _budget(y, w @ dense, oracle_mm(w, dense), dtype, "csr_spmm")
    y_bt = _call(_ops.csr_spmm_bt, (w[mask], *lt, dense, bias), [batch * n_rows], dtype)
    assert torch.equal(y_bt, (y.t() + bias)), "csr_spmm_bt must equal csr_spmm transposed plus the bias"
    dots = _call(_ops.csr_sddmm, (other, dense, *lt), [nnz], dtype)
    _budget(dots, (other @ dense.T)[mask], oracle_mm(other, dense.T)[mask], dtype, "csr_sddmm")
    out, fused = _call(_ops.csr_spmm_sddmm_bt, (w[mask], *lt, dense, other), [batch * n_rows, nnz], dtype)
    assert torch.equal(out, y.t()), "the fused op's output must equal csr_spmm transposed"
    _budget(fused, (other @ dense.T)[mask], oracle_mm(other, dense.T)[mask], dtype, "csr_spmm_sddmm_bt dots")


def test_results_are_deterministic():
    """No atomics: the same call twice gives the same bits (dot products split over several partial buffers)."""
    mask = _mask(50, 300, 0.7)
    lt = CSRLayout.from_mask(mask).tensors()
    a, b = _randn(50, 4096, dtype=F32), _randn(300, 4096, dtype=F32)
    first = _ops.csr_sddmm(a, b, *lt)
    for _ in range(3):
        assert torch.equal(_ops.csr_sddmm(a, b, *lt), first)


# ------------------------------------------------------------------------------------ opcheck / gradcheck

def _small_case(name, kind, dtype, requires_grad, batch=3):
    mask = mask_with_pruned_lines((5, 7), 0.4).to(CUDA) if kind == "pruned_lines" else _mask(5, 7, kind)
    lt = CSRLayout.from_mask(mask).tensors()
    values = _randn(int(mask.sum()), dtype=dtype)
    dense, other, bias = _randn(7, batch, dtype=dtype), _randn(5, batch, dtype=dtype), _randn(5, dtype=dtype)
    if name == "csr_spmm":
        args, diff = (values, *lt, dense), (0, 7)
    elif name == "csr_spmm_bt":
        args, diff = (values, *lt, dense, bias), (0, 7, 8)
    elif name == "csr_spmm_sddmm_bt":
        args, diff = (values, *lt, dense, other), (0, 7, 8)
    else:
        args, diff = (other, dense, *lt), (0, 1)
    return tuple(t.requires_grad_(requires_grad) if i in diff else t for i, t in enumerate(args))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("kind", [0.5, "pruned_lines", 1.0], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_opcheck_cuda(name, kind, requires_grad):
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch with CUDA tensors, in every dtype the
    registry's fakes accept."""
    for dtype in OPCHECK_DTYPES:
        torch.library.opcheck(getattr(_ops, name), _small_case(name, kind, dtype, requires_grad))


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_gradcheck_cuda(bias):
    """float64 gradcheck (and a fast gradgradcheck) of SparseLinear's sparse backend on CUDA, through all three
    sparse products: forward csr_spmm_bt, backward the fused csr_spmm_sddmm_bt (grad mode off) and, for the
    second derivative, csr_spmm_bt and csr_sddmm separately."""
    mask = mask_with_pruned_lines((6, 9), 0.4).to(CUDA)
    layer = SparseLinear(9, 6, bias=bias, mask=mask, backend="sparse", device=CUDA, dtype=F64)
    names = ["weight_values"] + (["bias"] if bias else [])
    params = tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)
    x = torch.randn(4, 9, dtype=F64, device=CUDA, requires_grad=True)

    def f(x, *p):
        return torch.func.functional_call(layer, dict(zip(names, p)), (x,))

    dense = torch.nn.Linear(9, 6, bias=bias, dtype=F64, device=CUDA)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        if bias:
            dense.bias.copy_(layer.bias)
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-12, atol=1e-12)
    assert gradcheck(f, (x, *params))
    assert gradgradcheck(f, (x, *params), fast_mode=True)


# ------------------------------------------------------------------------------------------- bad input

def _bad_input_case():
    mask = mask_with_pruned_lines((5, 7), 0.4).to(CUDA)
    lt = CSRLayout.from_mask(mask).tensors()
    return _randn(int(mask.sum()), dtype=F32), lt, _randn(7, 4, dtype=F32), _randn(5, 4, dtype=F32)


def test_bad_devices():
    values, lt, dense, other = _bad_input_case()
    with pytest.raises(ValueError, match="values: expected a tensor on cuda"):
        _ops.csr_spmm(values.cpu(), *lt, dense)
    with pytest.raises(ValueError, match="dense: expected a tensor on cuda"):
        _ops.csr_spmm(values, *lt, dense.cpu())
    with pytest.raises(ValueError, match="row_offsets: expected a tensor on cuda"):
        _ops.csr_spmm(values, lt[0].cpu(), *lt[1:], dense)
    with pytest.raises(ValueError, match="bias: expected a tensor on cuda"):
        _ops.csr_spmm_bt(values, *lt, dense, torch.zeros(5))
    with pytest.raises(ValueError, match="b: expected a tensor on cuda"):
        _ops.csr_sddmm(other, dense.cpu(), *lt)
    with pytest.raises(ValueError, match="other: expected a tensor on cuda"):
        _ops.csr_spmm_sddmm_bt(values, *lt, dense, other.cpu())
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="dense: expected a tensor on cuda:0, got one on cuda:1"):
            _ops.csr_spmm(values, *lt, dense.to("cuda:1"))


def test_bad_dtypes_and_shapes():
    values, lt, dense, other = _bad_input_case()
    with pytest.raises(TypeError, match="dense: expected dtype"):
        _ops.csr_spmm(values, *lt, dense.double())
    with pytest.raises(TypeError, match="values: expected float32, float64, float16 or bfloat16"):
        _ops.csr_spmm(values.int(), *lt, dense.int())
    with pytest.raises(TypeError, match="row_offsets: expected a 1-D"):
        _ops.csr_spmm(values, lt[0].long(), *lt[1:], dense)
    with pytest.raises(TypeError, match="t_perm: expected a 1-D"):
        _ops.csr_spmm(values, *lt[:4], lt[4].int(), lt[5], dense)
    with pytest.raises(TypeError, match="bias: expected dtype"):
        _ops.csr_spmm_bt(values, *lt, dense, torch.zeros(5, dtype=F64, device=CUDA))
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\)"):
        _ops.csr_spmm_bt(values, *lt, dense, torch.zeros(4, device=CUDA))
    with pytest.raises(TypeError, match="b: expected dtype"):
        _ops.csr_sddmm(other, dense.half(), *lt)
    with pytest.raises(ValueError, match="dense: expected 7 rows"):
        _ops.csr_spmm(values, *lt, dense[:6])
    with pytest.raises(ValueError, match=r"values: expected shape"):
        _ops.csr_spmm(values[:-1], *lt, dense)
    with pytest.raises(ValueError, match="a, b: batch sizes differ"):
        _ops.csr_sddmm(other[:, :3], dense, *lt)
    with pytest.raises(ValueError, match="dense, other: batch sizes differ"):
        _ops.csr_spmm_sddmm_bt(values, *lt, dense, other[:, :3])
    with pytest.raises(ValueError, match="col_indices: expected a contiguous tensor"):
        _ops.csr_spmm(values, lt[0], lt[1].repeat_interleave(2)[::2], *lt[2:], dense)


def test_corrupt_layout_content_is_caught_and_rechecked_after_writes():
    """Layout content is validated on the device once per storage and version: a corrupt layout raises
    ValueError, and an in-place write to a validated layout is seen on the next call."""
    values, lt, dense, _ = _bad_input_case()
    row_offsets, col_indices = lt[0].clone(), lt[1].clone()
    nnz = col_indices.numel()
    bad_offsets = row_offsets.clone()
    bad_offsets[-1] = nnz + 1
    with pytest.raises(ValueError, match=f"row_offsets: expected to run from 0 to nnz={nnz}"):
        _ops.csr_spmm(values, bad_offsets, col_indices, *lt[2:], dense)
    decreasing = row_offsets.clone()  # row 2 is pruned (mask_with_pruned_lines): offsets[2] == offsets[3]
    decreasing[2] = int(row_offsets[3]) + 1
    with pytest.raises(ValueError, match="row_offsets: decreases at row 2"):
        _ops.csr_spmm(values, decreasing, col_indices, *lt[2:], dense)

    expected = _ops.csr_spmm(values, row_offsets, col_indices, *lt[2:], dense)  # validated and cached
    col_indices[0] = 7  # in place: the version counter moves on
    with pytest.raises(ValueError, match=r"col_indices: expected indices in \[0, 7\)"):
        _ops.csr_spmm(values, row_offsets, col_indices, *lt[2:], dense)
    col_indices.copy_(lt[1])
    assert torch.equal(_ops.csr_spmm(values, row_offsets, col_indices, *lt[2:], dense), expected)
