"""sparsekern.masks.io: mask files (exact round trip, atomic writes, clear errors), torch.nn.utils.prune interop,
and masks recovered from the zeros of pruned models and checkpoints."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsekern import SparseConv2d, SparseLinear, sparsify
from sparsekern.masks import io as mask_io
from sparsekern.masks.io import (load_masks, masks_from_torch_prune, masks_from_zeros, masks_to_torch_prune,
                                 save_masks)


class Net(nn.Module):
    """Conv → conv (stride 2) → Linear on 8×8 inputs: the layer kinds sparsify and torch prune both handle."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.norm = nn.LayerNorm(72)
        self.fc = nn.Linear(72, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(self.norm(x.flatten(1)))


def _random_masks(model: nn.Module, density: float = 0.4) -> dict:
    return {name: torch.rand(p.shape) < density for name, p in model.named_parameters()
            if name in ("conv1.weight", "conv2.weight", "fc.weight")}


def _zeroed(model: nn.Module, masks: dict) -> nn.Module:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    return model


def _assert_same_masks(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == torch.bool, name
        assert torch.equal(got[name].cpu(), expected[name].bool().cpu()), name


# ------------------------------------------------------------------------------------------ mask files
def test_round_trip_is_exact(tmp_path):
    masks = {"z.weight": torch.rand(5, 7) < 0.5,                      # not sorted: the order must survive
             "a.weight": (torch.rand(4, 3, 3, 3) < 0.3).float(),       # 0/1 float: stored as bool
             "m.weight": (torch.rand(2, 9) < 0.9).to(torch.int64),
             "one.weight": torch.zeros(1, 1, dtype=torch.bool)}
    metadata = {"method": "magnitude", "sparsity": 0.9, "layers": ("a", "b"), "extra": {"seed": 3, "ok": None}}
    path = tmp_path / "masks.pt"
    save_masks(masks, path, metadata=metadata)

    loaded, meta = load_masks(path, with_metadata=True)
    _assert_same_masks(loaded, masks)
    assert all(m.device == torch.device("cpu") and m.is_contiguous() for m in loaded.values())
    assert meta == {"method": "magnitude", "sparsity": 0.9, "layers": ["a", "b"], "extra": {"seed": 3, "ok": None}}
    _assert_same_masks(load_masks(str(path)), masks)  # str paths too, and masks only by default


def test_file_is_plain_torch_load_able(tmp_path):
    masks = {"fc.weight": torch.rand(3, 4) < 0.5}
    path = tmp_path / "masks.pt"
    save_masks(masks, path, metadata={"sparsity": 0.5})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "sparsekern.masks" and payload["version"] == 1
    assert payload["metadata"] == {"sparsity": 0.5}
    assert torch.equal(payload["masks"]["fc.weight"], masks["fc.weight"])


def test_no_metadata_loads_as_empty_dict(tmp_path):
    save_masks({"w": torch.ones(2, 2, dtype=torch.bool)}, tmp_path / "m.pt")
    assert load_masks(tmp_path / "m.pt", with_metadata=True)[1] == {}


def test_a_view_is_stored_without_the_tensor_it_views(tmp_path):
    big = torch.rand(1000, 100) < 0.5
    save_masks({"w": big[:2, :3]}, tmp_path / "m.pt")
    loaded = load_masks(tmp_path / "m.pt")["w"]
    assert torch.equal(loaded, big[:2, :3])
    assert loaded.untyped_storage().nbytes() == 6
    assert os.path.getsize(tmp_path / "m.pt") < 10_000


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "m.pt"
    save_masks({"old.weight": torch.zeros(2, 2)}, path)
    save_masks({"new.weight": torch.ones(3, 3)}, path)
    assert list(load_masks(path)) == ["new.weight"]
    assert os.listdir(tmp_path) == ["m.pt"]


def test_saved_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)  # a temporary file of mkstemp would be 0600; ours follows the umask like open() does
    try:
        save_masks({"w": torch.ones(2, 2)}, tmp_path / "m.pt")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "m.pt").st_mode & 0o777 == 0o644


