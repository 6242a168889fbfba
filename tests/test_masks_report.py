"""sparsekern.masks.report: per-layer counts and FLOPs checked by hand, totals, the text / CSV / dict outputs, sparse
models, and clear errors."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsekern import sparsify
from sparsekern.masks.report import CSV_FIELDS, MaskReport, mask_report


def _tiny():
    """Conv2d(3, 4, 3, padding=1) on 5×5 (output 4×5×5 = 100 values), Flatten, Linear(100, 10)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(100, 10))


def _tiny_masks():
    conv = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    conv[:2] = True                         # 2 of 4 filters: 54 of 108 weights
    fc = torch.zeros(10, 100, dtype=torch.bool)
    fc[:, :25] = True                       # 250 of 1000 weights
    return {"0.weight": conv, "2.weight": fc}


# Per sample: conv 2·108·25 dense, 2·54·25 sparse (25 = 5×5 output positions); Linear 2·1000 and 2·250.
EXPECTED_ROWS = [
    {"name": "0.weight", "type": "Conv2d", "shape": (4, 3, 3, 3), "kept": 54, "total": 108, "density": 0.5,
     "dense_flops": 5400, "sparse_flops": 2700},
    {"name": "2.weight", "type": "Linear", "shape": (10, 100), "kept": 250, "total": 1000, "density": 0.25,
     "dense_flops": 2000, "sparse_flops": 500},
]
EXPECTED_TOTALS = {"layers": 2, "kept": 304, "total": 1108, "density": 304 / 1108, "sparsity": 1 - 304 / 1108,
                   "dense_flops": 7400, "sparse_flops": 3200, "flop_ratio": 7400 / 3200}


def test_hand_computed_counts_and_flops():
    report = mask_report(_tiny(), _tiny_masks(), input_shape=(3, 5, 5))
    assert isinstance(report, MaskReport)
    assert report.rows == EXPECTED_ROWS
    assert report.totals == pytest.approx(EXPECTED_TOTALS)
    assert report.input_shape == (3, 5, 5) and report.notes == []


def test_conv_flops_follow_stride_padding_and_groups():
    # Conv2d(4, 8, 3, stride=2, groups=2) on 4×5×5: weights 8·2·3·3 = 144, output 2×2 → 4 positions.
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, groups=2), nn.Flatten(), nn.Linear(32, 3))
    mask = torch.zeros(8, 2, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    row = mask_report(model, {"0.weight": mask}, input_shape=(4, 5, 5)).rows[0]
    assert (row["shape"], row["kept"], row["total"]) == ((8, 2, 3, 3), 1, 144)
    assert (row["dense_flops"], row["sparse_flops"]) == (2 * 144 * 4, 2 * 1 * 4)


def test_linear_on_sequences_counts_every_position():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    report = mask_report(model, input_shape=(7, 16))  # 7 tokens of 16 features
    assert [r["dense_flops"] for r in report.rows] == [2 * 128 * 7, 2 * 32 * 7]
    assert mask_report(model).rows[0]["dense_flops"] == 2 * 128  # without input_shape: one position


def test_a_layer_run_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert mask_report(Twice(), input_shape=(6,)).rows[0]["dense_flops"] == 2 * 2 * 36


def test_totals_add_up():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 20), nn.Linear(20, 5))
    masks = {name: torch.rand(p.shape) < 0.3 for name, p in model.named_parameters() if name.endswith("weight")}
    report = mask_report(model, masks, input_shape=(3, 8, 8))
    t = report.totals
    assert t["layers"] == len(report.rows) == 4
    for key in ("kept", "total", "dense_flops", "sparse_flops"):
        assert t[key] == sum(r[key] for r in report.rows), key
    assert t["kept"] == sum(int(m.sum()) for m in masks.values())
    assert t["density"] == pytest.approx(t["kept"] / t["total"]) and t["sparsity"] == pytest.approx(1 - t["density"])
    assert t["flop_ratio"] == pytest.approx(t["dense_flops"] / t["sparse_flops"])


def test_to_text_shows_every_layer_and_the_totals():
    text = mask_report(_tiny(), _tiny_masks(), input_shape=(3, 5, 5)).to_text()
    lines = text.splitlines()
    for row in EXPECTED_ROWS:
        line = next(line for line in lines if line.startswith(row["name"]))
        assert "x".join(map(str, row["shape"])) in line and f"{100 * row['density']:.2f}%" in line
        assert f"{row['dense_flops']:,}" in line and f"{row['sparse_flops']:,}" in line
    total_line = next(line for line in lines if line.startswith("total"))
    for value in ("304", "1,108", "27.44%", "7,400", "3,200"):
        assert value in total_line
    assert "2.31x" in text and "sparsity 72.56%" in text
    # Aligned: header, layer lines and totals line are equally wide (numbers right-aligned, so they end together).
    assert len({len(line) for line in (lines[0], lines[2], lines[3], total_line)}) == 1, text
    assert all(len(line) <= 120 for line in lines)


def test_without_input_shape_conv_flops_are_unknown():
    report = mask_report(_tiny(), _tiny_masks())
    conv, fc = report.rows
    assert conv["dense_flops"] is None and conv["sparse_flops"] is None
    assert (fc["dense_flops"], fc["sparse_flops"]) == (2000, 500)
    assert report.totals["dense_flops"] is None and report.totals["flop_ratio"] is None
    assert report.totals["kept"] == 304
    assert any("input_shape" in note for note in report.notes)
    assert "need input_shape" in report.to_text() and "unknown" in report.to_text()


def test_a_layer_the_forward_pass_skips_has_unknown_flops():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    report = mask_report(Branchy(), input_shape=(4,))
    assert report.rows[0]["dense_flops"] == 32 and report.rows[1]["dense_flops"] is None
    assert report.totals["dense_flops"] is None
    assert any("unused.weight" in note for note in report.notes)


