"""The dense fallback's ops (mask_expand_, mask_compress), the layer-boundary transpose, and
the fallback's buffer reuse: every path exact against plain PyTorch, and no stale or shared weight."""
import pytest
import torch
from torch import nn

from sparsekern import CSRLayout, SparseConv2d, SparseLinear, _extension, _ops
from sparsekern.nn import dense_fallback
from sparsekern.masks import random_mask

# Row lengths around the 8- and 16-wide SIMD steps (AVX2 / AVX-512) and their scalar tails.
SHAPES = [(7, 123), (33, 16), (5, 17), (64, 64), (1, 1), (3, 0), (0, 4), (3, 8), (4, 9), (6, 31), (2, 7)]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mask_expand_and_compress_match_boolean_indexing(shape, sparsity, dtype):
    mask = random_mask(shape, sparsity)
    layout = CSRLayout.from_mask(mask)
    values = torch.randn(layout.nnz, dtype=dtype)
    dense = torch.full(shape, float("nan"), dtype=dtype)  # poisoned: every entry must be written
    _ops.mask_expand_(values, layout.row_offsets, mask, dense)
    expected = torch.zeros(shape, dtype=dtype)
    expected[mask] = values
    assert torch.equal(dense, expected)
    source = torch.randn(shape, dtype=dtype)
    assert torch.equal(_ops.mask_compress(source, layout.row_offsets, mask), source[mask])


def test_mask_expand_passes_non_finite_values_and_zeroes_the_rest():
    """Pruned positions are exactly 0 next to inf / nan kept values (no value * 0 = nan)."""
    mask = random_mask((5, 37), 0.5)
    layout = CSRLayout.from_mask(mask)
    values = torch.randn(layout.nnz)
    values[::3] = float("inf")
    values[1::3] = float("nan")
    dense = torch.full((5, 37), 1.0)
    _ops.mask_expand_(values, layout.row_offsets, mask, dense)
    assert torch.equal(dense[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(dense[mask].isnan(), values.isnan())
    assert torch.equal(dense[mask].nan_to_num(), values.nan_to_num())


@pytest.mark.parametrize("row", [True, False], ids=["more", "fewer"])
@pytest.mark.parametrize("op", ["expand", "compress"])
def test_mask_and_offsets_that_disagree_raise(op, row):
    mask = random_mask((8, 40), 0.5)
    layout = CSRLayout.from_mask(mask)
    other = mask.clone()
    other[3, :] = row  # row 3 now keeps more (or fewer) than row_offsets gives it
    with pytest.raises(ValueError, match="row_offsets: some row's entry count differs"):
        if op == "expand":
            _ops.mask_expand_(torch.randn(layout.nnz), layout.row_offsets, other, torch.empty(8, 40))
        else:
            _ops.mask_compress(torch.randn(8, 40), layout.row_offsets, other)


def test_mask_ops_bad_types():
    mask = random_mask((4, 6), 0.5)
    layout = CSRLayout.from_mask(mask)
    with pytest.raises(TypeError, match="mask: expected a .*bool"):
        _ops.mask_compress(torch.randn(4, 6), layout.row_offsets, mask.float())
    with pytest.raises(TypeError, match="values: expected dtype"):
        _ops.mask_expand_(torch.randn(layout.nnz, dtype=torch.float64), layout.row_offsets, mask, torch.empty(4, 6))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_fallback_ops(requires_grad):
    mask = random_mask((6, 20), 0.5)
    layout = CSRLayout.from_mask(mask)
    torch.library.opcheck(_ops.mask_expand_, (torch.randn(layout.nnz), layout.row_offsets, mask, torch.empty(6, 20)))
    torch.library.opcheck(_ops.mask_compress, (torch.randn(6, 20), layout.row_offsets, mask))
    torch.library.opcheck(_ops.transpose, (torch.randn(6, 20, requires_grad=requires_grad),))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(256, 2048), (7, 13), (1, 5), (0, 3), (65, 33)], ids=str)
def test_transpose(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    assert torch.equal(_ops.transpose(x), x.t().contiguous())
    assert torch.equal(_ops.transpose(x.t()), x)  # strided input
    x64 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ops.transpose, (x64,))


def _fallback_layer(sparsity=0.5):
    return SparseLinear(12, 10, mask=random_mask((10, 12), sparsity), backend="dense", dtype=torch.float64)