def _partial_then_fail(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a zip file")
    raise OSError("disk full")


@pytest.mark.parametrize("where", ["torch.save", "os.replace", "os.fsync"])
def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch, where):
    path = tmp_path / "m.pt"
    old = {"old.weight": torch.rand(4, 4) < 0.5}
    save_masks(old, path, metadata={"round": 1})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("simulated crash")

    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _partial_then_fail)
    else:
        monkeypatch.setattr(os, where.split(".")[1], fail)
    with pytest.raises(OSError):
        save_masks({"new.weight": torch.ones(2, 2)}, path, metadata={"round": 2})
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind
    assert path.read_bytes() == before
    loaded, meta = load_masks(path, with_metadata=True)
    _assert_same_masks(loaded, old)
    assert meta == {"round": 1}


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_masks({"w": torch.ones(2, 2)}, tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_save_of_an_invalid_mask_writes_nothing(tmp_path):
    path = tmp_path / "m.pt"
    with pytest.raises(ValueError, match=r"masks\['fc.weight'\]: expected only 0 and 1 .*found the value 0.5"):
        save_masks({"ok.weight": torch.ones(2, 2), "fc.weight": torch.tensor([[0.0, 0.5], [1.0, 1.0]])}, path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("masks, error, match", [
    ([torch.ones(2, 2)], TypeError, r"masks: expected a dict of weight name -> bool mask, got list"),
    ({}, ValueError, r"masks: expected at least one mask, got an empty dict"),
    ({3: torch.ones(2, 2)}, TypeError, r"masks: expected weight names \(str\) as keys, got int 3"),
    ({"w": [[1, 0]]}, TypeError, r"masks\['w'\]: expected a torch.Tensor, got list"),
    ({"w": torch.tensor([[float("nan")]])}, ValueError, r"masks\['w'\]: contains NaN"),
], ids=["list", "empty", "int-key", "list-value", "nan"])
def test_save_rejects_bad_masks(tmp_path, masks, error, match):
    with pytest.raises(error, match=match):
        save_masks(masks, tmp_path / "m.pt")


@pytest.mark.parametrize("metadata, error, match", [
    (["sparsity", 0.9], TypeError, r"metadata: expected a dict of JSON-able values, got list"),
    ({"mask": torch.ones(2)}, TypeError, r"metadata: expected JSON-able values .*Tensor"),
    ({"sparsity": float("nan")}, ValueError, r"metadata: expected JSON-able values"),
], ids=["list", "tensor", "nan"])
def test_save_rejects_bad_metadata(tmp_path, metadata, error, match):
    with pytest.raises(error, match=match):
        save_masks({"w": torch.ones(2, 2)}, tmp_path / "m.pt", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: the folder .*nowhere.* does not exist"):
        save_masks({"w": torch.ones(2, 2)}, tmp_path / "nowhere" / "m.pt")
    with pytest.raises(TypeError, match=r"path: expected a str or os.PathLike, got int"):
        save_masks({"w": torch.ones(2, 2)}, 3)


def test_load_of_a_missing_file(tmp_path):
    path = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=r"path: no mask file at .*missing\.pt"):
        load_masks(path)


def _write_file(path, kind: str) -> None:
    if kind == "list":
        torch.save([torch.ones(2)], path)
    elif kind == "plain-dict":
        torch.save({"fc.weight": torch.ones(2, 2, dtype=torch.bool)}, path)
    elif kind == "not-torch":
        path.write_bytes(b"this is not a torch file")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "module":
        torch.save(nn.Linear(2, 2), path)  # needs a full unpickler: weights_only refuses it
    elif kind == "float-entry":
        torch.save({"format": "sparsekern.masks", "version": 1, "masks": {"w": torch.ones(2, 2)}, "metadata": {}}, path)
    elif kind == "newer":
        torch.save({"format": "sparsekern.masks", "version": 99, "masks": {}, "metadata": {}}, path)


@pytest.mark.parametrize("kind, match", [
    ("list", r"is not a mask file written by save_masks: expected a dict with format 'sparsekern.masks', got a list"),
    ("plain-dict", r"got a dict with keys \['fc.weight'\]; a plain dict of masks: torch.load it and save it with"),
    ("not-torch", r"is not a mask file written by save_masks \(torch.load failed: "),
    ("empty", r"is not a mask file written by save_masks \(torch.load failed: "),
    ("module", r"\(torch.load with weights_only=True failed: the file holds objects other than tensors"),
    ("float-entry", r"entry 'w' must be a bool tensor named by a str, got a torch.float32 tensor of shape \(2, 2\)"),
    ("newer", r"has mask file version 99; this sparsekern reads versions 1 to 1"),
])
def test_load_of_a_file_that_is_not_a_mask_file(tmp_path, kind, match):
    path = tmp_path / f"{kind}.pt"
    _write_file(path, kind)
    with pytest.raises(ValueError, match=match):
        load_masks(path)


def test_load_map_location(tmp_path):
    save_masks({"w": torch.ones(2, 2)}, tmp_path / "m.pt")
    assert load_masks(tmp_path / "m.pt", map_location=torch.device("cpu"))["w"].device.type == "cpu"
    with pytest.raises(TypeError, match=r"map_location: expected a device \(str or torch.device\), got dict"):
        load_masks(tmp_path / "m.pt", map_location={"cuda:0": "cpu"})


def test_format_constants_are_exported():
    assert mask_io.FORMAT == "sparsekern.masks" and mask_io.VERSION == 1


# ------------------------------------------------------------------------------- torch.nn.utils.prune
def test_torch_prune_round_trip():
    model = Net()
    masks = _random_masks(model)
    assert masks_to_torch_prune(model, masks) is model
    names = {n for n, _ in model.named_parameters()}
    assert {"conv1.weight_orig", "conv2.weight_orig", "fc.weight_orig"} <= names and "fc.weight" not in names
    _assert_same_masks(masks_from_torch_prune(model), masks)
    for name, mask in masks.items():  # prune applies the mask to the weight it exposes
        module = model.get_submodule(name.rpartition(".")[0])
        assert torch.equal(module.weight != 0, mask)


def test_torch_pruned_forward_equals_sparsified_forward():
    model = Net()
    masks = _random_masks(model, density=0.3)
    sparse = sparsify(copy.deepcopy(model), masks)
    assert isinstance(sparse.conv1, SparseConv2d) and isinstance(sparse.fc, SparseLinear)
    masks_to_torch_prune(model, masks)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), sparse(x), rtol=0, atol=1e-5)