@pytest.mark.parametrize("input_shape", [(3, 5, 5), None], ids=["with-input-shape", "without"])
def test_to_csv_reads_back(tmp_path, input_shape):
    report = mask_report(_tiny(), _tiny_masks(), input_shape=input_shape)
    path = tmp_path / "report.csv"
    report.to_csv(path)
    assert os.listdir(tmp_path) == ["report.csv"]  # written atomically: no temporary file left
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        rows = list(reader)
    assert [r["name"] for r in rows] == ["0.weight", "2.weight", "total"]  # one row per layer, then the totals
    assert rows[0]["shape"] == "4x3x3x3" and rows[0]["kept"] == "54" and float(rows[1]["density"]) == 0.25
    assert rows[2]["kept"] == "304" and rows[2]["total"] == "1108" and rows[2]["shape"] == ""
    assert rows[1]["dense_flops"] == "2000"
    assert rows[0]["dense_flops"] == ("5400" if input_shape else "")
    assert rows[2]["sparse_flops"] == ("3200" if input_shape else "")

    buffer = io.StringIO(newline="")
    report.to_csv(buffer)
    assert buffer.getvalue() == path.read_bytes().decode()  # the csv module's \r\n line ends in both


def test_to_csv_rejects_other_targets():
    with pytest.raises(TypeError, match=r"path_or_file: expected a path or an open text file, got int"):
        mask_report(_tiny()).to_csv(3)


@pytest.mark.parametrize("input_shape", [(3, 5, 5), None], ids=["with-input-shape", "without"])
def test_to_dict_is_json_serialisable(input_shape):
    report = mask_report(_tiny(), _tiny_masks(), input_shape=input_shape)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [r["name"] for r in data["rows"]] == ["0.weight", "2.weight"]
    assert data["rows"][0]["shape"] == [4, 3, 3, 3] and data["totals"]["kept"] == 304
    assert data["input_shape"] == (None if input_shape is None else [3, 5, 5])
    assert "bias" in data["flops_counted"]


def test_sparsified_model_without_masks():
    dense_report = mask_report(_tiny(), _tiny_masks(), input_shape=(3, 5, 5))
    sparse = sparsify(_tiny(), _tiny_masks())
    report = mask_report(sparse, input_shape=(3, 5, 5))
    assert [r["type"] for r in report.rows] == ["SparseConv2d", "SparseLinear"]
    strip = [{k: v for k, v in r.items() if k != "type"} for r in report.rows]
    assert strip == [{k: v for k, v in r.items() if k != "type"} for r in dense_report.rows]
    assert report.totals == dense_report.totals
    # Masks given for a sparse model override its own: here, keep everything.
    full = mask_report(sparse, {"0.weight": torch.ones(4, 3, 3, 3)}, input_shape=(3, 5, 5))
    assert full.rows[0]["kept"] == 108 and full.rows[1]["kept"] == 250


def test_masks_none_on_a_dense_model_keeps_everything_and_sees_torch_prune():
    model = _tiny()
    report = mask_report(model, input_shape=(3, 5, 5))
    assert all(r["kept"] == r["total"] and r["density"] == 1.0 for r in report.rows)
    assert report.totals["flop_ratio"] == 1.0
    prune.l1_unstructured(model[2], "weight", amount=0.3)
    assert mask_report(model).rows[1]["kept"] == 700


def test_masks_for_some_layers_leave_the_others_as_they_are():
    report = mask_report(_tiny(), {"2.weight": _tiny_masks()["2.weight"]}, input_shape=(3, 5, 5))
    assert [r["kept"] for r in report.rows] == [108, 250]


def test_report_restores_training_modes_and_removes_hooks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(100, 10))
    model.train()
    model[2].eval()  # a mixed state: restored per module, not with one model.train()
    modes = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    mask_report(model, input_shape=(3, 5, 5))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].running_mean, stats)  # ran in eval mode: BatchNorm statistics untouched
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_and_modes_restored_when_the_forward_fails():
    model = _tiny().train()
    with pytest.raises(ValueError, match=r"input_shape: a forward pass on zeros of shape \(1, 3, 4, 4\) failed"):
        mask_report(model, input_shape=(3, 4, 4))  # Flatten gives 64 features, the Linear wants 100
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_input():
    model = _tiny()
    with pytest.raises(KeyError, match=r"masks: '1.weight' is not the weight of a Linear or Conv2d layer of the "
                                       r"model; its prunable weights are \['0.weight', '2.weight'\]"):
        mask_report(model, {"1.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r"masks\['2.weight'\]: expected shape \(10, 100\), got \(100, 10\)"):
        mask_report(model, {"2.weight": torch.ones(100, 10)})
    with pytest.raises(ValueError, match=r"masks\['2.weight'\]: expected only 0 and 1"):
        mask_report(model, {"2.weight": torch.full((10, 100), 0.5)})
    with pytest.raises(TypeError, match=r"masks: expected a dict of weight name -> bool mask, got list"):
        mask_report(model, [torch.ones(10, 100)])
    with pytest.raises(TypeError, match=r"model: expected an nn.Module, got OrderedDict"):
        mask_report(model.state_dict())
    with pytest.raises(ValueError, match=r"model: a ReLU with no Linear or Conv2d layers has nothing to report"):
        mask_report(nn.ReLU())
    with pytest.raises(TypeError, match=r"input_shape: expected a tuple of ints \(one sample, no batch dimension\)"):
        mask_report(model, input_shape=(3, 5.0, 5))
    with pytest.raises(ValueError, match=r"input_shape: expected positive sizes, got \(3, 0, 5\)"):
        mask_report(model, input_shape=(3, 0, 5))
