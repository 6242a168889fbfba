"""THE op registry: every sparsekern schema, fake (meta) kernel and autograd formula lives here.

The op set is closed: the backward of each op is written with the ops themselves, so first and higher
derivatives, ``torch.compile`` and the "all three GEMMs sparse" property come for free.

    csr_spmm(values, layout..., dense)  -> S @ dense           (n_rows, B)
    csr_sddmm(a, b, layout...)          -> (a @ bᵀ)[kept]       (nnz,)
    bsr_spmm / bsr_sddmm                   the same with kept blocks; values (nnzb, bh, bw)
    csr_spmm_bt / bsr_spmm_bt(values, layout..., dense, bias?) -> (S @ dense)ᵀ + bias   (B, n_rows): the
                                           layer's output layout, transposed in cache by the kernel
    csr_spmm_sddmm_bt(values, layout..., dense, other)   -> ((S @ dense)ᵀ, (other @ denseᵀ)[kept]) in one
                                           pass over the entries: a CSR layer's whole backward
    csr_linear / bsr_linear(x, values, layout..., bias?)  -> (x Wᵀ + bias, xᵀ): a whole sparse layer on
                                           batch-major x (B, in); xᵀ is returned for the backward's SDDMM
    csr_to_dense(values, row_offsets, col_indices, n_cols)   -> the dense matrix   } dense fallback
    csr_from_dense(dense, row_offsets, col_indices)          -> dense[kept]        } and export only
    mask_expand_(values, row_offsets, mask, dense)           -> () in place         } dense fallback's
    mask_compress(dense, row_offsets, mask)                  -> dense[mask]         } per-step path
    transpose(x)                                             -> xᵀ (layer boundaries), rows contiguous, row
                                                                stride feature_major_stride(): see there
    permute(values, perm, perm_inv, transpose_blocks)        -> values[perm] (values in CSC order), each
                                                                (bh, bw) block transposed if asked

``layout...`` are the six index tensors of ``CSRLayout.tensors()`` (for BSR: of the block grid):
row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv. Dense operands are
feature-major ``(features, B)``; see ``reference.py`` for the exact definitions.

The pure-PyTorch reference is registered for every device (CompositeExplicitAutograd); the compiled
extension, when present, overrides it per device (``TORCH_LIBRARY_IMPL(sparsekern, CPU, m)``), and with
triton installed ``sparsekern/triton/dispatch.py`` registers Triton kernels for the CUDA key of bsr_spmm,
bsr_spmm_bt and bsr_sddmm (imported at the end of this file).

Dtypes: float32 and float64 everywhere, float16 and bfloat16 too as far as these checks go (the Triton CUDA
kernels take them; the CPU C++ kernels raise their own TypeError for them; the reference computes them with
float32 accumulation).
"""
from __future__ import annotations

import torch

from . import reference
from .check_once import check_once
from .layout import check_compressed

_LAYOUT_ARGS = ("Tensor row_offsets, Tensor col_indices, Tensor t_row_offsets, Tensor t_col_indices, "
                "Tensor t_perm, Tensor t_perm_inv")

SCHEMAS = {
    "csr_spmm": f"(Tensor values, {_LAYOUT_ARGS}, Tensor dense) -> Tensor",
    "csr_sddmm": f"(Tensor a, Tensor b, {_LAYOUT_ARGS}) -> Tensor",
    "bsr_spmm": f"(Tensor values, {_LAYOUT_ARGS}, Tensor dense) -> Tensor",
    "bsr_sddmm": f"(Tensor a, Tensor b, {_LAYOUT_ARGS}) -> Tensor",
    "csr_spmm_bt": f"(Tensor values, {_LAYOUT_ARGS}, Tensor dense, Tensor? bias) -> Tensor",
    "bsr_spmm_bt": f"(Tensor values, {_LAYOUT_ARGS}, Tensor dense, Tensor? bias) -> Tensor",
    "csr_spmm_sddmm_bt": f"(Tensor values, {_LAYOUT_ARGS}, Tensor dense, Tensor other) -> (Tensor, Tensor)",
    "csr_linear": f"(Tensor x, Tensor values, {_LAYOUT_ARGS}, Tensor? bias) -> (Tensor, Tensor)",
    "bsr_linear": f"(Tensor x, Tensor values, {_LAYOUT_ARGS}, Tensor? bias) -> (Tensor, Tensor)",
    "csr_to_dense": "(Tensor values, Tensor row_offsets, Tensor col_indices, int n_cols) -> Tensor",
    "csr_from_dense": "(Tensor dense, Tensor row_offsets, Tensor col_indices) -> Tensor",
    "mask_expand_": "(Tensor values, Tensor row_offsets, Tensor mask, Tensor(a!) dense) -> ()",
    "mask_compress": "(Tensor dense, Tensor row_offsets, Tensor mask) -> Tensor",
    "transpose": "(Tensor x) -> Tensor",
    "permute": "(Tensor values, Tensor perm, Tensor perm_inv, bool transpose_blocks=False) -> Tensor",
}