def test_masks_from_torch_prune_on_torch_own_pruning():
    model = Net()
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    prune.random_unstructured(model.fc, "weight", amount=0.8)
    masks = masks_from_torch_prune(model)
    assert list(masks) == ["conv1.weight", "fc.weight"]
    assert masks["conv1.weight"].dtype == torch.bool and masks["conv1.weight"].shape == (6, 3, 3, 3)
    assert int(masks["conv1.weight"].sum()) == 162 - 81
    assert int(masks["fc.weight"].sum()) == 720 - 576
    # l1_unstructured keeps the largest |w|: every kept weight is at least as large as every pruned one.
    w = model.conv1.weight_orig.detach().abs()
    assert w[masks["conv1.weight"]].min() >= w[~masks["conv1.weight"]].max()
    assert torch.equal(masks["conv1.weight"], model.conv1.weight_mask.bool())


def test_masks_from_torch_prune_on_a_pruned_root_module():
    layer = nn.Linear(4, 3)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    assert list(masks_from_torch_prune(layer)) == ["weight"]


def test_masks_to_torch_prune_twice_keeps_the_intersection():
    model = Net()
    first, second = _random_masks(model, 0.6), _random_masks(model, 0.6)
    masks_to_torch_prune(model, first)
    masks_to_torch_prune(model, {"fc.weight": second["fc.weight"]})
    got = masks_from_torch_prune(model)
    assert torch.equal(got["fc.weight"], first["fc.weight"] & second["fc.weight"])
    assert torch.equal(got["conv1.weight"], first["conv1.weight"])


def test_masks_from_torch_prune_errors():
    with pytest.raises(ValueError, match=r"model: no module has a 'weight_mask' buffer"):
        masks_from_torch_prune(Net())
    with pytest.raises(TypeError, match=r"model: expected an nn.Module, got dict"):
        masks_from_torch_prune({})


