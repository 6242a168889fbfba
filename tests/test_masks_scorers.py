"""SNIP, GraSP and SynFlow scores: each against an independent computation (by hand or by autograd), GraSP's
sign convention, SynFlow's iterative masks (exact counts, no layer collapse), the model left exactly as it was,
and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsekern import SparseLinear
from sparsekern.masks import build_masks, magnitude_scores, prunable_layers
from sparsekern.masks import synflow as synflow_module
from sparsekern.masks.grasp import grasp_saliency, grasp_scores
from sparsekern.masks.snip import snip_scores
from sparsekern.masks.synflow import synflow_masks, synflow_scores


def _mlp(dtype=torch.float64):
    """3 → 4 (tanh) → 3 with biases: nonlinear, so the Hessian is not just the loss's."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)


def _batches(n=2, size=5, features=3, classes=3, dtype=torch.float64):
    return [(torch.randn(size, features, dtype=dtype), torch.randint(0, classes, (size,))) for _ in range(n)]


def _conv_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def _bn_net():
    """Linear + BatchNorm1d + Linear in train mode, with running stats, a frozen weight and a set .grad."""
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-2, 2)
    model[1].num_batches_tracked.fill_(7)
    model[0].bias.requires_grad_(False)
    model[3].weight.grad = torch.randn_like(model[3].weight)
    model.train()
    model[2].eval()  # one module in another mode than its parent: each flag must come back as it was
    return model


