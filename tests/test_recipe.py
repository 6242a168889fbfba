"""sparsekern.recipe: schedules, ghost soft neurons, ghost skip connections, the paper's label smoothing, and
the ToST object (presets, ghost removal, the final plain network, resuming)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekern
from sparsekern.masks import prunable_layers, random_mask
from sparsekern.models.ghost_sites import GhostSites
from sparsekern.recipe import (GhostActivation, LabelSmoothingLoss, Schedule, ToST, add_ghost_neurons,
                               drop_removed_parameters,
                               add_ghost_skips, count_ghost_skips, label_smoothing_loss, remove_ghost_neurons,
                               remove_ghost_skips, set_ghost_skip_alpha)


# ------------------------------------------------------------------------------------------ schedules
def test_schedules_values():
    lin = Schedule("linear", 1.0, 0.0, 0.3)
    assert lin(0.0) == 1.0 and lin(0.15) == pytest.approx(0.5) and lin(0.3) == 0.0 and lin(0.9) == 0.0
    cos = Schedule("cosine", 1.0, 0.0, 0.5)
    assert cos(0.0) == 1.0 and cos(0.25) == pytest.approx(0.5) and cos(0.5) == 0.0
    assert cos(0.1) > lin(0.1 * 0.3 / 0.5 * 0.5 / 0.3)  # flat start: above the line at 20 % of its way
    const = Schedule("constant", 1.0, 0.0, 1.0)
    assert const(0.0) == const(1.0) == 1.0
    assert Schedule.from_dict(lin.to_dict()) == lin


@pytest.mark.parametrize("kwargs,match", [({"kind": "step"}, "kind: expected one of"),
                                          ({"fraction": 0.0}, r"fraction: expected a number in \(0, 1\]"),
                                          ({"start": math.nan}, "start: expected a finite number")])
def test_schedule_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)
    with pytest.raises(ValueError, match=r"progress: expected the fraction of training done, in \[0, 1\]"):
        Schedule()(1.5)


# -------------------------------------------------------------------------------------- ghost neurons
@pytest.mark.parametrize("soft,fn", [("swish", lambda x: x * torch.sigmoid(x)),
                                     ("pswish", lambda x: x * torch.sigmoid(2.0 * x)),
                                     ("mish", lambda x: x * torch.tanh(F.softplus(x)))])
def test_ghost_activation_is_relu_at_zero_and_soft_at_one(soft, fn):
    x = torch.randn(1000, dtype=torch.float64) * 3
    act = GhostActivation(soft, beta=2.0)
    act.alpha = 0.0
    assert torch.equal(act(x), F.relu(x))
    act.alpha = 1.0
    assert torch.allclose(act(x), fn(x), rtol=1e-14, atol=0)
    act.alpha = 0.25
    assert torch.allclose(act(x), 0.75 * F.relu(x) + 0.25 * fn(x), rtol=1e-14, atol=1e-15)


def test_ghost_neurons_replace_and_restore_every_relu():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Sequential(nn.Linear(4, 4), nn.ReLU6()),
                          nn.Tanh())
    assert add_ghost_neurons(model, soft="mish") == 2
    assert isinstance(model[1], GhostActivation) and model[2][1].hard == "relu6"
    assert remove_ghost_neurons(model) == 2
    assert type(model[1]) is nn.ReLU and model[1].inplace and type(model[2][1]) is nn.ReLU6
    assert type(model[3]) is nn.Tanh
    with pytest.raises(ValueError, match="soft: expected one of"):
        add_ghost_neurons(model, soft="gelu")


# ---------------------------------------------------------------------------------------- ghost skips
class _Block(GhostSites):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.declare_ghost("ghost1", cin, cout, stride)
        self.declare_ghost("ghost2", cout, cout, 1)

    def forward(self, x):
        out = self.relu(self.add_ghost("ghost1", x, self.bn1(self.conv1(x))))
        return self.add_ghost("ghost2", out, self.bn2(self.conv2(out)))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Block(8, 8, 1), _Block(8, 16, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 5))


def test_ghost_skips_change_the_output_while_active_and_leave_nothing_behind():
    model = _net().eval()
    x = torch.randn(2, 3, 8, 8)
    plain = model(x)
    keys = set(model.state_dict())
    assert add_ghost_skips(model, alpha=1.0) == 4 and count_ghost_skips(model) == 4
    model.eval()
    branch = model[2].ghost1
    assert branch[0].stride == (2, 2) and bool((branch[0].weight == 1e-4).all())
    assert not torch.allclose(model(x), plain)
    assert any("ghost" in k for k in model.state_dict())
    assert all("ghost" not in name for name in prunable_layers(model))  # never pruned
    set_ghost_skip_alpha(model, 0.0)
    assert torch.equal(model(x), plain)
    assert remove_ghost_skips(model) == 4
    assert set(model.state_dict()) == keys and torch.equal(model(x), plain)


# --------------------------------------------------------------------------------------- label smoothing
def test_label_smoothing_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    targets = torch.tensor([0, 2])
    eps = 0.1
    log_p = logits - torch.logsumexp(logits, 1, keepdim=True)
    q = torch.full((2, 3), eps / 2, dtype=torch.float64)
    q[0, 0] = q[1, 2] = 1 - eps
    want = -(q * log_p).sum(1).mean()
    assert torch.allclose(label_smoothing_loss(logits, targets, eps), want, rtol=1e-14)
    assert torch.allclose(LabelSmoothingLoss(0.0)(logits, targets), F.cross_entropy(logits, targets), rtol=1e-14)
    # Not PyTorch's ε/C form:
    assert not torch.allclose(label_smoothing_loss(logits, targets, eps),
                              F.cross_entropy(logits, targets, label_smoothing=eps))


def test_label_smoothing_bad_input():
    with pytest.raises(ValueError, match=r"epsilon: expected a number in \[0, 1\)"):
        label_smoothing_loss(torch.zeros(2, 3), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="targets: expected int64 class indices of shape"):
        label_smoothing_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits: label smoothing needs at least 2 classes"):
        label_smoothing_loss(torch.zeros(2, 1), torch.tensor([0, 0]))


# ------------------------------------------------------------------------------------------------ ToST
def _masks(model, sparsity=0.9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: random_mask(layer.weight.shape, sparsity, generator=gen) for n, layer in prunable_layers(model).items()
            if n != "0.weight"}


def _train(recipe, model, steps, x, y, start=0, total=None):
    total = total or steps
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for it in range(start, start + steps):
        if recipe.step(it / total):
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # ghost parameters left
        opt.zero_grad()
        recipe.loss(model(x), y).backward()
        opt.step()
    return model


def test_tost_fades_and_removes_the_ghosts_and_finalizes_to_the_plain_sparse_network():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    model = _net()
    masks = _masks(model)
    recipe = ToST("tost", init="fan_in")
    model = recipe.prepare(model, masks)
    assert count_ghost_skips(model) == 4 and any(isinstance(m, GhostActivation) for m in model.modules())
    assert recipe.alphas() == {"ghost_neurons": 1.0, "ghost_skips": 1.0}
    _train(recipe, model, 10, x, y)
    assert count_ghost_skips(model) == 0 and not any(isinstance(m, GhostActivation) for m in model.modules())
    final = recipe.finalize(model).eval()
    # The same network built without ghosts, given the final weights, computes the same function.
    plain = sparsekern.sparsify(_net(seed=1), masks).eval()
    plain.load_state_dict(final.state_dict())
    assert set(plain.state_dict()) == set(final.state_dict())
    assert torch.equal(plain(x), final(x))
    for name, layer in prunable_layers(final).items():
        if name in masks:
            assert bool((layer.dense_weight()[~masks[name]] == 0).all())


def test_drop_removed_parameters_keeps_the_others_momentum():
    model = _net()
    recipe = ToST("tost", init=None)
    model = recipe.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    recipe.loss(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    opt.step()
    before = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters() if p in opt.state}
    n_params = len(list(model.parameters()))
    assert recipe.step(0.5)  # ghost skips removed
    assert drop_removed_parameters(opt, model) == n_params - len(list(model.parameters())) > 0
    kept = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in kept} == {id(p) for p in model.parameters()} and len(opt.state) == len(kept)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], before[id(p)]) for p in kept)
    opt.zero_grad()
    recipe.loss(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    opt.step()


def test_none_preset_is_default_training_with_the_masks():
    model = _net()
    recipe = ToST("none")
    model = recipe.prepare(model, _masks(model))
    assert count_ghost_skips(model) == 0 and not any(isinstance(m, GhostActivation) for m in model.modules())
    logits, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    assert torch.equal(recipe.loss(logits, y), F.cross_entropy(logits, y))


def test_paper_code_keeps_the_ghosts_and_finalize_says_so():
    model = _net()
    recipe = ToST("paper-code", init=None)
    model = recipe.prepare(model, _masks(model))
    recipe.step(0.99)
    assert recipe.alphas() == {"ghost_neurons": 1.0, "ghost_skips": 1.0}
    with pytest.warns(UserWarning, match="ghosts still active"):
        recipe.finalize(model)
    assert count_ghost_skips(model) == 4


def test_resuming_continues_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    base = _net()
    masks = _masks(base)
    # Uninterrupted: 20 steps (ghosts gone after 30 %).
    r1 = ToST("tost", init=None)
    m1 = r1.prepare(copy.deepcopy(base), masks)
    _train(r1, m1, 20, x, y)
    # Interrupted after 12 steps (past the removal), checkpointed, resumed in a fresh recipe and model.
    r2 = ToST("tost", init=None)
    m2 = r2.prepare(copy.deepcopy(base), masks)
    opt_state = None
    opt = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
    for it in range(12):
        if r2.step(it / 20):
            opt = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
        opt.zero_grad()
        r2.loss(m2(x), y).backward()
        opt.step()
    checkpoint = {"model": copy.deepcopy(m2.state_dict()), "recipe": r2.state_dict(),
                  "optimizer": copy.deepcopy(opt.state_dict())}
    r3 = ToST("tost", init=None)
    m3 = r3.prepare(copy.deepcopy(base), masks)
    r3.load_state_dict(checkpoint["recipe"])
    m3.load_state_dict(checkpoint["model"])
    assert r3.alphas() == r2.alphas() and count_ghost_skips(m3) == count_ghost_skips(m2) == 0
    opt3 = torch.optim.SGD(m3.parameters(), lr=0.05, momentum=0.9)
    opt3.load_state_dict(checkpoint["optimizer"])
    for it in range(12, 20):
        if r3.step(it / 20):
            opt3 = torch.optim.SGD(m3.parameters(), lr=0.05, momentum=0.9)
        opt3.zero_grad()
        r3.loss(m3(x), y).backward()
        opt3.step()
    del opt_state
    s1, s3 = m1.state_dict(), m3.state_dict()
    assert set(s1) == set(s3) and all(torch.equal(s1[k], s3[k]) for k in s1)


def test_tost_bad_arguments():
    with pytest.raises(ValueError, match="preset: expected one of"):
        ToST("fast")
    with pytest.raises(TypeError, match="ToST: unknown options"):
        ToST("tost", ghost=False)
    with pytest.raises(ValueError, match="init: expected one of"):
        ToST("tost", init="xavier")
    with pytest.raises(ValueError, match="data: the 'gradinit' init needs batches"):
        ToST("tost").prepare(_net())
    with pytest.raises(RuntimeError, match="step: call prepare"):
        ToST("tost").step(0.1)
    recipe = ToST("none")
    recipe.prepare(_net())
    recipe.step(0.5)
    with pytest.raises(ValueError, match="progress: expected a value >= the last one"):
        recipe.step(0.2)
    with pytest.raises(RuntimeError, match="load_state_dict: call prepare"):
        ToST("tost").load_state_dict({"progress": 0.5, "neurons_removed": True, "skips_removed": True})
    with pytest.raises(KeyError, match="state: missing 'progress'"):
        recipe.load_state_dict({})


def test_one_recipe_object_can_prepare_a_second_model():
    recipe = ToST("tost", init=None)
    first = recipe.prepare(_net())
    recipe.step(0.5)  # ghosts of the first model removed
    assert count_ghost_skips(first) == 0
    second = recipe.prepare(_net(seed=1))
    assert count_ghost_skips(second) == 4 and recipe.alphas() == {"ghost_neurons": 1.0, "ghost_skips": 1.0}


def test_tost_on_a_model_of_the_zoo_ends_as_the_plain_sparse_model():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    model = sparsekern.models.create("resnet20", input_size=8, in_channels=1)
    layers = prunable_layers(model, keep_first_conv_dense=True, keep_classifier_dense=True)
    gen = torch.Generator().manual_seed(0)
    masks = {n: random_mask(layer.weight.shape, 0.95, generator=gen) for n, layer in layers.items()}
    recipe = ToST("tost", init="fan_in")
    model = recipe.prepare(model, masks)
    assert count_ghost_skips(model) == 18
    assert set(prunable_layers(model)) == set(prunable_layers(sparsekern.models.create("resnet20")))
    _train(recipe, model, 4, x, y)
    final = recipe.finalize(model).eval()
    plain = sparsekern.sparsify(sparsekern.models.create("resnet20", input_size=8, in_channels=1), masks).eval()
    plain.load_state_dict(final.state_dict())
    assert torch.equal(plain(x), final(x))


def test_tost_runs_gradinit_on_the_masked_network_before_the_ghosts(monkeypatch):
    """GradInit sees the sparse network that remains after the ghosts fade (no ghost skip, plain ReLUs), with
    its default plain cross-entropy, and the ghosts are added after it."""
    from sparsekern.recipe import init as sparse_init

    seen = {}

    def record(model, data, **options):
        seen["skips"] = count_ghost_skips(model)
        seen["ghost_neurons"] = any(isinstance(m, GhostActivation) for m in model.modules())
        seen["options"] = options
        return {}

    monkeypatch.setattr(sparse_init, "gradinit_", record)
    model = _net()
    recipe = ToST("tost", gradinit_options={"iterations": 3})
    model = recipe.prepare(model, _masks(model), data=[(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))])
    assert seen == {"skips": 0, "ghost_neurons": False, "options": {"iterations": 3}}
    assert count_ghost_skips(model) == 4 and any(isinstance(m, GhostActivation) for m in model.modules())
