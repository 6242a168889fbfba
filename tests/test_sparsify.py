"""sparsify(model, masks): swaps the named nn.Linear / nn.Conv2d layers for SparseLinear / SparseConv2d in place,
leaves the rest alone."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import assert_error_budget, block_mask, exact_mask
from sparsekern import SparseConv2d, SparseLinear, sparsify


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(20, 16), nn.ReLU())
        self.head = nn.Linear(16, 5)
        self.norm = nn.LayerNorm(5)

    def forward(self, x):
        return self.norm(self.head(self.block(self.fc1(x))))


def _masked_dense_copy(model, masks):
    """The reference: a deep copy of the dense model with the masks multiplied into its weights."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    return ref


@pytest.mark.parametrize("backend", ["auto", "sparse", "dense"])
@pytest.mark.parametrize("block_size", [None, (2, 4)], ids=str)
def test_sparsify_replaces_named_linears(block_size, backend):
    model = Net()
    if block_size is None:
        masks = {"fc1.weight": exact_mask((20, 12), 0.7), "block.1.weight": exact_mask((16, 20), 0.9)}
    else:
        masks = {"fc1.weight": block_mask((10, 3), block_size, 0.5),
                 "block.1.weight": block_mask((8, 5), block_size, 0.75)}
    ref = _masked_dense_copy(model, masks)
    original_head, original_norm = model.head, model.norm

    out_model = sparsify(model, masks, block_size=block_size, backend=backend)

    assert out_model is model
    assert isinstance(model.fc1, SparseLinear) and isinstance(model.block[1], SparseLinear)
    assert model.head is original_head and type(model.head) is nn.Linear
    assert model.norm is original_norm
    for layer, name in ((model.fc1, "fc1.weight"), (model.block[1], "block.1.weight")):
        assert torch.equal(layer.mask, masks[name])
        assert layer.block_size == block_size and layer.backend == backend
        assert torch.equal(layer.weight_values.detach(), dict(ref.named_parameters())[name].detach()[masks[name]])
    # No dense weight of the replaced layers is left among the parameters.
    names = {n for n, _ in model.named_parameters()}
    assert "fc1.weight" not in names and "fc1.weight_values" in names and "head.weight" in names

    x = torch.randn(7, 12)
    ref64 = copy.deepcopy(ref).double()
    assert_error_budget(model(x).detach(), ref(x).detach(), ref64(x.double()).detach(), 2.0)
    # Gradients flow to the sparse values, the dense head and the input.
    xg = x.clone().requires_grad_()
    model(xg).sum().backward()
    assert model.fc1.weight_values.grad.shape == (model.fc1.nnz,)
    assert model.head.weight.grad is not None and xg.grad is not None


def test_sparsify_top_level_linear_and_sequential():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = {"0.weight": exact_mask((8, 6), 0.5)}
    ref = _masked_dense_copy(model, masks)
    sparsify(model, masks)
    assert isinstance(model[0], SparseLinear) and type(model[2]) is nn.Linear
    x = torch.randn(4, 6)
    assert_error_budget(model(x).detach(), ref(x).detach(), copy.deepcopy(ref).double()(x.double()).detach())


def test_sparsify_on_sparse_layer_sets_its_mask():
    model = nn.Sequential(nn.Linear(6, 8))
    sparsify(model, {"0.weight": exact_mask((8, 6), 0.5)})
    layer = model[0]
    new = exact_mask((8, 6), 0.25)
    sparsify(model, {"0.weight": new})
    assert model[0] is layer and torch.equal(layer.mask, new) and layer.nnz == int(new.sum())


def test_sparsify_state_dict_loads_into_fresh_sparsified_model():
    masks = {"fc1.weight": exact_mask((20, 12), 0.7), "head.weight": exact_mask((5, 16), 0.5)}
    model = sparsify(Net(), masks)
    fresh = sparsify(Net(), {"fc1.weight": exact_mask((20, 12), 0.2), "head.weight": exact_mask((5, 16), 0.2)})
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(3, 12)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("name", ["fc9.weight", "fc1.bias", "fc1", "block.7.weight", "block.1.weight.weight"])
def test_sparsify_unknown_names_raise_key_error(name):
    model = Net()
    with pytest.raises(KeyError, match=r"is not the weight of a submodule"):
        sparsify(model, {name: torch.ones(20, 12, dtype=torch.bool)})
    assert type(model.fc1) is nn.Linear