def test_masks_to_torch_prune_errors_prune_nothing():
    model = Net()
    good = _random_masks(model)
    with pytest.raises(KeyError, match=r"masks: 'norm.weight' is not the weight of a Linear or Conv2d layer"):
        masks_to_torch_prune(model, {**good, "norm.weight": torch.ones(72, dtype=torch.bool)})
    with pytest.raises(KeyError, match=r"masks: 'conv3.weight' is not the weight of a Linear or Conv2d layer"):
        masks_to_torch_prune(model, {**good, "conv3.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r"masks\['fc.weight'\]: expected shape \(10, 72\), got \(72, 10\)"):
        masks_to_torch_prune(model, {**good, "fc.weight": torch.ones(72, 10)})
    with pytest.raises(TypeError, match=r"masks: expected a dict"):
        masks_to_torch_prune(model, [good])
    assert not any(hasattr(m, "weight_mask") for m in model.modules())  # validated before pruning anything

    sparse = sparsify(Net(), {"fc.weight": good["fc.weight"]})
    with pytest.raises(TypeError, match=r"masks: 'fc.weight' belongs to a SparseLinear, which has no dense weight"):
        masks_to_torch_prune(sparse, {"fc.weight": good["fc.weight"]})


# ------------------------------------------------------------------------------------------ from zeros
def test_masks_from_zeros_of_a_model_and_its_state_dict():
    model = Net()
    masks = _random_masks(model)
    _zeroed(model, masks)
    _assert_same_masks(masks_from_zeros(model, layers=list(masks)), masks)
    # Without layers: every prunable layer (here all of them are masked ones).
    _assert_same_masks(masks_from_zeros(model), masks)
    # A state_dict: ≥ 2-D weights only, so conv biases and the LayerNorm's weight are left out.
    _assert_same_masks(masks_from_zeros(model.state_dict()), masks)
    _assert_same_masks(masks_from_zeros(model.state_dict(), layers=["fc.weight"]), {"fc.weight": masks["fc.weight"]})


def test_masks_from_zeros_of_a_torch_pruned_model():
    model = Net()
    masks = _random_masks(model)
    masks_to_torch_prune(model, masks)
    state = model.state_dict()
    assert "fc.weight_orig" in state and "fc.weight_mask" in state and "fc.weight" not in state
    _assert_same_masks(masks_from_zeros(state), masks)
    _assert_same_masks(masks_from_zeros(model), masks)


def test_masks_from_zeros_of_a_sparsified_model():
    model = sparsify(Net(), _random_masks(Net()))
    masks = {name: model.get_submodule(name.rpartition(".")[0]).mask for name in ("conv1.weight", "conv2.weight",
                                                                                     "fc.weight")}
    with torch.no_grad():
        model.fc.weight_values[0] = 0.0  # a kept weight that is exactly 0 stays kept: the stored mask decides
    _assert_same_masks(masks_from_zeros(model.state_dict()), masks)
    _assert_same_masks(masks_from_zeros(model), masks)


def test_masks_from_zeros_keeps_state_dict_order_and_mixed_layers():
    model = Net()
    masks = _random_masks(model)
    _zeroed(model, masks)
    sparsify(model, {"conv2.weight": masks["conv2.weight"]})
    masks_to_torch_prune(model, {"fc.weight": masks["fc.weight"]})
    _assert_same_masks(masks_from_zeros(model.state_dict()), masks)


def test_masks_from_zeros_errors():
    state = Net().state_dict()
    with pytest.raises(KeyError, match=r"layers: 'conv1.bias' is not a weight \(≥ 2-D\) in the state_dict"):
        masks_from_zeros(state, layers=["conv1.bias"])
    with pytest.raises(ValueError, match=r"layers: expected None, 'all' or a list of weight names"):
        masks_from_zeros(state, layers="fc.weight")
    with pytest.raises(KeyError, match=r"layers: 'nope.weight' is not the weight of a Linear or Conv2d layer"):
        masks_from_zeros(Net(), layers=["nope.weight"])
    with pytest.raises(TypeError, match=r"a state_dict maps str keys to tensors, but 'state_dict' is not a tensor"):
        masks_from_zeros({"state_dict": state, "epoch": 3})
    with pytest.raises(TypeError, match=r"model_or_state_dict: expected an nn.Module or a state_dict, got list"):
        masks_from_zeros([state])
    bad = sparsify(Net(), {"fc.weight": torch.rand(10, 72) < 0.5}).state_dict()
    bad["fc.mask"] = torch.ones(10, 72, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"fc.mask keeps 720 weights but fc.weight_values holds"):
        masks_from_zeros(bad)
