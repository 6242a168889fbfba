"""sparsekern.masks: build_masks (scope, granularity, exact counts, ties, current masks), prunable_layers,
random scores and ERK densities."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import sparsekern
from sparsekern.masks import (build_masks, current_masks, erk_densities, magnitude_scores, prunable_layers,
                              random_mask, random_scores)


def _scores(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight": torch.rand(shape, generator=gen, dtype=torch.float64) for i, shape in enumerate(shapes)}


def _kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def _total(masks):
    return sum(m.numel() for m in masks.values())


SHAPES = [(7, 123), (5, 3, 3, 3), (1, 1), (10, 4, 1, 1)]


# ------------------------------------------------------------------------------------ exact sparsity
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.98, 0.999])
def test_global_scope_keeps_exactly_the_target_count(sparsity):
    scores = _scores(*SHAPES)
    masks = build_masks(scores, sparsity, scope="global")
    total = _total(masks)
    assert _kept(masks) == round((1 - sparsity) * total)
    for name, m in masks.items():
        assert m.dtype == torch.bool and m.shape == scores[name].shape


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99])
def test_layer_scope_keeps_exactly_the_target_count_in_every_layer(sparsity):
    scores = _scores(*SHAPES)
    masks = build_masks(scores, sparsity, scope="layer")
    for name, m in masks.items():
        assert int(m.sum()) == round((1 - sparsity) * m.numel()), name


def test_layer_scope_takes_a_sparsity_per_layer():
    scores = _scores((10, 10), (4, 25))
    masks = build_masks(scores, {"l0.weight": 0.9, "l1.weight": 0.25}, scope="layer")
    assert int(masks["l0.weight"].sum()) == 10 and int(masks["l1.weight"].sum()) == 75


def test_global_scope_keeps_the_highest_scores_across_layers():
    scores = {"a.weight": torch.full((4, 5), 2.0) + torch.rand(4, 5), "b.weight": torch.rand(6, 5)}
    masks = build_masks(scores, 0.6, scope="global")  # keeps 20 of 50: exactly layer a
    assert masks["a.weight"].all() and not masks["b.weight"].any()
    # Every kept score is at least every pruned one.
    s = torch.cat([v.flatten() for v in scores.values()])
    k = torch.cat([m.flatten() for m in masks.values()])
    assert s[k].min() >= s[~k].max()


def test_ties_are_broken_by_position_and_the_result_is_deterministic():
    scores = {"a.weight": torch.ones(3, 4), "b.weight": torch.ones(2, 4)}
    masks = build_masks(scores, 0.5, scope="global")  # keep 10 of 20: the first 10 in order
    flat = torch.cat([m.flatten() for m in masks.values()])
    assert flat[:10].all() and not flat[10:].any()
    again = build_masks({k: v.clone() for k, v in scores.items()}, 0.5, scope="global")
    assert all(torch.equal(masks[k], again[k]) for k in masks)


# -------------------------------------------------------------------------------------- granularity
@pytest.mark.parametrize("shape,block", [((12, 16), (4, 4)), ((10, 13), (4, 4)), ((8, 3, 3, 3), (2, 9)),
                                         ((8, 6, 3, 3), (4, 2)), ((16, 32), (1, 8))], ids=str)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_block_masks_are_made_of_whole_tiles(shape, block, sparsity):
    scores = _scores(shape)
    mask = build_masks(scores, sparsity, granularity="block", block_size=block)["l0.weight"]
    bh, bw = block
    # Conv weights are tiled in their tap-major view (out, kH*kW*in).
    view = mask.movedim(1, -1).reshape(shape[0], -1) if mask.dim() > 2 else mask
    for r0, c0 in itertools.product(range(0, view.shape[0], bh), range(0, view.shape[1], bw)):
        tile = view[r0:r0 + bh, c0:c0 + bw]
        assert tile.all() or not tile.any(), (r0, c0)
    if view.shape[0] % bh == 0 and view.shape[1] % bw == 0:  # equal tiles: the count of tiles is exact
        assert int(mask.sum()) == round((1 - sparsity) * mask.numel() / (bh * bw)) * bh * bw
    else:  # the nearest a whole number of tiles reaches: within one tile
        assert abs(int(mask.sum()) - (1 - sparsity) * mask.numel()) <= bh * bw


def test_block_scores_are_reduced_with_the_chosen_reduction():
    # Two 1x2 blocks: (3, 3) and (5, 0). Sum: 6 < 5? no, 6 > 5 -> first kept. L2: sqrt(18)=4.24 < 5 -> second.
    scores = {"w.weight": torch.tensor([[3.0, 3.0, 5.0, 0.0]])}
    by_sum = build_masks(scores, 0.5, granularity="block", block_size=(1, 2), reduce="sum")["w.weight"]
    by_l2 = build_masks(scores, 0.5, granularity="block", block_size=(1, 2), reduce="l2")["w.weight"]
    assert by_sum.tolist() == [[True, True, False, False]]
    assert by_l2.tolist() == [[False, False, True, True]]
    # Mean is fair to a partial edge block: (1, 1 | 1.5) has means 1 and 1.5, sums 2 and 1.5.
    edge = {"w.weight": torch.tensor([[1.0, 1.0, 1.5]])}
    by_mean = build_masks(edge, 0.6, granularity="block", block_size=(1, 2), reduce="mean")["w.weight"]
    assert by_mean.tolist() == [[False, False, True]]


def test_channel_masks_keep_or_prune_whole_output_channels():
    scores = _scores((16, 4, 3, 3), (10, 20))
    masks = build_masks(scores, 0.75, granularity="channel", scope="layer")
    for m in masks.values():
        rows = m.reshape(m.shape[0], -1)
        assert (rows.all(1) | ~rows.any(1)).all()
    assert int(masks["l0.weight"].reshape(16, -1).all(1).sum()) == 4
    assert int(masks["l1.weight"].all(1).sum()) == round(0.25 * 10)


def test_kernel_masks_keep_all_taps_of_a_channel_pair_together():
    scores = _scores((6, 5, 3, 3), (4, 7))
    masks = build_masks(scores, 0.8, granularity="kernel", scope="global")
    conv = masks["l0.weight"].reshape(30, 9)
    assert (conv.all(1) | ~conv.any(1)).all()
    assert 0 < int(conv.all(1).sum()) < 30
    # For a Linear a kernel is one weight: the global count stays exact in weights (unit sizes 9 and 1).
    assert abs(_kept(masks) - round(0.2 * _total(masks))) <= 9


@pytest.mark.parametrize("shape", [(4, 16), (3, 10), (6, 3, 3, 3)], ids=str)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 4)])
def test_n_m_masks_keep_the_best_n_of_every_m(shape, n, m):
    scores = _scores(shape)
    mask = build_masks(scores, None, granularity="n:m", n_m=(n, m))["l0.weight"]
    s = scores["l0.weight"].reshape(shape[0], -1)
    view = mask.reshape(shape[0], -1)
    for r in range(view.shape[0]):
        for c0 in range(0, view.shape[1], m):
            group, group_scores = view[r, c0:c0 + m], s[r, c0:c0 + m]
            want = min(n, group.numel())
            assert int(group.sum()) == want
            best = torch.sort(group_scores, descending=True, stable=True).indices[:want]
            assert group[best].all()


def test_n_m_fixes_the_sparsity():
    scores = _scores((4, 16))
    assert int(build_masks(scores, 0.5, granularity="n:m", n_m=(2, 4))["l0.weight"].sum()) == 32
    with pytest.raises(ValueError, match="sparsity: N:M 2:4 fixes the sparsity at 0.5"):
        build_masks(scores, 0.9, granularity="n:m", n_m=(2, 4))


# ------------------------------------------------------------------------------------ current masks
@pytest.mark.parametrize("granularity,kw", [("unstructured", {}), ("block", {"block_size": 2}),
                                            ("n:m", {"n_m": (2, 4)})])
def test_current_masks_stay_pruned(granularity, kw):
    scores = _scores((8, 16), seed=1)
    first = build_masks(scores, 0.5 if granularity != "n:m" else None, granularity=granularity, **kw)
    fresh = _scores((8, 16), seed=2)  # new scores that would like to keep other weights
    sparsity = 0.75 if granularity != "n:m" else None
    second = build_masks(fresh, sparsity, granularity=granularity, current=first, **kw)
    assert not (second["l0.weight"] & ~first["l0.weight"]).any()
    if granularity == "unstructured":
        assert int(second["l0.weight"].sum()) == 32


def test_minus_infinity_is_an_ordinary_score_without_current_masks():
    # Log-scores may be -inf: ranked last, and kept when the target needs them (no "cannot regrow" error).
    scores = {"w": torch.tensor([[1.0, -math.inf, -math.inf, 2.0]])}
    assert build_masks(scores, 0.0)["w"].all()
    assert build_masks(scores, 0.25)["w"].tolist() == [[True, True, False, True]]
    nm = build_masks({"w": torch.tensor([[-math.inf, -math.inf, 1.0, -math.inf]])}, None, granularity="n:m",
                     n_m=(2, 4))
    assert int(nm["w"].sum()) == 2 and nm["w"][0, 2]


def test_pruning_cannot_regrow_weights():
    scores = _scores((10, 10))
    first = build_masks(scores, 0.8)
    with pytest.raises(ValueError, match="pruning cannot bring weights back"):
        build_masks(scores, 0.5, current=first)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_the_unit_interval_is_an_error(sparsity):
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        build_masks(_scores((4, 4)), sparsity)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"sparsity": "0.5"}, TypeError, "sparsity: expected a number"),
    ({"scope": "net"}, ValueError, "scope: expected one of"),
    ({"granularity": "row"}, ValueError, "granularity: expected one of"),
    ({"granularity": "block"}, ValueError, "block_size: granularity 'block' needs"),
    ({"granularity": "block", "block_size": (0, 2)}, ValueError, "block_size: expected two positive ints"),
    ({"block_size": 4}, ValueError, "block_size: only used with granularity 'block'"),
    ({"granularity": "n:m", "n_m": (4, 2), "sparsity": None}, ValueError, "n_m: expected n <= m"),
    ({"reduce": "max"}, ValueError, "reduce: expected one of"),
    ({"scope": "layer", "sparsity": {"l0.weight": 0.5}}, KeyError, "missing"),
    ({"current": {"nope.weight": torch.ones(4, 4, dtype=torch.bool)}}, KeyError, "current: masks for weights"),
    ({"current": {"l0.weight": torch.ones(3, 4, dtype=torch.bool)}}, ValueError, r"expected shape \(4, 4\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = {"sparsity": 0.5, **kwargs}
    sparsity = args.pop("sparsity")
    with pytest.raises(error, match=match):
        build_masks(_scores((4, 4), (3, 3)), sparsity, **args)


def test_bad_scores_raise_clear_errors():
    with pytest.raises(ValueError, match="scores: expected a non-empty dict"):
        build_masks({}, 0.5)
    with pytest.raises(TypeError, match="scores: expected a dict"):
        build_masks([torch.ones(2, 2)], 0.5)
    with pytest.raises(TypeError, match="scores: 'w' must be a floating tensor"):
        build_masks({"w": [1.0, 2.0]}, 0.5)
    with pytest.raises(ValueError, match="scores: 'w' contains NaN"):
        build_masks({"w": torch.tensor([[1.0, float("nan")]])}, 0.5)


# ----------------------------------------------------------------------------------- prunable layers
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.hidden = nn.Linear(4 * 4 * 4, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.body(self.stem(x)).flatten(1)
        return self.fc(torch.relu(self.hidden(x)))


def test_prunable_layers_in_module_order_with_options():
    net = _Net()
    assert list(prunable_layers(net)) == ["stem.weight", "body.0.weight", "hidden.weight", "fc.weight"]
    assert list(prunable_layers(net, keep_first_conv_dense=True, keep_classifier_dense=True)) == [
        "body.0.weight", "hidden.weight"]
    assert list(prunable_layers(net, ["fc.weight", "stem.weight"])) == ["stem.weight", "fc.weight"]
    with pytest.raises(KeyError, match="layers: 'body.1.weight' is not the weight of a Linear or Conv2d"):
        prunable_layers(net, ["body.1.weight"])
    with pytest.raises(ValueError, match="layers: expected 'all' or a list"):
        prunable_layers(net, "convs")
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        prunable_layers({"fc.weight": 1})


def test_magnitude_scores_and_masks_of_a_sparsified_model():
    net = _Net()
    first = build_masks(magnitude_scores(net), 0.5)
    sparsekern.sparsify(net, first)
    layers = prunable_layers(net)  # sparse layers are prunable too; their weight is dense_weight()
    assert all(torch.equal(current_masks(layers)[n], first[n]) for n in first)
    scores = magnitude_scores(net, layers)
    assert all(bool((scores[n][~first[n]] == 0).all()) for n in first)
    second = build_masks(scores, 0.75, current=current_masks(layers))
    assert _kept(second) == round(0.25 * _total(second))
    assert all(not (second[n] & ~first[n]).any() for n in first)


# --------------------------------------------------------------------------------- random and ERK
def test_random_scores_are_reproducible_and_give_uniform_random_masks():
    net = _Net()
    a = random_scores(net, seed=3)
    b = random_scores(net, seed=3)
    c = random_scores(net, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in a) and not torch.equal(a["fc.weight"], c["fc.weight"])
    masks = build_masks(a, 0.9, scope="layer")
    for name, m in masks.items():
        assert int(m.sum()) == round(0.1 * m.numel()), name
    with pytest.raises(ValueError, match="seed, generator: pass one"):
        random_scores(net, seed=1, generator=torch.Generator())


def test_erk_densities_follow_the_formula_and_the_budget():
    shapes = {"conv.weight": (64, 32, 3, 3), "fc1.weight": (256, 512), "fc2.weight": (100, 256)}
    dens = erk_densities(shapes, 0.9)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    eps = {n: dens[n] / raw[n] for n in shapes}
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-12)  # one epsilon for all
    kept = sum(dens[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.1 * sum(math.prod(s) for s in shapes.values()), rel=1e-12)


def test_erk_caps_densities_at_one_and_redistributes():
    shapes = {"tiny.weight": (2, 3), "big.weight": (400, 500)}
    dens = erk_densities(shapes, 0.5)
    assert dens["tiny.weight"] == 1.0
    total = 6 + 200_000
    assert 6 + dens["big.weight"] * 200_000 == pytest.approx(0.5 * total, rel=1e-12)
    assert all(0 < d <= 1 for d in erk_densities(shapes, 0.0).values())
    assert erk_densities(shapes, 0.0) == {"tiny.weight": 1.0, "big.weight": 1.0}
    uniform = erk_densities(shapes, 0.8, power=0.0)
    assert uniform["tiny.weight"] == pytest.approx(0.2) and uniform["big.weight"] == pytest.approx(0.2)


def test_erk_densities_build_random_masks_per_layer():
    net = _Net()
    layers = prunable_layers(net)
    dens = erk_densities({n: tuple(m.weight.shape) for n, m in layers.items()}, 0.8)
    masks = build_masks(random_scores(net, seed=0), {n: 1 - d for n, d in dens.items()}, scope="layer")
    for name, m in masks.items():
        assert int(m.sum()) == round(dens[name] * m.numel())
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        erk_densities({"w": (3, 3)}, 1.0)


def test_random_mask_still_works_as_before():
    assert int(random_mask((10, 10), 0.9).sum()) == 10


def test_conv_block_masks_fit_sparse_conv2d_block_size():
    """build_masks(granularity="block") -> sparsify(block_size=...) with the same blocks: the kernels' layout."""
    from torch import nn

    from sparsekern import SparseConv2d, sparsify
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 1))
    scores = {name: torch.rand(p.shape) for name, p in model.named_parameters() if name.endswith("weight")}
    masks = build_masks(scores, 0.75, granularity="block", block_size=(4, 4))
    sparsify(model, masks, block_size=4)
    assert all(isinstance(m, SparseConv2d) and m.block_size == (4, 4) for m in model)
    assert model(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)
