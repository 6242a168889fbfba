"""Bad input raises ValueError / TypeError whose message names the argument, the expected and the actual value.

Covers the module (SparseLinear, from_dense), the layouts, and the ops called directly, both through the
dispatcher (the C++ kernel when the extension is loaded) and through the registered reference fallback.
The ops' messages differ only in how C++ and Python print dtypes and shapes (``Float`` vs ``torch.float32``,
``[8, 3]`` vs ``(8, 3)``), which the patterns below allow.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import block_mask, exact_mask
from sparsekern import BSRLayout, CSRLayout, SparseLinear, _extension, _ops

META = torch.device("meta")


def _shape(*dims):
    """Regex for a shape printed as (a, b) by Python or [a, b] by C++."""
    inner = ", ".join(str(d) for d in dims)
    return rf"[\(\[]{inner},?[\)\]]"


def _dtype(py, cpp):
    """Regex for a dtype printed by Python (``torch.int32``; ``int32`` in some messages) or C++ (``Int``)."""
    return rf"((torch\.)?{py}|{cpp})"


# What the ops accept: Python's checks take the 16-bit floats too, the CPU C++ kernels only float32/float64.
_FLOATS = r"float32(, float64, float16 or bfloat16| or float64)"


# --------------------------------------------------------------------------------------------- masks

@pytest.mark.parametrize("make", [
    lambda: SparseLinear(4, 3, mask=torch.ones(4, 3)),
    lambda: SparseLinear(4, 3, mask=torch.ones(3, 4, 1)),
    lambda: SparseLinear.from_dense(nn.Linear(4, 3), torch.ones(4, 3)),
])
def test_mask_of_wrong_shape(make):
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 4\), got \((4, 3|3, 4, 1)\)"):
        make()


def test_layout_mask_must_be_2d():
    with pytest.raises(ValueError, match=r"mask: expected a 2-D mask, got 1-D with shape \(12,\)"):
        CSRLayout.from_mask(torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask: expected a 2-D mask, got 3-D with shape \(2, 2, 3\)"):
        BSRLayout.from_mask(torch.ones(2, 2, 3, dtype=torch.bool), 1)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_mask(dtype):
    with pytest.raises(TypeError, match=rf"mask: expected a bool, integer or floating tensor, got {dtype}"):
        SparseLinear(4, 3, mask=torch.ones(3, 4, dtype=dtype))
    with pytest.raises(TypeError, match=rf"mask: expected a bool, integer or floating tensor, got {dtype}"):
        CSRLayout.from_mask(torch.ones(3, 4, dtype=dtype))


@pytest.mark.parametrize("bad", [2, -1, 0.5, 3.0])
def test_mask_with_values_other_than_0_1(bad):
    mask = torch.ones(3, 4)
    mask[1, 2] = bad
    with pytest.raises(ValueError, match=rf"mask: expected only 0 and 1 \(or a bool tensor\), found the value {bad}"):
        SparseLinear(4, 3, mask=mask)
    with pytest.raises(ValueError, match=rf"found the value {int(bad) if float(bad).is_integer() else bad}"):
        SparseLinear(4, 3, mask=mask.to(torch.int64) if float(bad).is_integer() else mask)


def test_mask_with_nan():
    mask = torch.ones(3, 4)
    mask[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"mask: contains NaN; expected only 0 and 1"):
        SparseLinear(4, 3, mask=mask)
    with pytest.raises(ValueError, match=r"mask: contains NaN"):
        CSRLayout.from_mask(mask)


def test_mask_not_a_tensor():
    with pytest.raises(TypeError, match=r"mask: expected a torch.Tensor, got list"):
        SparseLinear(2, 2, mask=[[1, 0], [0, 1]])


def test_mask_on_wrong_device_in_set_mask():
    layer = SparseLinear(4, 3)
    with pytest.raises(ValueError, match=r"mask: expected a tensor on cpu, got one on meta"):
        layer.set_mask(torch.ones(3, 4, dtype=torch.bool, device=META))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_mask_on_wrong_device_in_constructor(device):
    """A mask that cannot be used on the layer's device (here: meta, which holds no data) must be rejected with
    a ValueError naming the mask and both devices, not an internal NotImplementedError from deep inside."""
    with pytest.raises(ValueError, match=r"mask: expected a tensor on cpu, got one on meta"):
        SparseLinear(4, 3, device=device, mask=torch.ones(3, 4, dtype=torch.bool, device=META))


# --------------------------------------------------------------------------------------------- blocks

def test_block_mask_not_made_of_whole_blocks():
    mask = block_mask((2, 2), (2, 2), 0.0)
    mask[1, 3] = False  # block (0, 1) is now partly kept
    message = r"mask: not made of whole 2x2 blocks: block \(0, 1\) at rows 0:2, cols 2:4 is partly kept"
    with pytest.raises(ValueError, match=message):
        BSRLayout.from_mask(mask, (2, 2))
    with pytest.raises(ValueError, match=message):
        SparseLinear(4, 4, mask=mask, block_size=2)


@pytest.mark.parametrize("block_size,shape_msg", [((3, 3), "4x6"), ((4, 4), "4x6"), ((1, 4), "4x6")])
def test_block_size_not_dividing_shape(block_size, shape_msg):
    bh, bw = block_size
    message = rf"block_size: {bh}x{bw} blocks must tile the weight exactly, but shape is {shape_msg}"
    with pytest.raises(ValueError, match=message):
        BSRLayout.from_mask(torch.ones(4, 6, dtype=torch.bool), block_size)
    with pytest.raises(ValueError, match=message):
        SparseLinear(6, 4, block_size=block_size)


def test_block_size_bad_values():
    with pytest.raises(ValueError, match=r"block_size: expected positive sizes, got \(0, 2\)"):
        BSRLayout.from_mask(torch.ones(4, 4, dtype=torch.bool), (0, 2))
    with pytest.raises(TypeError, match=r"block_size: expected an int or a pair of ints, got 'ab'"):
        BSRLayout.from_mask(torch.ones(4, 4, dtype=torch.bool), "ab")
    with pytest.raises(TypeError, match=r"block_size: expected an int or a pair of ints, got \(1, 2, 3\)"):
        SparseLinear(6, 4, block_size=(1, 2, 3))


# -------------------------------------------------------------------------------------- module arguments

def test_constructor_arguments():
    with pytest.raises(ValueError, match=r"in_features: expected a non-negative int, got -1"):
        SparseLinear(-1, 3)
    with pytest.raises(ValueError, match=r"out_features: expected a non-negative int, got 2.5"):
        SparseLinear(3, 2.5)
    with pytest.raises(TypeError, match=r"dtype: expected float32, float64, float16 or bfloat16, got torch.int32"):
        SparseLinear(3, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'sparse', 'dense'\), got 'cuda'"):
        SparseLinear(3, 2, backend="cuda")
    with pytest.raises(TypeError, match=r"linear: expected an nn.Linear, got Conv2d"):
        SparseLinear.from_dense(nn.Conv2d(3, 2, 1), torch.ones(2, 3))


@pytest.fixture(params=["csr-sparse", "csr-dense", "bsr-sparse", "bsr-dense"])
def layer(request):
    layout, backend = request.param.split("-")
    return SparseLinear(6, 4, mask=block_mask((2, 2), (2, 3), 0.5),
                        block_size=(2, 3) if layout == "bsr" else None, backend=backend)


@pytest.mark.parametrize("shape", [(2, 5), (5,), (2, 3, 7), (6, 2)])
def test_input_with_wrong_last_dim(layer, shape):
    with pytest.raises(ValueError, match=rf"input: expected last dimension in_features=6, got shape {_shape(*shape)}"):
        layer(torch.randn(shape))


def test_scalar_input(layer):
    with pytest.raises(ValueError, match=r"input: expected last dimension in_features=6, got shape \(\)"):
        layer(torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                                   torch.bool, torch.complex64])
def test_input_with_wrong_dtype(layer, dtype):
    with pytest.raises(TypeError, match=rf"input: expected dtype torch.float32 \(the layer's\), got {dtype}"):
        layer(torch.ones(2, 6, dtype=dtype))


def test_input_float32_into_float64_layer():
    layer = SparseLinear(6, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float64 \(the layer's\), got torch.float32"):
        layer(torch.ones(2, 6))


@pytest.mark.parametrize("x,type_name", [([[1.0] * 6], "list"), ((1.0,) * 6, "tuple"), (None, "NoneType"),
                                          (3.0, "float")])
def test_non_tensor_input(layer, x, type_name):
    with pytest.raises(TypeError, match=rf"input: expected a torch.Tensor, got {type_name}"):
        layer(x)


def test_numpy_input(layer):
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got ndarray"):
        layer(np.ones((2, 6), dtype=np.float32))


def test_input_on_wrong_device(layer):
    with pytest.raises(ValueError, match=r"input: expected a tensor on cpu, got one on meta"):
        layer(torch.ones(2, 6, device=META))


# --------------------------------------------------------------------------------------------- ops direct

IMPLS = {
    "op": {"csr_spmm": torch.ops.sparsekern.csr_spmm, "csr_sddmm": torch.ops.sparsekern.csr_sddmm,
           "bsr_spmm": torch.ops.sparsekern.bsr_spmm, "bsr_sddmm": torch.ops.sparsekern.bsr_sddmm},
    "reference": {"csr_spmm": _ops._csr_spmm_reference, "csr_sddmm": _ops._csr_sddmm_reference,
                  "bsr_spmm": _ops._bsr_spmm_reference, "bsr_sddmm": _ops._bsr_sddmm_reference},
}


def _csr():
    """A 5x7 layout with nnz=20 (fixed, so the messages below can name it)."""
    mask = exact_mask((5, 7), 1 - 20 / 35)
    layout = CSRLayout.from_mask(mask)
    assert layout.nnz == 20
    return layout.tensors()


def _bsr():
    """A 3x4 grid of 2x3 blocks (6x12 weight) with 6 kept blocks."""
    layout = BSRLayout.from_mask(block_mask((3, 4), (2, 3), 0.5), (2, 3))
    assert layout.block.nnz == 6
    return layout.tensors()


def _with(lt, i, t):
    lt = list(lt)
    lt[i] = t
    return tuple(lt)


OP_ERRORS = {
    # CSR spmm: values (20,), dense (7, B)
    "spmm_values_int": ("csr_spmm", lambda lt: (torch.ones(20, dtype=torch.int32), *lt, torch.randn(7, 3)),
                        TypeError, rf"values: expected {_FLOATS}, got {_dtype('int32', 'Int')}"),
    "spmm_values_len": ("csr_spmm", lambda lt: (torch.randn(19), *lt, torch.randn(7, 3)),
                        ValueError, rf"values: expected shape \(20,\), got {_shape(19)}"),
    "spmm_values_2d": ("csr_spmm", lambda lt: (torch.randn(20, 1), *lt, torch.randn(7, 3)),
                       ValueError, rf"values: expected shape \(20,\), got {_shape(20, 1)}"),
    "spmm_dense_dtype": ("csr_spmm", lambda lt: (torch.randn(20), *lt, torch.randn(7, 3, dtype=torch.float64)),
                         TypeError, rf"dense: expected dtype {_dtype('float32', 'Float')}.*got "
                                    rf"{_dtype('float64', 'Double')}"),
    "spmm_dense_rows": ("csr_spmm", lambda lt: (torch.randn(20), *lt, torch.randn(8, 3)),
                        ValueError, rf"dense: expected 7 rows, got shape {_shape(8, 3)}"),
    "spmm_dense_1d": ("csr_spmm", lambda lt: (torch.randn(20), *lt, torch.randn(7)),
                      ValueError, rf"dense: expected a 2-D \(features, batch\) tensor, got shape {_shape(7)}"),
    "spmm_offsets_int64": ("csr_spmm", lambda lt: (torch.randn(20), *_with(lt, 0, lt[0].long()), torch.randn(7, 3)),
                           TypeError, rf"row_offsets: expected a 1-D {_dtype('int32', 'Int')} tensor, got "
                                      rf"{_dtype('int64', 'Long')}"),
    "spmm_cols_float": ("csr_spmm", lambda lt: (torch.randn(20), *_with(lt, 1, lt[1].float()), torch.randn(7, 3)),
                        TypeError, rf"col_indices: expected a 1-D {_dtype('int32', 'Int')} tensor, got "
                                   rf"{_dtype('float32', 'Float')}"),
    "spmm_perm_int32": ("csr_spmm", lambda lt: (torch.randn(20), *_with(lt, 4, lt[4].int()), torch.randn(7, 3)),
                        TypeError, rf"t_perm: expected a 1-D {_dtype('int64', 'Long')} tensor, got "
                                   rf"{_dtype('int32', 'Int')}"),
    "spmm_perm_len": ("csr_spmm", lambda lt: (torch.randn(20), *_with(lt, 5, lt[5][:-1]), torch.randn(7, 3)),
                      ValueError, r"layout: col_indices, t_col_indices, t_perm and t_perm_inv must all have nnz=20 "
                                  r"entries, got 20, 20, 19"),
    # CSR sddmm: a (5, B), b (7, B)
    "sddmm_a_int": ("csr_sddmm", lambda lt: (torch.ones(5, 3, dtype=torch.int64), torch.ones(7, 3, dtype=torch.int64),
                                             *lt),
                    TypeError, rf"a: expected {_FLOATS}, got {_dtype('int64', 'Long')}"),
    "sddmm_b_dtype": ("csr_sddmm", lambda lt: (torch.randn(5, 3), torch.randn(7, 3, dtype=torch.float64), *lt),
                      TypeError, rf"b: expected dtype {_dtype('float32', 'Float')}.*got {_dtype('float64', 'Double')}"),
    "sddmm_batch": ("csr_sddmm", lambda lt: (torch.randn(5, 3), torch.randn(7, 4), *lt),
                    ValueError, r"a, b: batch sizes differ: 3 and 4"),
    "sddmm_a_rows": ("csr_sddmm", lambda lt: (torch.randn(6, 3), torch.randn(7, 3), *lt),
                     ValueError, rf"a: expected 5 rows, got shape {_shape(6, 3)}"),
    "sddmm_b_rows": ("csr_sddmm", lambda lt: (torch.randn(5, 3), torch.randn(4, 3), *lt),
                     ValueError, rf"b: expected 7 rows, got shape {_shape(4, 3)}"),
    "sddmm_1d": ("csr_sddmm", lambda lt: (torch.randn(5), torch.randn(7), *lt),
                 ValueError, r"expected (a )?2-D \(features, batch\) tensors?"),
}
BSR_OP_ERRORS = {
    # BSR spmm: values (6, 2, 3), dense (12, B)
    "bspmm_values_2d": ("bsr_spmm", lambda lt: (torch.randn(6, 6), *lt, torch.randn(12, 3)),
                        ValueError, rf"values: expected \(nnzb=6, bh, bw\), got shape {_shape(6, 6)}"),
    "bspmm_values_nnzb": ("bsr_spmm", lambda lt: (torch.randn(5, 2, 3), *lt, torch.randn(12, 3)),
                          ValueError, rf"values: expected \(nnzb=6, bh, bw\), got shape {_shape(5, 2, 3)}"),
    "bspmm_values_int": ("bsr_spmm", lambda lt: (torch.ones(6, 2, 3, dtype=torch.int32), *lt, torch.randn(12, 3)),
                         TypeError, rf"values: expected {_FLOATS}, got {_dtype('int32', 'Int')}"),
    "bspmm_dense_rows": ("bsr_spmm", lambda lt: (torch.randn(6, 2, 3), *lt, torch.randn(13, 3)),
                         ValueError, rf"dense: expected 12 rows, got shape {_shape(13, 3)}"),
    "bspmm_dense_dtype": ("bsr_spmm", lambda lt: (torch.randn(6, 2, 3), *lt, torch.randn(12, 3).double()),
                          TypeError, rf"dense: expected dtype {_dtype('float32', 'Float')}"),
    # BSR sddmm: a (3*bh, B), b (4*bw, B)
    "bsddmm_a_split": ("bsr_sddmm", lambda lt: (torch.randn(7, 3), torch.randn(12, 3), *lt),
                       ValueError, r"a: 7 rows do not split into 3 block rows"),
    "bsddmm_b_split": ("bsr_sddmm", lambda lt: (torch.randn(6, 3), torch.randn(13, 3), *lt),
                       ValueError, r"b: 13 rows do not split into 4 block (rows|columns)"),
    "bsddmm_batch": ("bsr_sddmm", lambda lt: (torch.randn(6, 3), torch.randn(12, 2), *lt),
                     ValueError, r"a, b: batch sizes differ: 3 and 2"),
    "bsddmm_dtype": ("bsr_sddmm", lambda lt: (torch.randn(6, 3), torch.randn(12, 3).double(), *lt),
                     TypeError, rf"b: expected dtype {_dtype('float32', 'Float')}"),
    "bsddmm_1d": ("bsr_sddmm", lambda lt: (torch.randn(6), torch.randn(12), *lt),
                  ValueError, r"a, b: expected 2-D \(features, batch\) tensors, got shapes"),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(OP_ERRORS) + list(BSR_OP_ERRORS))
def test_op_argument_errors(case, impl):
    name, build, exc, message = {**OP_ERRORS, **BSR_OP_ERRORS}[case]
    lt = _csr() if name.startswith("csr") else _bsr()
    with pytest.raises(exc, match=message):
        IMPLS[impl][name](*build(lt))


# ----------------------------------------------------------------------------- corrupted layouts (C++ op)

def _corrupt(lt, what):
    ro, ci, tro, tci, tp, tpi = (t.clone() for t in lt)
    n_cols = tro.numel() - 1
    if what == "col_out_of_range":
        ci[-1] = n_cols
    elif what == "col_huge":
        ci[0] = 2**31 - 1
    elif what == "col_negative":
        ci[0] = -5
    elif what == "offsets_end_below_nnz":
        ro[-1] = ci.numel() - 1
    elif what == "offsets_end_above_nnz":
        ro[-1] = ci.numel() + 100
    elif what == "offsets_start_nonzero":
        ro[0] = 1
    elif what == "offsets_decreasing":
        ro[2] = int(ro[3]) + 1 if int(ro[3]) + 1 <= ci.numel() else int(ro[3])
        ro[3] = int(ro[2]) - 1
    elif what == "offsets_negative":
        ro[1] = -1000
    return ro, ci, tro, tci, tp, tpi


CORRUPTIONS = {
    "col_out_of_range": r"col_indices: expected indices in \[0, \d+\), got range",
    "col_huge": r"col_indices: expected indices in \[0, \d+\), got range",
    "col_negative": r"col_indices: expected indices in \[0, \d+\), got range \[-5,",
    "offsets_end_below_nnz": r"row_offsets: expected to run from 0 to nnz=\d+, got 0\.\.\d+",
    "offsets_end_above_nnz": r"row_offsets: expected to run from 0 to nnz=\d+, got 0\.\.\d+",
    "offsets_start_nonzero": r"row_offsets: expected to run from 0 to nnz=\d+, got 1\.\.",
    "offsets_decreasing": r"row_offsets: decreases at row \d+",
    "offsets_negative": r"row_offsets: decreases at row 0",
}

needs_ext = pytest.mark.skipif(not _extension.AVAILABLE, reason=f"compiled extension not loaded: "
                                                                 f"{_extension.LOAD_ERROR}")


@needs_ext
@pytest.mark.parametrize("name", ["csr_spmm", "csr_sddmm", "bsr_spmm", "bsr_sddmm"])
@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupted_layout_raises_value_error_in_cpp_op(what, name):
    if name.startswith("csr"):
        layout = CSRLayout.from_mask(exact_mask((6, 9), 0.4))
        values, n_rows, n_cols = torch.randn(layout.nnz), 6, 9
    else:
        layout = BSRLayout.from_mask(block_mask((6, 9), (2, 2), 0.4), (2, 2))
        values, n_rows, n_cols = torch.randn(layout.block.nnz, 2, 2), 12, 18
    bad = _corrupt(layout.tensors(), what)
    op = IMPLS["op"][name]
    with pytest.raises(ValueError, match=CORRUPTIONS[what]):
        if name.endswith("spmm"):
            op(values, *bad, torch.randn(n_cols, 5))
        else:
            op(torch.randn(n_rows, 5), torch.randn(n_cols, 5), *bad)


@needs_ext
def test_corrupted_transpose_half_caught_in_backward():
    """The transpose half (t_*) is what the input gradient walks: a corrupt one fails in backward, cleanly."""
    layout = CSRLayout.from_mask(exact_mask((6, 9), 0.4))
    lt = list(layout.tensors())
    lt[3] = lt[3].clone()
    lt[3][0] = 6  # t_col_indices indexes rows of W: valid range [0, 6)
    values = torch.randn(layout.nnz, requires_grad=True)
    dense = torch.randn(9, 5, requires_grad=True)
    out = torch.ops.sparsekern.csr_spmm(values, *lt, dense)
    with pytest.raises(ValueError, match=r"col_indices: expected indices in \[0, 6\), got range \[0, 6\]"):
        out.sum().backward()


@pytest.mark.parametrize("name", ["csr_spmm", "csr_sddmm"])
@pytest.mark.parametrize("what", ["col_out_of_range", "col_huge", "col_negative", "offsets_end_above_nnz"])
def test_corrupted_layout_in_reference_raises(what, name):
    """The reference fallback (what runs without the extension, and on devices without a compiled kernel) does
    not promise a ValueError here, but it must raise rather than crash or silently return a wrong result."""
    layout = CSRLayout.from_mask(exact_mask((6, 9), 0.4))
    bad = _corrupt(layout.tensors(), what)
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        if name == "csr_spmm":
            IMPLS["reference"][name](torch.randn(layout.nnz), *bad, torch.randn(9, 5))
        else:
            IMPLS["reference"][name](torch.randn(6, 5), torch.randn(9, 5), *bad)