def _snapshot(model):
    return {
        "params": [(n, p, p.detach().clone(), p.dtype, p.requires_grad, None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters()],
        "buffers": [(n, b, b.clone(), b.dtype) for n, b in model.named_buffers()],
        "modes": [(m, m.training) for m in model.modules()],
    }


def _assert_unchanged(model, snap):
    params = list(model.named_parameters())
    assert [n for n, _ in params] == [s[0] for s in snap["params"]]
    for (name, p), (_, obj, value, dtype, requires_grad, grad) in zip(params, snap["params"]):
        assert p is obj and p.dtype == dtype and p.requires_grad == requires_grad, name
        assert torch.equal(p.detach(), value), name  # bit for bit
        if grad is None:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.equal(p.grad, grad), name
    buffers = list(model.named_buffers())
    assert [n for n, _ in buffers] == [s[0] for s in snap["buffers"]]
    for (name, b), (_, obj, value, dtype) in zip(buffers, snap["buffers"]):
        assert b is obj and b.dtype == dtype and torch.equal(b, value), name
    assert [m.training for m in model.modules()] == [t for _, t in snap["modes"]]


# ------------------------------------------------------------------------------------------------------ SNIP
def test_snip_single_linear_by_hand_with_two_batches():
    """Linear(3, 2) with cross-entropy: dL/dW = mean_n (softmax(z_n) − onehot(y_n)) x_nᵀ, summed over batches."""
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    data = [(torch.tensor([[1.0, 2.0, -1.0], [0.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([0, 1])),
            (torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64), torch.tensor([1]))]

    def grad_by_hand(x, y):
        p = torch.softmax(x @ model.weight.detach().T + model.bias.detach(), dim=1)
        return (p - F.one_hot(y, 2).double()).T @ x / len(x)

    g1, g2 = grad_by_hand(*data[0]), grad_by_hand(*data[1])
    w = model.weight.detach()
    one = snip_scores(model, data, batches=1)
    two = snip_scores(model, data, batches=2)
    assert list(two) == ["weight"] and two["weight"].dtype == torch.float64
    torch.testing.assert_close(one["weight"], (g1 * w).abs(), rtol=1e-12, atol=1e-14)
    # The gradients are summed first, then |g ⊙ w|: not the sum of per-batch saliencies.
    torch.testing.assert_close(two["weight"], ((g1 + g2) * w).abs(), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(two["weight"], (g1 * w).abs() + (g2 * w).abs())


def test_snip_mlp_matches_autograd_and_custom_loss():
    model = _mlp()
    data = _batches(n=3)

    def reference(loss_fn, batches):
        weights = [model[0].weight, model[2].weight]
        total = sum(loss_fn(model(x), y) for x, y in data[:batches])
        grads = torch.autograd.grad(total, weights)
        return [(g * w).abs().detach() for g, w in zip(grads, weights)]

    scores = snip_scores(model, data, batches=2)
    for got, want in zip(scores.values(), reference(F.cross_entropy, 2)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)

    def mse(outputs, targets):
        return ((outputs - F.one_hot(targets, 3).double()) ** 2).mean()

    scores = snip_scores(model, iter(data), batches=3, loss_fn=mse, layers=["2.weight"])
    assert list(scores) == ["2.weight"]
    torch.testing.assert_close(scores["2.weight"], reference(mse, 3)[1], rtol=1e-12, atol=1e-15)


def test_snip_and_grasp_leave_the_model_as_it_was():
    model = _bn_net()
    data = [(torch.randn(5, 6), torch.randint(0, 4, (5,))) for _ in range(2)]
    snap = _snapshot(model)
    snip_scores(model, data, batches=2)
    _assert_unchanged(model, snap)
    grasp_scores(model, data, batches=2)
    _assert_unchanged(model, snap)


# ----------------------------------------------------------------------------------------------------- GraSP
def test_grasp_hessian_gradient_matches_the_explicit_hessian():
    """Hg from double backprop equals H @ g with H from torch.autograd.functional.hessian on the flattened
    weights, the logits divided by the temperature, over two batches."""
    model = _mlp()
    data = _batches(n=2)
    temperature = 3.0
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    b1, b2 = model[0].bias.detach(), model[2].bias.detach()

    def loss(theta):
        v1, v2 = theta[: w1.numel()].view_as(w1), theta[w1.numel():].view_as(w2)
        return sum(F.cross_entropy((torch.tanh(x @ v1.T + b1) @ v2.T + b2) / temperature, y) for x, y in data)

    theta = torch.cat([w1.flatten(), w2.flatten()])
    g = torch.autograd.functional.jacobian(loss, theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    importance = (hessian @ g) * theta
    want = {"0.weight": importance[: w1.numel()].view_as(w1), "2.weight": importance[w1.numel():].view_as(w2)}

    got = grasp_scores(model, data, batches=2, temperature=temperature)
    assert list(got) == ["0.weight", "2.weight"]
    for name in want:
        assert got[name].dtype == torch.float64 and got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-16)
    saliency = grasp_saliency(model, data, batches=2, temperature=temperature)
    for name in want:
        torch.testing.assert_close(saliency[name], -want[name], rtol=1e-10, atol=1e-16)
    # The temperature is applied: another one gives other scores.
    other = grasp_scores(model, data, batches=2, temperature=1.0)
    assert not torch.allclose(other["0.weight"], got["0.weight"])


def test_grasp_sign_convention_prunes_the_largest_saliency():
    """One Linear(2, 2) without bias, x = (1, 1), target 0, CE of Wx / T. By hand: g = (p − e_0) xᵀ / T,
    H = (diag p − p pᵀ) ⊗ x xᵀ / T², so Hg = |x|² (diag p − p pᵀ)(p − e_0) xᵀ / T³ = c · [[−1, −1], [1, 1]]
    with c = 2 p_0 p_1² |x|² / T³ > 0, and S = −Hg ⊙ W = c · [[W00, W01], [−W10, −W11]]. With W00 = 3 the largest
    weight has the largest S: GraSP prunes it (magnitude pruning would keep it)."""
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.1], [-0.1, 0.2]], dtype=torch.float64))
    temperature = 2.0
    x = torch.ones(1, 2, dtype=torch.float64)
    data = [(x, torch.tensor([0]))]
    p = torch.softmax(model.weight.detach() @ x[0] / temperature, dim=0)
    c = 2 * p[0] * p[1] ** 2 * 2.0 / temperature ** 3
    want_s = c * torch.tensor([[3.0, 0.1], [0.1, -0.2]], dtype=torch.float64)

    saliency = grasp_saliency(model, data, temperature=temperature)["weight"]
    torch.testing.assert_close(saliency, want_s, rtol=1e-10, atol=1e-16)
    importance = grasp_scores(model, data, temperature=temperature)
    torch.testing.assert_close(importance["weight"], -want_s, rtol=1e-10, atol=1e-16)
    mask = build_masks(importance, 0.25)["weight"]  # prune 1 of 4: the largest S
    assert mask.tolist() == [[False, True], [True, True]]
    assert build_masks(magnitude_scores(model), 0.25)["weight"][0, 0]  # magnitude keeps it