_lib = torch.library.Library("sparsekern", "DEF")
for _name, _schema in SCHEMAS.items():
    _lib.define(_name + _schema)


# ----------------------------------------------------------------------------------------------- checks
# Shared by the reference and the fakes, so a bad call fails the same way eagerly and under compile.

def _check_layout(row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    for name, t in (("row_offsets", row_offsets), ("col_indices", col_indices),
                    ("t_row_offsets", t_row_offsets), ("t_col_indices", t_col_indices)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise TypeError(f"{name}: expected a 1-D int32 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    for name, t in (("t_perm", t_perm), ("t_perm_inv", t_perm_inv)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name}: expected a 1-D int64 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    nnz = col_indices.shape[0]
    if t_col_indices.shape[0] != nnz or t_perm.shape[0] != nnz or t_perm_inv.shape[0] != nnz:
        raise ValueError(f"layout: col_indices, t_col_indices, t_perm and t_perm_inv must all have nnz="
                         f"{nnz} entries, got {t_col_indices.shape[0]}, {t_perm.shape[0]}, {t_perm_inv.shape[0]}")
    return row_offsets.shape[0] - 1, t_row_offsets.shape[0] - 1, nnz


def _check_dense(name, t, dtype, rows):
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (features, batch) tensor, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (same as the values), got {t.dtype}")
    if t.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(t.shape)}")


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_values_dtype(name, t):
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_spmm(values, layout, dense, block):
    n_rows, n_cols, nnz = _check_layout(*layout)
    _check_values_dtype("values", values)
    bh = bw = 1
    if block:
        if values.dim() != 3 or values.shape[0] != nnz:
            raise ValueError(f"values: expected (nnzb={nnz}, bh, bw), got shape {tuple(values.shape)}")
        bh, bw = values.shape[1], values.shape[2]
    elif values.dim() != 1 or values.shape[0] != nnz:
        raise ValueError(f"values: expected shape ({nnz},), got {tuple(values.shape)}")
    _check_dense("dense", dense, values.dtype, n_cols * bw)
    return n_rows * bh


def _check_spmm_bt(values, layout, dense, bias, block):
    n_rows = _check_spmm(values, layout, dense, block)
    if bias is not None:
        if bias.dtype != values.dtype:
            raise TypeError(f"bias: expected dtype {values.dtype}, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != n_rows:
            raise ValueError(f"bias: expected shape ({n_rows},), got {tuple(bias.shape)}")
        if bias.device != values.device:
            raise ValueError(f"bias: expected a tensor on {values.device}, got one on {bias.device}")
    return n_rows


def _check_sddmm(a, b, layout, block):
    n_rows, n_cols, nnz = _check_layout(*layout)
    _check_values_dtype("a", a)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"a, b: expected 2-D (features, batch) tensors, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected dtype {a.dtype} (same as a), got {b.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a, b: batch sizes differ: {a.shape[1]} and {b.shape[1]}")
    if not block:
        _check_dense("a", a, a.dtype, n_rows)
        _check_dense("b", b, a.dtype, n_cols)
        return (nnz,)
    for name, t, n in (("a", a, n_rows), ("b", b, n_cols)):
        if n == 0 or t.shape[0] % n:
            raise ValueError(f"{name}: {t.shape[0]} rows do not split into {n} block rows")
    return (nnz, a.shape[0] // n_rows, b.shape[0] // n_cols)


def _check_layout_values(row_offsets, col_indices, t_row_offsets, t_col_indices, *_):
    """The reference reads through the layout too: a corrupt one must raise there as it does in the C++
    kernels (checks.h), so both halves get the layout module's own check."""
    n_rows, n_cols = row_offsets.shape[0] - 1, t_row_offsets.shape[0] - 1
    check_compressed("row_offsets", "col_indices", row_offsets, col_indices, n_rows, n_cols)
    check_compressed("t_row_offsets", "t_col_indices", t_row_offsets, t_col_indices, n_cols, n_rows)


# ----------------------------------------------------------------------------- reference (all devices)

@torch.library.impl(_lib, "csr_spmm", "CompositeExplicitAutograd")
def _csr_spmm_reference(values, *args):
    *layout, dense = args
    _check_spmm(values, layout, dense, block=False)
    _check_layout_values(*layout)
    return reference.csr_spmm(values, *layout, dense)


@torch.library.impl(_lib, "csr_sddmm", "CompositeExplicitAutograd")
def _csr_sddmm_reference(a, b, *layout):
    _check_sddmm(a, b, layout, block=False)
    _check_layout_values(*layout)
    return reference.csr_sddmm(a, b, *layout)


@torch.library.impl(_lib, "bsr_spmm", "CompositeExplicitAutograd")
def _bsr_spmm_reference(values, *args):
    *layout, dense = args
    _check_spmm(values, layout, dense, block=True)
    _check_layout_values(*layout)
    return reference.bsr_spmm(values, *layout, dense)


@torch.library.impl(_lib, "bsr_sddmm", "CompositeExplicitAutograd")
def _bsr_sddmm_reference(a, b, *layout):
    _check_sddmm(a, b, layout, block=True)
    _check_layout_values(*layout)
    return reference.bsr_sddmm(a, b, *layout)


def _spmm_bt_reference(block):
    spmm = reference.bsr_spmm if block else reference.csr_spmm

    def impl(values, *args):
        *layout, dense, bias = args
        _check_spmm_bt(values, layout, dense, bias, block)
        _check_layout_values(*layout)
        out = spmm(values, *layout, dense).t().contiguous()
        return out + bias if bias is not None else out
    return impl


torch.library.impl(_lib, "csr_spmm_bt", "CompositeExplicitAutograd")(_spmm_bt_reference(False))
torch.library.impl(_lib, "bsr_spmm_bt", "CompositeExplicitAutograd")(_spmm_bt_reference(True))


def _check_spmm_sddmm(values, layout, dense, other):
    n_rows = _check_spmm(values, layout, dense, block=False)
    _check_dense("other", other, values.dtype, n_rows)
    if other.shape[1] != dense.shape[1]:
        raise ValueError(f"dense, other: batch sizes differ: {dense.shape[1]} and {other.shape[1]}")
    return n_rows


@torch.library.impl(_lib, "csr_spmm_sddmm_bt", "CompositeExplicitAutograd")
def _csr_spmm_sddmm_bt_reference(values, *args):
    *layout, dense, other = args
    _check_spmm_sddmm(values, layout, dense, other)
    _check_layout_values(*layout)
    out = reference.csr_spmm(values, *layout, dense).t().contiguous()
    return out, reference.csr_sddmm(other, dense, *layout)


def _check_convert(row_offsets, col_indices, nnz_name, nnz, float_name, float_tensor):
    for name, t in (("row_offsets", row_offsets), ("col_indices", col_indices)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise TypeError(f"{name}: expected a 1-D int32 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    _check_values_dtype(float_name, float_tensor)
    if nnz is not None and nnz != col_indices.shape[0]:
        raise ValueError(f"{nnz_name}: expected {col_indices.shape[0]} entries, got {nnz}")


@torch.library.impl(_lib, "csr_to_dense", "CompositeExplicitAutograd")
def _csr_to_dense_reference(values, row_offsets, col_indices, n_cols):
    _check_convert(row_offsets, col_indices, "values", values.numel(), "values", values)
    return reference.dense_from_csr(values, row_offsets, col_indices, n_cols)


@torch.library.impl(_lib, "csr_from_dense", "CompositeExplicitAutograd")
def _csr_from_dense_reference(dense, row_offsets, col_indices):
    _check_convert(row_offsets, col_indices, "", None, "dense", dense)
    return reference.csr_values_from_dense(dense, row_offsets, col_indices)


def _check_mask_args(row_offsets, mask, float_name, float_tensor):
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise TypeError(f"mask: expected a 2-D bool tensor, got {mask.dtype} with shape {tuple(mask.shape)}")
    if row_offsets.dtype != torch.int32 or row_offsets.shape != (mask.shape[0] + 1,):
        raise ValueError(f"row_offsets: expected an int32 tensor of {mask.shape[0] + 1} entries, got "
                         f"{row_offsets.dtype} with shape {tuple(row_offsets.shape)}")
    _check_values_dtype(float_name, float_tensor)


def _check_mask_matches_offsets(row_offsets, mask):
    counts = torch.diff(row_offsets.long())
    if int(row_offsets[0]) != 0 or not torch.equal(counts, mask.sum(1)):
        raise ValueError("row_offsets: some row's entry count differs from what the mask keeps (they must "
                         "describe the same mask)")


def _check_mask_expand(values, row_offsets, mask, dense):
    _check_mask_args(row_offsets, mask, "values", values)
    if values.dtype != dense.dtype:
        raise TypeError(f"values: expected dtype {dense.dtype} (the dense buffer's), got {values.dtype}")


@torch.library.impl(_lib, "mask_expand_", "CompositeExplicitAutograd")
def _mask_expand_reference(values, row_offsets, mask, dense):
    _check_mask_expand(values, row_offsets, mask, dense)
    _check_mask_matches_offsets(row_offsets, mask)
    with torch.no_grad():
        dense.zero_()
        dense[mask] = values


@torch.library.impl(_lib, "mask_compress", "CompositeExplicitAutograd")
def _mask_compress_reference(dense, row_offsets, mask):
    _check_mask_args(row_offsets, mask, "dense", dense)
    _check_mask_matches_offsets(row_offsets, mask)
    return dense[mask]


def _check_transpose(x):
    _check_values_dtype("x", x)
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor, got shape {tuple(x.shape)}")


_CACHE_LINE_BYTES = 64


def feature_major_stride(batch: int, element_size: int) -> int:
    """Row stride (elements) of ``transpose``'s (features, batch) output.

    Rows of 257 B to 1 KB are padded to an odd number of cache lines: the CPU kernels read one batch slice
    per kept weight from random rows, and a stride that is a multiple of a large power of two (1 KB for a
    batch of 256 floats) maps those slices into a fraction of the cache sets, which the kernels would
    otherwise avoid with an extra packing pass (csrc/cpu/feature_major.h has the same rule and the figures).
    """
    size = batch * element_size
    if size <= 4 * _CACHE_LINE_BYTES or size > 16 * _CACHE_LINE_BYTES:
        return batch
    lines = -(-size // _CACHE_LINE_BYTES)
    lines += 1 - lines % 2
    return lines * _CACHE_LINE_BYTES // element_size


def _empty_feature_major(features, batch, like):
    """An uninitialised (features, batch) tensor with transpose's row stride."""
    return like.new_empty_strided((features, batch), (feature_major_stride(batch, like.element_size()), 1))


@torch.library.impl(_lib, "transpose", "CompositeExplicitAutograd")
def _transpose_reference(x):
    _check_transpose(x)
    return _empty_feature_major(x.shape[1], x.shape[0], x).copy_(x.t())


def _check_permute(values, perm, perm_inv, transpose_blocks):
    _check_values_dtype("values", values)
    if values.dim() == 0:
        raise ValueError("values: expected at least one dimension, got a scalar")
    if transpose_blocks and values.dim() != 3:
        raise ValueError(f"values: expected (n, bh, bw) blocks with transpose_blocks, got shape "
                         f"{tuple(values.shape)}")
    for name, t in (("perm", perm), ("perm_inv", perm_inv)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name}: expected a 1-D int64 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    if perm.shape[0] != values.shape[0] or perm_inv.shape[0] != values.shape[0]:
        raise ValueError(f"perm, perm_inv: expected {values.shape[0]} entries each (values.shape[0]), got "
                         f"{perm.shape[0]} and {perm_inv.shape[0]}")


@torch.library.impl(_lib, "permute", "CompositeExplicitAutograd")
def _permute_reference(values, perm, perm_inv, transpose_blocks=False):
    _check_permute(values, perm, perm_inv, transpose_blocks)

    def check_range():
        outside = (perm < 0) | (perm >= values.shape[0])
        if bool(outside.any()):
            raise ValueError(f"perm: expected indices in [0, {values.shape[0]}), got {int(perm[outside][0])}")
    # On a GPU the range check syncs: once per permutation storage (check_once.py), not every training step.
    if perm.device.type == "cpu":
        check_range()
    else:
        check_once("permute", (perm,), check_range)
    out = values.index_select(0, perm)
    return out.transpose(1, 2).contiguous() if transpose_blocks else out


# ------------------------------------------------------------------------------------------------ fakes

def _fake_spmm(block):
    def fake(values, *args):
        *layout, dense = args
        return dense.new_empty(_check_spmm(values, layout, dense, block), dense.shape[1])
    return fake


def _fake_sddmm(block):
    def fake(a, b, *layout):
        return a.new_empty(_check_sddmm(a, b, layout, block))
    return fake


torch.library.register_fake("sparsekern::csr_spmm", _fake_spmm(False), lib=_lib)
torch.library.register_fake("sparsekern::bsr_spmm", _fake_spmm(True), lib=_lib)
torch.library.register_fake("sparsekern::csr_sddmm", _fake_sddmm(False), lib=_lib)
torch.library.register_fake("sparsekern::bsr_sddmm", _fake_sddmm(True), lib=_lib)


def _fake_spmm_bt(block):
    def fake(values, *args):
        *layout, dense, bias = args
        return dense.new_empty(dense.shape[1], _check_spmm_bt(values, layout, dense, bias, block))
    return fake


torch.library.register_fake("sparsekern::csr_spmm_bt", _fake_spmm_bt(False), lib=_lib)
torch.library.register_fake("sparsekern::bsr_spmm_bt", _fake_spmm_bt(True), lib=_lib)


@torch.library.register_fake("sparsekern::csr_spmm_sddmm_bt", lib=_lib)
def _fake_spmm_sddmm_bt(values, *args):
    *layout, dense, other = args
    n_rows = _check_spmm_sddmm(values, layout, dense, other)
    return dense.new_empty(dense.shape[1], n_rows), dense.new_empty(values.shape[0])


@torch.library.register_fake("sparsekern::csr_to_dense", lib=_lib)
def _fake_to_dense(values, row_offsets, col_indices, n_cols):
    _check_convert(row_offsets, col_indices, "values", values.shape[0], "values", values)
    return values.new_empty(row_offsets.shape[0] - 1, n_cols)


@torch.library.register_fake("sparsekern::csr_from_dense", lib=_lib)
def _fake_from_dense(dense, row_offsets, col_indices):
    _check_convert(row_offsets, col_indices, "", None, "dense", dense)
    return dense.new_empty(col_indices.shape[0])


@torch.library.register_fake("sparsekern::mask_expand_", lib=_lib)
def _fake_mask_expand(values, row_offsets, mask, dense):
    _check_mask_expand(values, row_offsets, mask, dense)


@torch.library.register_fake("sparsekern::mask_compress", lib=_lib)
def _fake_mask_compress(dense, row_offsets, mask):
    _check_mask_args(row_offsets, mask, "dense", dense)
    return dense.new_empty(torch.library.get_ctx().new_dynamic_size())


@torch.library.register_fake("sparsekern::transpose", lib=_lib)
def _fake_transpose(x):
    _check_transpose(x)
    return _empty_feature_major(x.shape[1], x.shape[0], x)


@torch.library.register_fake("sparsekern::permute", lib=_lib)
def _fake_permute(values, perm, perm_inv, transpose_blocks=False):
    _check_permute(values, perm, perm_inv, transpose_blocks)
    if transpose_blocks:
        return values.new_empty(values.shape[0], values.shape[2], values.shape[1])
    return torch.empty_like(values, memory_format=torch.contiguous_format)


csr_spmm = torch.ops.sparsekern.csr_spmm.default
csr_sddmm = torch.ops.sparsekern.csr_sddmm.default
bsr_spmm = torch.ops.sparsekern.bsr_spmm.default
bsr_sddmm = torch.ops.sparsekern.bsr_sddmm.default
csr_spmm_bt = torch.ops.sparsekern.csr_spmm_bt.default
csr_spmm_sddmm_bt = torch.ops.sparsekern.csr_spmm_sddmm_bt.default
bsr_spmm_bt = torch.ops.sparsekern.bsr_spmm_bt.default
csr_to_dense = torch.ops.sparsekern.csr_to_dense.default
csr_from_dense = torch.ops.sparsekern.csr_from_dense.default
mask_expand_ = torch.ops.sparsekern.mask_expand_.default
mask_compress = torch.ops.sparsekern.mask_compress.default
transpose = torch.ops.sparsekern.transpose.default
permute = torch.ops.sparsekern.permute.default


# ------------------------------------------------------------------------------------------ layer ops
# A whole layer in one op, so its backward hands dx back batch-major straight from the kernel: with a
# transpose(x) node in front of *_spmm_bt, autograd would want dxᵀ and one more transpose pass. The
# implementation composes the ops above, so each device runs their kernels.

def _check_linear_input(x, values, layout, bias, block):
    _check_values_dtype("x", x)
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D (batch, features) tensor, got shape {tuple(x.shape)}")
    _, n_cols, _ = _check_layout(*layout)
    features = n_cols * (values.shape[2] if block and values.dim() == 3 else 1)
    if x.shape[1] != features:
        raise ValueError(f"x: expected {features} features (columns), got shape {tuple(x.shape)}")
    return _check_spmm_bt(values, layout, x.t(), bias, block)


def _linear_impl(spmm_bt, block):
    def impl(x, values, *args):
        *layout, bias = args
        _check_linear_input(x, values, layout, bias, block)
        xt = transpose(x)
        return spmm_bt(values, *layout, xt, bias), xt
    return impl


def _fake_linear(block):
    def fake(x, values, *args):
        *layout, bias = args
        n_rows = _check_linear_input(x, values, layout, bias, block)
        return x.new_empty(x.shape[0], n_rows), _empty_feature_major(x.shape[1], x.shape[0], x)
    return fake


# --------------------------------------------------------------------------------------------- autograd
# Transposed layout: swap the CSR and CSC halves, and the permutation with its inverse.

def _transposed(layout):
    row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv = layout
    return (t_row_offsets, t_col_indices, row_offsets, col_indices, t_perm_inv, t_perm)


def _transposed_values(values, layout, block):
    return permute(values, layout[4], layout[5], block)


def _spmm_autograd(spmm, sddmm, block):
    def setup_context(ctx, inputs, output):
        values, *layout, dense = inputs
        ctx.save_for_backward(values, dense, *layout)

    def backward(ctx, grad):
        values, dense, *layout = ctx.saved_tensors
        grad = grad.contiguous()  # one copy, shared by both gradients below
        d_values = d_dense = None
        if ctx.needs_input_grad[-1]:
            d_dense = spmm(_transposed_values(values, layout, block), *_transposed(layout), grad)
        if ctx.needs_input_grad[0]:
            # A block grid with no rows or no columns gives bsr_sddmm no way to derive bh/bw from a and b;
            # its gradient is empty anyway.
            empty_grid = block and (grad.shape[0] == 0 or dense.shape[0] == 0)
            d_values = torch.zeros_like(values) if empty_grid else sddmm(grad, dense, *layout)
        return (d_values, *([None] * 6), d_dense)

    return backward, setup_context


def _sddmm_autograd(spmm, block):
    def setup_context(ctx, inputs, output):
        a, b, *layout = inputs
        ctx.save_for_backward(a, b, *layout)

    def backward(ctx, grad):
        a, b, *layout = ctx.saved_tensors
        grad = grad.contiguous()
        d_a = d_b = None
        if ctx.needs_input_grad[0]:
            d_a = spmm(grad, *layout, b)
        if ctx.needs_input_grad[1]:
            d_b = spmm(_transposed_values(grad, layout, block), *_transposed(layout), a)
        return (d_a, d_b, *([None] * 6))

    return backward, setup_context


def _spmm_bt_autograd(spmm, sddmm, block):
    """y = (S @ dense)ᵀ + bias: the spmm gradients of gradᵀ, and the batch sum for the bias."""
    def setup_context(ctx, inputs, output):
        values, *layout, dense, bias = inputs
        ctx.save_for_backward(values, dense, *layout)

    def backward(ctx, grad):
        values, dense, *layout = ctx.saved_tensors
        grad_t = transpose(grad)  # (n_rows, B), shared by both sparse gradients
        d_values = d_dense = d_bias = None
        if ctx.needs_input_grad[-2]:
            d_dense = spmm(_transposed_values(values, layout, block), *_transposed(layout), grad_t)
        if ctx.needs_input_grad[0]:
            empty_grid = block and (grad_t.shape[0] == 0 or dense.shape[0] == 0)
            d_values = torch.zeros_like(values) if empty_grid else sddmm(grad_t, dense, *layout)
        if ctx.needs_input_grad[-1]:
            d_bias = grad.sum(0)
        return (d_values, *([None] * 6), d_dense, d_bias)

    return backward, setup_context


def _linear_autograd(spmm_bt, sddmm, block):
    """y = x Wᵀ + b (and xᵀ): dx = (Wᵀ gradᵀ)ᵀ by the batch-major kernel, dW by the SDDMM at kept weights."""
    def setup_context(ctx, inputs, output):
        x, values, *layout, bias = inputs
        ctx.save_for_backward(values, output[1], *layout)
        ctx.n_rows = output[0].shape[1]
        ctx.set_materialize_grads(False)  # xᵀ is usually unused downstream: no zero-filled gradient for it

    def backward(ctx, grad, grad_xt):
        values, xt, *layout = ctx.saved_tensors
        d_x = d_values = d_bias = None
        if grad is None:  # only xᵀ was used downstream
            grad = xt.new_zeros(xt.shape[1], ctx.n_rows)
        grad_t = transpose(grad)  # (out, B), shared by both sparse gradients
        if not block and ctx.needs_input_grad[0] and ctx.needs_input_grad[1] and not torch.is_grad_enabled():
            # Both gradients in one pass over Wᵀ's entries (not differentiable again: double backward,
            # create_graph=True, takes the separate ops below).
            d_x, d_values_t = csr_spmm_sddmm_bt(_transposed_values(values, layout, False), *_transposed(layout),
                                                grad_t, xt)
            d_values = permute(d_values_t, layout[5], layout[4])  # Wᵀ's entry order -> W's
        else:
            if ctx.needs_input_grad[0]:
                d_x = spmm_bt(_transposed_values(values, layout, block), *_transposed(layout), grad_t, None)
            if ctx.needs_input_grad[1]:
                empty_grid = block and (grad_t.shape[0] == 0 or xt.shape[0] == 0)
                d_values = torch.zeros_like(values) if empty_grid else sddmm(grad_t, xt, *layout)
        if d_x is not None and grad_xt is not None:
            d_x = d_x + transpose(grad_xt)
        if ctx.needs_input_grad[-1]:
            d_bias = grad.sum(0)
        return (d_x, d_values, *([None] * 6), d_bias)

    return backward, setup_context


for _op, _spmm_bt, _sddmm, _block in (("csr", csr_spmm_bt, csr_sddmm, False), ("bsr", bsr_spmm_bt, bsr_sddmm, True)):
    torch.library.impl(_lib, f"{_op}_linear", "CompositeExplicitAutograd")(_linear_impl(_spmm_bt, _block))
    torch.library.register_fake(f"sparsekern::{_op}_linear", _fake_linear(_block), lib=_lib)
    _bw, _setup = _linear_autograd(_spmm_bt, _sddmm, _block)
    torch.library.register_autograd(f"sparsekern::{_op}_linear", _bw, setup_context=_setup, lib=_lib)

csr_linear = torch.ops.sparsekern.csr_linear.default
bsr_linear = torch.ops.sparsekern.bsr_linear.default


def _spmm_sddmm_setup(ctx, inputs, output):
    values, *layout, dense, other = inputs
    ctx.save_for_backward(values, dense, other, *layout)
    ctx.set_materialize_grads(False)  # either output may be unused


def _spmm_sddmm_backward(ctx, grad_out, grad_dots):
    """out = (S dense)ᵀ and dots = (other denseᵀ)[kept]: the csr_spmm_bt and csr_sddmm gradients, summed."""
    values, dense, other, *layout = ctx.saved_tensors
    d_values = d_dense = d_other = None
    if grad_out is not None:
        grad_out_t = transpose(grad_out)
        if ctx.needs_input_grad[0]:
            d_values = csr_sddmm(grad_out_t, dense, *layout)
        if ctx.needs_input_grad[-2]:
            d_dense = csr_spmm(_transposed_values(values, layout, False), *_transposed(layout), grad_out_t)
    if grad_dots is not None:
        grad_dots = grad_dots.contiguous()
        if ctx.needs_input_grad[-1]:
            d_other = csr_spmm(grad_dots, *layout, dense)
        if ctx.needs_input_grad[-2]:
            d = csr_spmm(_transposed_values(grad_dots, layout, False), *_transposed(layout), other)
            d_dense = d if d_dense is None else d_dense + d
    return (d_values, *([None] * 6), d_dense, d_other)


torch.library.register_autograd("sparsekern::csr_spmm_sddmm_bt", _spmm_sddmm_backward,
                                setup_context=_spmm_sddmm_setup, lib=_lib)


for _op, _spmm, _sddmm, _block in (("csr", csr_spmm, csr_sddmm, False), ("bsr", bsr_spmm, bsr_sddmm, True)):
    _bw, _setup = _spmm_autograd(_spmm, _sddmm, _block)
    torch.library.register_autograd(f"sparsekern::{_op}_spmm", _bw, setup_context=_setup, lib=_lib)
    _bw, _setup = _sddmm_autograd(_spmm, _block)
    torch.library.register_autograd(f"sparsekern::{_op}_sddmm", _bw, setup_context=_setup, lib=_lib)
    _bw, _setup = _spmm_bt_autograd(_spmm, _sddmm, _block)
    torch.library.register_autograd(f"sparsekern::{_op}_spmm_bt", _bw, setup_context=_setup, lib=_lib)


# csr_to_dense and csr_from_dense are each other's gradient.
def _to_dense_setup(ctx, inputs, output):
    _, row_offsets, col_indices, _ = inputs
    ctx.save_for_backward(row_offsets, col_indices)


def _to_dense_backward(ctx, grad):
    row_offsets, col_indices = ctx.saved_tensors
    return csr_from_dense(grad.contiguous(), row_offsets, col_indices), None, None, None


def _from_dense_setup(ctx, inputs, output):
    dense, row_offsets, col_indices = inputs
    ctx.n_cols = dense.shape[1]
    ctx.save_for_backward(row_offsets, col_indices)


def _from_dense_backward(ctx, grad):
    row_offsets, col_indices = ctx.saved_tensors
    return csr_to_dense(grad.contiguous(), row_offsets, col_indices, ctx.n_cols), None, None


torch.library.register_autograd("sparsekern::csr_to_dense", _to_dense_backward, setup_context=_to_dense_setup,
                                lib=_lib)
torch.library.register_autograd("sparsekern::csr_from_dense", _from_dense_backward,
                                setup_context=_from_dense_setup, lib=_lib)


# transpose is its own gradient.
torch.library.register_autograd("sparsekern::transpose", lambda ctx, grad: transpose(grad),
                                setup_context=lambda ctx, inputs, output: None, lib=_lib)


# permute's gradient is the inverse permutation.
def _permute_setup(ctx, inputs, output):
    _, perm, perm_inv, *transpose_blocks = inputs
    ctx.transpose_blocks = bool(transpose_blocks and transpose_blocks[0])
    ctx.save_for_backward(perm, perm_inv)


def _permute_backward(ctx, grad):
    perm, perm_inv = ctx.saved_tensors
    return permute(grad.contiguous(), perm_inv, perm, ctx.transpose_blocks), None, None, None


torch.library.register_autograd("sparsekern::permute", _permute_backward, setup_context=_permute_setup, lib=_lib)


# The convolution family (its own file; registered on the same library).
from ._ops_conv import (conv_output_size, csr_conv2d, csr_conv2d_input_grad,  # noqa: E402,F401
                        csr_conv2d_weight_grad)
from . import conv_im2col as _conv_im2col  # noqa: E402,F401  (the CSR conv ops on CUDA, lowered onto csr_spmm/sddmm)
from ._ops_conv_bsr import bsr_conv2d, bsr_conv2d_input_grad, bsr_conv2d_weight_grad  # noqa: E402,F401

# The Triton kernels for CUDA tensors (bsr family), when triton is installed; a no-op without it.
from . import triton as _triton  # noqa: E402,F401