@pytest.fixture(params=["cached", "functional"])
def fallback_path(request, monkeypatch):
    """Both dense fallbacks: the persistent-buffer autograd.Functions (layers above
    FUNCTIONAL_FALLBACK_MAX_WEIGHTS; forced here with a limit of 0) and the functional one of small CPU layers."""
    if request.param == "cached":
        monkeypatch.setattr(dense_fallback, "FUNCTIONAL_FALLBACK_MAX_WEIGHTS", 0)
    return request.param


def test_small_cpu_layers_take_the_functional_fallback(fallback_path):
    layer = _fallback_layer()
    node = layer(torch.randn(3, 12, dtype=torch.float64)).grad_fn
    while node.name() == "ViewBackward0":  # the reshape back to the input's leading dimensions
        node = node.next_functions[0][0]
    functional = fallback_path == "functional" and _extension.AVAILABLE
    assert ("DenseMaskedLinear" not in node.name()) == functional, node.name()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_fallback_paths_agree(layout, monkeypatch):
    """The cached and the functional conv fallback: same output and gradients, NCHW and channels_last."""
    mask = random_mask((6, 2, 3, 3), 0.5)
    layer = SparseConv2d(4, 6, 3, padding=1, groups=2, mask=mask, backend="dense", dtype=torch.float64)
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    results = []
    for limit in (0, 1 << 30):
        monkeypatch.setattr(dense_fallback, "FUNCTIONAL_FALLBACK_MAX_WEIGHTS", limit)
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        y = layer(xr)
        y.backward(grad)
        results.append((y.detach(), xr.grad, layer.weight_values.grad, layer.bias.grad))
    for cached, functional in zip(*results):
        torch.testing.assert_close(cached, functional, rtol=1e-12, atol=1e-12)


def test_dense_fallback_sees_writes_through_data(fallback_path):
    """Weights changed through .data (no version bump) must be used by the next forward, not a stale copy."""
    layer = _fallback_layer()
    x = torch.randn(3, 12, dtype=torch.float64)
    layer(x)
    layer.weight_values.data.mul_(2.0)
    expected = nn.functional.linear(x, layer.dense_weight().detach(), layer.bias.detach())
    assert torch.allclose(layer(x).detach(), expected, rtol=0, atol=1e-12)


def test_dense_fallback_layer_used_twice_in_one_forward(fallback_path):
    """Weight sharing: the second call must not overwrite the buffer the first call's backward needs."""
    layer = _fallback_layer()
    twin = nn.Linear(12, 10, dtype=torch.float64)
    with torch.no_grad():
        twin.weight.copy_(layer.dense_weight())
        twin.bias.copy_(layer.bias)
    x = torch.randn(3, 12, dtype=torch.float64)
    layer(torch.tanh(layer(x)[:, :12].repeat(1, 2)[:, :12])).sum().backward()
    twin(torch.tanh(twin(x)[:, :12].repeat(1, 2)[:, :12])).sum().backward()
    assert torch.allclose(layer.weight_values.grad, twin.weight.grad[layer.mask], rtol=1e-12, atol=1e-12)
    assert torch.allclose(layer.bias.grad, twin.bias.grad, rtol=1e-12, atol=1e-12)


def test_dense_fallback_backward_uses_the_weights_of_its_forward(fallback_path):
    """A graph kept across a weight update: the first backward must use the weights its forward saw, even
    though a second forward (after the update) refilled the layer's dense weight in between."""
    layer = _fallback_layer()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    first_weight = layer.dense_weight().detach().clone()
    y1 = layer(x)
    layer.weight_values.data.mul_(3.0)  # through .data: autograd's version check does not see it
    layer(x)  # refills the dense weight with the new values
    grad = torch.randn_like(y1)
    (dx,) = torch.autograd.grad(y1, x, grad)
    assert torch.allclose(dx, grad @ first_weight, rtol=1e-12, atol=1e-12)


def test_sparse_backend_output_is_contiguous_like_nn_linear():
    layer = SparseLinear(12, 10, mask=random_mask((10, 12), 0.5), backend="sparse")
    y = layer(torch.randn(4, 12))
    assert y.is_contiguous() and y.shape == (4, 10)
    y.view(-1)  # nn.Linear's output allows this; so must ours