def test_sparsify_non_linear_raises_type_error():
    model = Net()
    with pytest.raises(TypeError, match=r"'norm.weight' belongs to a LayerNorm; sparsify supports nn.Linear"):
        sparsify(model, {"norm.weight": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"'weight' belongs to a Net"):
        sparsify(model, {"weight": torch.ones(20, 12, dtype=torch.bool)})
    conv1d = nn.Sequential(nn.Conv1d(3, 4, 3))
    with pytest.raises(TypeError, match=r"'0.weight' belongs to a Conv1d; sparsify supports nn.Linear and nn.Conv2d"):
        sparsify(conv1d, {"0.weight": torch.ones(4, 3, 3, dtype=torch.bool)})


def test_sparsify_root_linear_is_not_silently_ignored():
    """``sparsify(linear, {"weight": mask})``: the root module cannot be replaced in place, so the result must be
    the SparseLinear (returned) or an error; returning the untouched dense Linear would silently not sparsify."""
    lin = nn.Linear(6, 4)
    mask = exact_mask((4, 6), 0.5)
    try:
        out = sparsify(lin, {"weight": mask})
    except (KeyError, TypeError, ValueError) as exc:
        assert "weight" in str(exc)
        return
    assert isinstance(out, SparseLinear), f"sparsify returned a {type(out).__name__}, not a SparseLinear"
    assert torch.equal(out.mask, mask)


def test_sparsify_bad_arguments():
    with pytest.raises(TypeError, match=r"model: expected an nn.Module, got dict"):
        sparsify({}, {})
    with pytest.raises(TypeError, match=r"masks: expected a dict of parameter name -> mask, got list"):
        sparsify(Net(), [("fc1.weight", torch.ones(20, 12))])
    with pytest.raises(ValueError, match=r"mask: expected shape \(20, 12\), got \(12, 20\)"):
        sparsify(Net(), {"fc1.weight": torch.ones(12, 20, dtype=torch.bool)})


# ------------------------------------------------------------------------------------------------ Conv2d

class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
                                  nn.Conv2d(8, 6, (2, 3), padding="same", bias=False), nn.ReLU())
        self.fc = nn.Linear(6 * 4 * 5, 5)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).flatten(1))


def _conv_mask(shape, sparsity):
    return exact_mask((shape[0], int(torch.tensor(shape[1:]).prod())), sparsity).view(shape)


def _conv_masks():
    return {"stem.weight": _conv_mask((8, 3, 3, 3), 0.7), "body.1.weight": _conv_mask((8, 1, 3, 3), 0.5),
            "body.3.weight": _conv_mask((6, 8, 2, 3), 0.9), "fc.weight": exact_mask((5, 120), 0.8)}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")  # the dense ref
@pytest.mark.parametrize("backend", ["auto", "sparse", "dense"])
def test_sparsify_replaces_named_conv2d_and_linear(backend):
    model = ConvNet()
    masks = _conv_masks()
    del masks["body.1.weight"]  # the depthwise conv stays dense
    ref = _masked_dense_copy(model, masks)
    original_depthwise = model.body[1]

    assert sparsify(model, masks, backend=backend) is model

    assert isinstance(model.stem, SparseConv2d) and isinstance(model.body[3], SparseConv2d)
    assert isinstance(model.fc, SparseLinear)
    assert model.body[1] is original_depthwise and type(model.body[1]) is nn.Conv2d
    dense = dict(ref.named_parameters())
    for layer, name in ((model.stem, "stem.weight"), (model.body[3], "body.3.weight"), (model.fc, "fc.weight")):
        assert torch.equal(layer.mask, masks[name]) and layer.backend == backend
        assert torch.equal(layer.weight_values.detach(), dense[name].detach()[masks[name]])
    conv = model.body[3]
    assert conv.padding == "same" and conv.kernel_size == (2, 3) and conv.bias is None
    names = {n for n, _ in model.named_parameters()}
    assert "stem.weight" not in names and "stem.weight_values" in names and "body.1.weight" in names

    x = torch.randn(2, 3, 8, 9)
    ref64 = copy.deepcopy(ref).double()
    assert_error_budget(model(x).detach(), ref(x).detach(), ref64(x.double()).detach(), 2.0)
    xg = x.clone().requires_grad_()
    model(xg).sum().backward()
    assert model.stem.weight_values.grad.shape == (model.stem.nnz,)
    assert model.body[1].weight.grad is not None and xg.grad is not None


def test_sparsify_root_conv2d_and_sparse_conv_set_mask():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    mask = _conv_mask((6, 2, 3, 3), 0.5)
    out = sparsify(conv, {"weight": mask})
    assert isinstance(out, SparseConv2d) and torch.equal(out.mask, mask) and out.groups == 2

    model = nn.Sequential(out)
    new = _conv_mask((6, 2, 3, 3), 0.25)
    sparsify(model, {"0.weight": new})
    assert model[0] is out and torch.equal(out.mask, new) and out.nnz == int(new.sum())


def test_sparsify_conv_state_dict_loads_into_fresh_sparsified_model():
    model = sparsify(ConvNet(), _conv_masks())
    fresh = sparsify(ConvNet(), _conv_masks())  # other random masks
    assert not torch.equal(fresh.stem.mask, model.stem.mask)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 8, 9)
    assert torch.equal(fresh(x), model(x))


def test_sparsify_conv_errors_leave_the_model_untouched():
    model = ConvNet()
    good = {"fc.weight": exact_mask((5, 120), 0.5)}
    with pytest.raises(ValueError, match=r"mask: expected shape \(8, 3, 3, 3\), got \(8, 27\)"):
        sparsify(model, {**good, "stem.weight": torch.ones(8, 27, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"block_size: \(2, 4\) must divide the \(out, in\) channels of a group, "
                                         r"\(8, 3\)"):
        sparsify(model, {"stem.weight": _conv_mask((8, 3, 3, 3), 0.5)}, block_size=(2, 4))
    with pytest.raises(KeyError, match=r"the model's Linear and Conv2d weights are \['body.1.weight', "
                                       r"'body.3.weight', 'fc.weight', 'stem.weight'\]"):
        sparsify(model, {**good, "body.7.weight": torch.ones(1)})
    assert type(model.fc) is nn.Linear and type(model.stem) is nn.Conv2d  # no partial replacement
    reflect = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"padding_mode: only 'zeros' is supported, got 'reflect'"):
        sparsify(reflect, {"0.weight": _conv_mask((4, 3, 3, 3), 0.5)})
    assert type(reflect[0]) is nn.Conv2d

