"""permute (kept values into the transposed layout's order) and the register-block paths of transpose."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from sparsekern import CSRLayout, _ops
from sparsekern.masks import random_mask

DTYPES = [torch.float32, torch.float64]


def _perm_pair(n, seed=0):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm, torch.argsort(perm)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (17,), (100_003,), (9, 4, 4), (5, 3, 2), (0, 2, 2)], ids=str)
def test_permute_matches_index_select(shape, dtype):
    values = torch.randn(shape, dtype=dtype)
    perm, perm_inv = _perm_pair(shape[0])
    out = _ops.permute(values, perm, perm_inv)
    assert out.is_contiguous() and torch.equal(out, values.index_select(0, perm))
    assert torch.equal(_ops.permute(out, perm_inv, perm), values)  # the inverse undoes it


def test_permute_of_a_layout_gives_csc_order():
    mask = random_mask((13, 29), 0.7)
    layout = CSRLayout.from_mask(mask)
    dense = torch.randn(13, 29) * mask
    values = dense[mask]
    assert torch.equal(_ops.permute(values, layout.t_perm, layout.t_perm_inv), dense.t()[mask.t()])


def test_permute_non_contiguous_values():
    values = torch.randn(40)[::2]
    perm, perm_inv = _perm_pair(20)
    assert torch.equal(_ops.permute(values, perm, perm_inv), values[perm])


def test_permute_gradients():
    values = torch.randn(11, dtype=torch.float64, requires_grad=True)
    perm, perm_inv = _perm_pair(11)
    assert gradcheck(lambda v: _ops.permute(v, perm, perm_inv), (values,))
    assert gradgradcheck(lambda v: _ops.permute(v, perm, perm_inv), (values,))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_permute_opcheck(requires_grad):
    perm, perm_inv = _perm_pair(12)
    torch.library.opcheck(_ops.permute, (torch.randn(12, requires_grad=requires_grad), perm, perm_inv))
    torch.library.opcheck(_ops.permute, (torch.randn(12, 2, 2, requires_grad=requires_grad), perm, perm_inv))


@pytest.mark.parametrize("bad,error,match", [
    (lambda v, p, q: (v, p + 100, q), ValueError, r"perm: expected indices in \[0, 8\), got 10"),
    (lambda v, p, q: (v, -p - 1, q), ValueError, r"perm: expected indices in \[0, 8\)"),
    (lambda v, p, q: (v, p[:5], q), ValueError, "perm, perm_inv: expected 8 entries each"),
    (lambda v, p, q: (v, p.int(), q), TypeError, "perm: expected a 1-D"),
    (lambda v, p, q: (v, p, q.view(2, 4)), TypeError, "perm_inv: expected a 1-D"),
    (lambda v, p, q: (v.int(), p, q), TypeError,  # Python's message, or the CPU kernel's
     "values: expected float32(, float64, float16 or bfloat16| or float64)"),
])
def test_permute_bad_input(bad, error, match):
    perm, perm_inv = _perm_pair(8)
    args = bad(torch.randn(8), perm, perm_inv)
    if "got 10" in match:  # one index out of range, the rest a valid permutation
        args = (args[0], torch.where(perm == 2, torch.tensor(10), perm), args[2])
    with pytest.raises(error, match=match):
        _ops.permute(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("position", [0, 7, 8, 517, 998, 999])
@pytest.mark.parametrize("index", [1000, -1, 2**40])
def test_permute_bad_index_anywhere(position, index, dtype):
    """The vector gather (8 indices at a time) and the scalar tail both check every index."""
    perm, perm_inv = _perm_pair(1000)
    perm[position] = index
    with pytest.raises(ValueError, match=rf"perm: expected indices in \[0, 1000\), got {index}"):
        _ops.permute(torch.randn(1000, dtype=dtype), perm, perm_inv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    [(33, 47), (16, 16), (8, 8), (48, 17), (17, 48), (128, 4096), (24, 40), (8, 24), (12, 9), (4, 4), (14, 9), (7, 13)],
    ids=str,
)
def test_transpose_row_strided_input(shape, dtype):
    """A row-sliced input (row stride > columns, unit column stride) takes the register-block path.

    The shapes cover whole and partial tiles of the AVX-512 (16x16 float, 8x8 double) and AVX2 (8x8 float,
    4x4 double, two blocks stacked per tile) register blocks, with rows and columns left over for the
    scalar edges."""
    base = torch.randn(shape[0], shape[1] + 9, dtype=dtype)
    x = base[:, 3:3 + shape[1]]
    assert torch.equal(_ops.transpose(x), x.t().contiguous())
    assert torch.equal(_ops.transpose(base[::2]), base[::2].t().contiguous())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 16, 16), (5, 2, 3), (7, 8, 8), (3, 17, 5), (0, 4, 4)], ids=str)
def test_permute_transposed_blocks(shape, dtype):
    values = torch.randn(shape, dtype=dtype)
    perm, perm_inv = _perm_pair(shape[0])
    out = _ops.permute(values, perm, perm_inv, True)
    assert out.shape == (shape[0], shape[2], shape[1]) and out.is_contiguous()
    assert torch.equal(out, values[perm].transpose(1, 2))
    assert torch.equal(_ops.permute(out, perm_inv, perm, True), values)


def test_permute_transposed_blocks_gradients_and_opcheck():
    values = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    perm, perm_inv = _perm_pair(6)
    assert gradcheck(lambda v: _ops.permute(v, perm, perm_inv, True), (values,))
    assert gradgradcheck(lambda v: _ops.permute(v, perm, perm_inv, True), (values,))
    torch.library.opcheck(_ops.permute, (values, perm, perm_inv, True))


def test_permute_transposed_blocks_needs_blocks():
    perm, perm_inv = _perm_pair(8)
    with pytest.raises(ValueError, match=r"values: expected \(n, bh, bw\) blocks with transpose_blocks"):
        _ops.permute(torch.randn(8), perm, perm_inv, True)