# --------------------------------------------------------------------------------------------------- SynFlow
def _two_layer(w1, w2):
    model = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0], bias=False), nn.ReLU(),
                          nn.Linear(w2.shape[1], w2.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w1)
        model[2].weight.copy_(w2)
    return model


def test_synflow_two_layer_by_hand():
    """R = 1ᵀ|W2||W1|1: score(W1[i, j]) = |W1[i, j]| Σ_k |W2[k, i]|, score(W2[k, i]) = |W2[k, i]| Σ_j |W1[i, j]|."""
    w1 = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [-4.0, 0.25, 1.0, -1.0]])
    w2 = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
    model = _two_layer(w1, w2)
    scores = synflow_scores(model, (4,))
    assert [s.dtype for s in scores.values()] == [torch.float64] * 2
    want1 = w1.double().abs() * w2.double().abs().sum(0)[:, None]
    want2 = w2.double().abs() * w1.double().abs().sum(1)[None, :]
    torch.testing.assert_close(scores["0.weight"], want1, rtol=1e-15, atol=0)
    torch.testing.assert_close(scores["2.weight"], want2, rtol=1e-15, atol=0)
    # A mask multiplies into the weights: pruning W2[:, 0] cuts every path through hidden unit 0.
    mask2 = torch.ones(2, 3, dtype=torch.bool)
    mask2[:, 0] = False
    masked = synflow_scores(model, 4, masks={"2.weight": mask2})
    assert torch.equal(masked["0.weight"][0], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(masked["0.weight"][1:], want1[1:], rtol=1e-15, atol=0)
    torch.testing.assert_close(masked["2.weight"], want2 * mask2, rtol=1e-15, atol=0)


def test_synflow_scores_are_nonnegative_and_positive_on_live_paths():
    model = _conv_net()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)  # a negative mean is made positive too
    scores = synflow_scores(model, (3, 8, 8))
    for name, s in scores.items():
        assert (s > 0).all(), name
    # A dead path: zero a conv filter, and its weights and the classifier weights reading it score 0.
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0
        model[1].running_mean[2] = 0
        model[1].bias[2] = 0
    scores = synflow_scores(model, (3, 8, 8))
    assert (scores["0.weight"][2] == 0).all() and (scores["0.weight"][[0, 1, 3]] > 0).all()
    classifier = scores["4.weight"].view(5, 4, 64)
    assert (classifier[:, 2] == 0).all() and (classifier[:, [0, 1, 3]] > 0).all()


def test_synflow_masks_restore_the_model_exactly():
    model = _bn_net()
    snap = _snapshot(model)
    masks = synflow_masks(model, 0.8, (6,), rounds=20)
    assert all(m.dtype == torch.bool for m in masks.values())
    _assert_unchanged(model, snap)
    synflow_scores(model, (6,))
    _assert_unchanged(model, snap)


def test_synflow_masks_restore_the_model_when_a_round_raises(monkeypatch):
    model = _bn_net()
    snap = _snapshot(model)
    calls = []
    real = synflow_module.build_masks

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in round 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(synflow_module, "build_masks", failing)
    with pytest.raises(RuntimeError, match="boom in round 3"):
        synflow_masks(model, 0.8, (6,), rounds=10)
    _assert_unchanged(model, snap)


def test_synflow_restores_the_model_when_the_forward_raises():
    class Boom(Exception):
        pass

    class Fails(nn.Module):
        """Raises in the middle of the forward pass, after the abs/float64 tensors are swapped in."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 4:
                raise Boom
            return x

    model = _bn_net()
    model.insert(2, Fails())
    snap = _snapshot(model)
    with pytest.raises(Boom):
        synflow_masks(model, 0.8, (6,), rounds=10)
    assert model[2].calls == 4
    _assert_unchanged(model, snap)


def test_synflow_avoids_layer_collapse_where_magnitude_collapses():
    """20 → 20 → 20 → 10 without bias, the middle layer scaled by 1e-3: one-shot global magnitude pruning at 99%
    removes that whole layer (no path left), iterative SynFlow keeps every layer connected."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 20, bias=False), nn.ReLU(), nn.Linear(20, 20, bias=False), nn.ReLU(),
                          nn.Linear(20, 10, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    sparsity = 0.99  # keep 10 of 1000 weights

    def flow(masks):
        """1ᵀ |W3 ⊙ m3| |W2 ⊙ m2| |W1 ⊙ m1| 1: nonzero iff some input-to-output path is kept."""
        v = torch.ones(20, dtype=torch.float64)
        for i in (0, 2, 4):
            v = (model[i].weight.detach().double().abs() * masks[f"{i}.weight"]) @ v
        return float(v.sum())

    magnitude = build_masks(magnitude_scores(model), sparsity)
    assert not magnitude["2.weight"].any()  # collapsed
    assert flow(magnitude) == 0.0

    synflow = synflow_masks(model, sparsity, (20,), rounds=100)
    assert sum(int(m.sum()) for m in synflow.values()) == 10
    assert all(m.any() for m in synflow.values())
    assert flow(synflow) > 0.0


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.987])
def test_synflow_masks_exact_kept_count(sparsity):
    model = _conv_net()
    masks = synflow_masks(model, sparsity, (3, 8, 8), rounds=7)
    total = sum(m.numel() for m in masks.values())
    assert list(masks) == ["0.weight", "4.weight"]
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - sparsity) * total)
    per_layer = synflow_masks(model, sparsity, (3, 8, 8), rounds=7, scope="layer")
    for name, m in per_layer.items():
        assert int(m.sum()) == round((1 - sparsity) * m.numel()), name


def test_synflow_masks_coarse_granularity_and_progress_bar():
    model = _conv_net()
    masks = synflow_masks(model, 0.75, (3, 8, 8), rounds=5, granularity="channel", scope="layer", progress=True)
    for name, m in masks.items():
        rows = m.reshape(m.shape[0], -1)
        assert torch.equal(rows.any(1), rows.all(1)), name  # whole output channels
        assert 0 < int(rows.all(1).sum()) < m.shape[0], name


def test_synflow_masks_rounds_one_is_one_shot():
    model = _conv_net()
    one_shot = build_masks(synflow_scores(model, (3, 8, 8)), 0.9)
    assert all(torch.equal(a, b) for a, b in zip(one_shot.values(), synflow_masks(model, 0.9, (3, 8, 8),
                                                                                 rounds=1).values()))


# --------------------------------------------------------------------------------------------------- conv
def test_conv_smoke_all_scorers():
    model = _conv_net()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))) for _ in range(2)]
    shapes = {name: layer.weight.shape for name, layer in prunable_layers(model).items()}
    for scores in (snip_scores(model, data, batches=2), grasp_scores(model, data, batches=2),
                   synflow_scores(model, (3, 8, 8))):
        assert {n: s.shape for n, s in scores.items()} == shapes
        assert all(torch.isfinite(s).all() and s.dtype == torch.float64 for s in scores.values())
        assert build_masks(scores, 0.9)  # usable by the builder


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("scorer", [snip_scores, grasp_scores], ids=["snip", "grasp"])
def test_data_scorers_bad_data(scorer):
    model = _mlp()
    method = "SNIP" if scorer is snip_scores else "GraSP"
    with pytest.raises(ValueError, match=rf"data: {method} needs batches of \(inputs, targets\).*got None"):
        scorer(model, None)
    with pytest.raises(ValueError, match=rf"data: {method} needs batches of \(inputs, targets\).*empty"):
        scorer(model, [])
    with pytest.raises(ValueError, match="batches: expected an int >= 1, got 0"):
        scorer(model, _batches(), batches=0)
    with pytest.raises(ValueError, match="data: batches=3 asks for 3 batches, but data gave only 2"):
        scorer(model, _batches(n=2), batches=3)
    x, y = _batches(n=1)[0]
    with pytest.raises(TypeError, match=r"data: .*single \(inputs, targets\) pair; wrap it in a list"):
        scorer(model, (x, y))
    with pytest.raises(TypeError, match=r"data: batch 0 is not an \(inputs, targets\) pair"):
        scorer(model, [x])
    with pytest.raises(ValueError, match="loss_fn: the loss of batch 0 is nan"):
        scorer(model, [(x * float("nan"), y)])


def test_grasp_bad_temperature():
    with pytest.raises(ValueError, match="temperature: expected a positive finite number, got 0"):
        grasp_scores(_mlp(), _batches(), temperature=0)
    with pytest.raises(TypeError, match="temperature: expected a positive number, got str"):
        grasp_scores(_mlp(), _batches(), temperature="200")


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_synflow_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\), got"):
        synflow_masks(_mlp(), sparsity, (3,))


def test_synflow_bad_rounds_input_shape_and_granularity():
    model = _mlp()
    with pytest.raises(ValueError, match="rounds: expected an int >= 1, got 0"):
        synflow_masks(model, 0.5, (3,), rounds=0)
    for bad in [(), (0,), (3, -1), "abc", None, (3.0,)]:
        with pytest.raises(ValueError, match="input_shape: expected"):
            synflow_scores(model, bad)
    with pytest.raises(ValueError, match=r"input_shape: the model failed on an all-ones float64 input of shape "
                                         r"\(1, 5\)"):
        synflow_masks(model, 0.5, (5,))  # the model takes 3 features
    with pytest.raises(ValueError, match="granularity: 'n:m' fixes the sparsity"):
        synflow_masks(model, 0.5, (3,), granularity="n:m", n_m=(2, 4))
    with pytest.raises(ValueError, match="scope: expected one of"):
        synflow_masks(model, 0.5, (3,), scope="model")
    with pytest.raises(KeyError, match="masks: "):
        synflow_scores(model, (3,), masks={"nope.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: expected shape \(4, 3\)"):
        synflow_scores(model, (3,), masks={"0.weight": torch.ones(3, 4, dtype=torch.bool)})


def _all_scorers():
    data = _batches()
    return [("snip", lambda m, **kw: snip_scores(m, data, **kw)),
            ("grasp", lambda m, **kw: grasp_scores(m, data, **kw)),
            ("synflow_scores", lambda m, **kw: synflow_scores(m, (3,), **kw)),
            ("synflow_masks", lambda m, **kw: synflow_masks(m, 0.5, (3,), rounds=2, **kw))]


@pytest.mark.parametrize("name, scorer", _all_scorers(), ids=[n for n, _ in _all_scorers()])
def test_unknown_layer_name_and_sparse_layer(name, scorer):
    model = _mlp()
    with pytest.raises(KeyError, match="layers: 'fc.weight' is not the weight of a Linear or Conv2d layer"):
        scorer(model, layers=["fc.weight"])
    model[2] = SparseLinear(4, 3, dtype=torch.float64, mask=torch.rand(3, 4) < 0.5)
    with pytest.raises(TypeError, match=r"layers: '2.weight' is a SparseLinear; .* scores a dense model: score it "
                                        r"before sparsekern.sparsify, or convert the layer with .to_dense\(\)"):
        scorer(model)
    # Leaving the sparse layer out is fine for the data scorers (their gradients flow through it).
    if name in ("snip", "grasp"):
        assert list(scorer(model, layers=["0.weight"])) == ["0.weight"]
