"""sparsekern.recipe.init: He init over each unit's kept fan-in, and GradInit's learnt per-tensor scales."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsekern import SparseConv2d, SparseLinear, sparsify
from sparsekern.masks import random_mask
from sparsekern.recipe.init import gradinit_, is_ghost_name, masked_fan_in_init_


@pytest.fixture(autouse=True)
def _one_thread():
    """These layers are tiny: on a loaded 2-core machine two OpenMP threads spin-wait on each other in every
    op (measured: 60 s for this file with 2 threads, 8 s with 1). The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit_mean_squares(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept fan-in, mean of w² over the kept weights) per output unit of a sparse layer."""
    mask = layer.mask.reshape(layer.mask.shape[0], -1)
    weight = layer.dense_weight().detach().reshape(mask.shape)
    fan = mask.sum(1)
    return fan, (weight.pow(2) * mask).sum(1) / fan.clamp(min=1)


# ---------------------------------------------------------------------------------------- masked fan-in

def test_fan_in_init_gives_unit_preactivation_second_moment():
    """98 % sparse 4096 -> 256, x = relu(N(0, 1)) (E[x²] = 1/2): E[y²] = gain² · n_o · (1 / n_o) · E[x²] = 1.

    The second moment, not the batch variance: He's derivation is over weights and inputs, where y has mean 0;
    for fixed weights the batch mean of y is E[x] · Σw ≠ 0. Pooled over units, within 4 standard errors."""
    layer = SparseLinear(4096, 256, mask=random_mask((256, 4096), 0.98))
    stats = masked_fan_in_init_(layer, generator=torch.Generator().manual_seed(0))
    x = torch.relu(torch.randn(2048, 4096))
    with torch.no_grad():
        per_unit = layer(x).pow(2).mean(0)
    standard_error = per_unit.std() / math.sqrt(per_unit.numel())
    assert abs(per_unit.mean().item() - 1.0) < 4 * standard_error.item()
    assert standard_error < 0.05  # the check has teeth: nn.Linear's default init gives E[y²] ≈ 0.003 here
    assert torch.all(layer.bias == 0)
    fan, _ = _unit_mean_squares(layer)
    assert stats["weight"]["fan_in_min"] == fan.min() and stats["weight"]["fan_in_max"] == fan.max()
    assert stats["weight"]["fan_in_mean"] == pytest.approx(layer.nnz / 256)
    assert stats["weight"]["skipped_units"] == 0


def test_fan_in_init_weight_variance_is_two_over_kept_fan_in():
    """Units kept with fan-ins from 32 to 1024: log E[w²] against log n_o has slope −1 and E[w²] · n_o = 2."""
    out_features, in_features = 200, 2048
    fans = torch.logspace(math.log10(32), math.log10(1024), out_features).round().long()
    mask = torch.zeros(out_features, in_features, dtype=torch.bool)
    for row, fan in enumerate(fans.tolist()):
        mask[row, torch.randperm(in_features)[:fan]] = True
    layer = SparseLinear(in_features, out_features, mask=mask)
    masked_fan_in_init_(layer)
    fan, mean_square = _unit_mean_squares(layer)
    assert torch.equal(fan, fans)
    # Least squares of log E[w²] on log n_o. Noise in log E[w²] is about sqrt(2 / n_o), so the slope's standard
    # error is ~0.01; a dense-fan-in (uniform) init would give slope 0.
    log_fan, log_ms = fan.double().log(), mean_square.double().log()
    slope = ((log_fan - log_fan.mean()) * (log_ms - log_ms.mean())).sum() / (log_fan - log_fan.mean()).pow(2).sum()
    assert abs(slope.item() + 1.0) < 0.05
    # E[w²] · n_o / 2 has mean 1 and standard deviation sqrt(2 / n_o) per unit: ~0.01 pooled.
    ratio = (mean_square.double() * fan / 2).mean().item()
    assert abs(ratio - 1.0) < 0.04
    assert torch.all(layer.dense_weight().detach()[~mask] == 0)


def test_fan_in_init_keeps_zeros_and_skips_fully_pruned_units():
    mask = random_mask((16, 40), 0.8)
    mask[3] = False  # a unit with no kept weight
    mask[7] = False
    mask[0, :] = True  # and a dense one
    layer = SparseLinear(40, 16, mask=mask)
    stats = masked_fan_in_init_(layer)["weight"]
    dense = layer.dense_weight().detach()
    assert torch.isfinite(layer.weight_values).all()
    assert torch.all(dense[~mask] == 0)
    assert torch.all(dense[mask] != 0)  # every kept weight is drawn (a normal draw is never exactly 0)
    assert stats["skipped_units"] == 2 and stats["fan_in_min"] == 0 and stats["fan_in_max"] == 40
    assert stats["std_max"] == pytest.approx(math.sqrt(2 / mask[mask.sum(1) > 0].sum(1).min().item()))


def test_fan_in_init_conv_counts_channels_times_kernel_taps():
    """SparseConv2d 64 -> 128, 3x3, 95 %: fan-in over C_in · kH · kW per output channel, E[y²] = 1 again."""
    mask = random_mask((128, 64, 3, 3), 0.95)
    conv = SparseConv2d(64, 128, 3, mask=mask)
    stats = masked_fan_in_init_(conv)["weight"]
    fan, mean_square = _unit_mean_squares(conv)
    assert stats["fan_in_mean"] == pytest.approx(mask.sum().item() / 128)
    assert stats["fan_in_min"] == fan.min() and stats["fan_in_max"] == fan.max()
    ratio = mean_square.double() * fan / 2  # per channel: mean 1, standard deviation sqrt(2 / n_o) ≈ 0.26
    assert abs(ratio.mean().item() - 1.0) < 5 * ratio.std().item() / math.sqrt(128)
    x = torch.relu(torch.randn(64, 64, 10, 10))
    with torch.no_grad():
        per_channel = conv(x).pow(2).mean((0, 2, 3))
    assert abs(per_channel.mean().item() - 1.0) < 4 * per_channel.std().item() / math.sqrt(128)
    assert torch.all(conv.dense_weight().detach()[~mask] == 0)


def test_fan_in_init_grouped_conv_and_dense_layers():
    channels_last = nn.Conv2d(16, 32, 3).to(memory_format=torch.channels_last)
    masked_fan_in_init_(channels_last)
    assert channels_last.weight.detach().pow(2).mean().item() == pytest.approx(2 / 144, rel=0.1)
    grouped = SparseConv2d(8, 16, 3, groups=4, mask=random_mask((16, 2, 3, 3), 0.5))
    stats = masked_fan_in_init_(grouped)["weight"]
    assert stats["fan_in_max"] <= 2 * 9  # C_in / groups · kH · kW
    dense = nn.Linear(1000, 300)
    stats = masked_fan_in_init_(dense, generator=torch.Generator().manual_seed(3))["weight"]
    assert stats["fan_in_min"] == stats["fan_in_max"] == 1000
    assert dense.weight.detach().pow(2).mean().item() == pytest.approx(2 / 1000, rel=0.02)
    assert torch.all(dense.bias == 0)


def test_fan_in_init_honours_torch_prune_masks():
    layer = nn.Linear(400, 50)
    mask = random_mask((50, 400), 0.9)
    torch.nn.utils.prune.custom_from_mask(layer, "weight", mask)
    pruned_before = layer.weight_orig.detach()[~mask].clone()
    masked_fan_in_init_(layer)
    assert torch.equal(layer.weight_orig.detach()[~mask], pruned_before)  # only kept positions are written
    kept = layer.weight_orig.detach()[mask]
    assert kept.pow(2).mean().item() == pytest.approx(2 / 40, rel=0.15)  # fan-in 40 = 10 % of 400


def test_fan_in_init_is_reproducible_with_a_generator():
    mask = random_mask((32, 64), 0.9)
    a, b = SparseLinear(64, 32, mask=mask), SparseLinear(64, 32, mask=mask)
    masked_fan_in_init_(a, generator=torch.Generator().manual_seed(5))
    masked_fan_in_init_(b, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.weight_values, b.weight_values)


class _WithGhost(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.ghost1 = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)) + 0.5 * self.ghost1(x))
        return self.head(y.mean((2, 3)))


def test_fan_in_init_skips_ghost_modules_by_default():
    model = _WithGhost()
    before = copy.deepcopy(model.ghost1.state_dict())
    stats = masked_fan_in_init_(model)
    assert set(stats) == {"conv.weight", "head.weight"}
    for key, value in model.ghost1.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert is_ghost_name("layer1.0.ghost_conv1.0") and not is_ghost_name("layer1.0.conv1")
    assert "ghost1.0.weight" in masked_fan_in_init_(model, exclude=None)
    assert set(masked_fan_in_init_(model, layers=["ghost1.0.weight"])) == {"ghost1.0.weight"}  # named: kept


def test_fan_in_init_bad_input():
    layer = SparseLinear(8, 4)
    with pytest.raises(TypeError, match="model"):
        masked_fan_in_init_("not a model")
    with pytest.raises(ValueError, match="nonlinearity"):
        masked_fan_in_init_(layer, nonlinearity="swish")
    with pytest.raises(TypeError, match="nonlinearity"):
        masked_fan_in_init_(layer, nonlinearity=2.0)
    with pytest.raises(KeyError, match="fc.weight"):
        masked_fan_in_init_(layer, layers=["fc.weight"])
    with pytest.raises(TypeError, match="layers"):
        masked_fan_in_init_(layer, layers="weight")
    with pytest.raises(TypeError, match="generator"):
        masked_fan_in_init_(layer, generator=0)
    with pytest.raises(TypeError, match="exclude"):
        masked_fan_in_init_(layer, exclude="ghost")


# --------------------------------------------------------------------------------------------- GradInit

_TEACHER = torch.Generator().manual_seed(11)
_W_TEACHER = torch.randn(20, 5, generator=_TEACHER)


def _batches(count: int, seed: int, batch: int = 64, dtype=torch.float32):
    """A fixed synthetic classification problem: the argmax of a random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(batch, 20, generator=generator, dtype=torch.float64)
        out.append((x.to(dtype), (x @ _W_TEACHER.double()).argmax(1)))
    return out


def _sparse_mlp(batch_norm: bool = True, backend: str = "auto", dtype=torch.float32) -> nn.Module:
    """20 -> 64 (-> BatchNorm) -> 64 -> 5 with ReLU, 90 % sparse, sparsity-aware He init."""
    generator = torch.Generator().manual_seed(7)
    layers = [nn.Linear(20, 64), nn.BatchNorm1d(64) if batch_norm else nn.Identity(), nn.ReLU(),
              nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)]
    model = nn.Sequential(*layers).to(dtype)
    masks = {f"{i}.weight": random_mask(layer.weight.shape, 0.9, generator=generator)
             for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)}
    model = sparsify(model, masks, backend=backend)
    masked_fan_in_init_(model, generator=generator)
    return model


def _step_directions(model: nn.Module, batch) -> list[torch.Tensor]:
    """g / ‖g‖₂ per trainable parameter, g = ∇L(θ; batch), in train mode."""
    model = copy.deepcopy(model).train()
    x, y = batch
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [p for p in model.parameters() if p.requires_grad])
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return [g / norm for g in grads]


def _post_step_loss(model: nn.Module, pairs, step_size: float, directions=None) -> float:
    """Mean over (batch 1, batch 2) pairs of L(θ − η d; batch 2) in train mode, d = g / ‖g‖₂ with
    g = ∇L(θ; batch 1), or the given ``directions`` (one pair only)."""
    assert directions is None or len(pairs) == 1, "fixed directions belong to one batch pair"
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for (x1, y1), (x2, y2) in pairs:
        saved = [p.detach().clone() for p in params]
        step = directions if directions is not None else _step_directions(model, (x1, y1))
        with torch.no_grad():
            for p, d in zip(params, step):
                p.sub_(step_size * d)
            total += F.cross_entropy(model(x2), y2).item()
            for p, s in zip(params, saved):
                p.copy_(s)
    return total / len(pairs)


def _pairs(batches):
    return list(zip(batches[::2], batches[1::2]))


def _fixed_direction_derivatives(model: nn.Module, b1, b2, names, step_size: float, h: float) -> dict:
    """Parameter name → central difference, over that parameter's scale, of L(s·θ − η·d; b2) with the step's
    direction d held at its value for the unscaled model (GradInit's stop-gradient), in float64."""
    directions = _step_directions(model, b1)
    derivatives = {}
    for name in names:
        losses = []
        for factor in (1 + h, 1 - h):
            scaled = copy.deepcopy(model)
            with torch.no_grad():
                dict(scaled.named_parameters())[name].mul_(factor)
            losses.append(_post_step_loss(scaled, [(b1, b2)], step_size, directions))
        derivatives[name] = (losses[0] - losses[1]) / (2 * h)
    return derivatives


def test_gradinit_scales_each_tensor_and_keeps_pruned_weights_zero():
    model = _sparse_mlp()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = gradinit_(model, _batches(8, seed=1), iterations=10, lr=0.05, step_size=0.5, min_scale=0.6)
    scales = result["scales"]
    assert set(scales) == set(before)  # every weight_values and bias, BatchNorm's weight and bias included
    assert all(s >= 0.6 for s in scales.values())
    assert len(result["objective"]) == len(result["grad_norm"]) == 10
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), before[name] * scales[name], rtol=1e-6, atol=0), name
        assert p.grad is None, name  # only the scales got gradients
    changed = [name for name in scales if name.endswith("weight_values") and abs(scales[name] - 1) > 1e-3]
    assert changed, scales
    for i in (0, 3, 5):
        layer = model[i]
        assert torch.all(layer.dense_weight().detach()[~layer.mask] == 0)
        nonzero = before[f"{i}.weight_values"] != 0
        ratio = layer.weight_values.detach()[nonzero] / before[f"{i}.weight_values"][nonzero]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)  # one scale per tensor


def test_gradinit_lowers_the_post_step_loss_on_held_out_batches():
    model = _sparse_mlp()
    held_out = _pairs(_batches(16, seed=2))
    loss_before = _post_step_loss(model, held_out, 0.5)
    result = gradinit_(model, _batches(8, seed=1), iterations=30, lr=0.02, step_size=0.5, gradient_norm_bound=100)
    loss_after = _post_step_loss(model, held_out, 0.5)
    assert loss_after < loss_before - 0.02, (loss_before, loss_after)
    assert all(g <= 100 for g in result["grad_norm"])  # the step branch ran throughout


def test_gradinit_minimises_the_gradient_norm_above_the_bound():
    model = _sparse_mlp(batch_norm=False)
    data = _batches(2, seed=3)
    result = gradinit_(model, data, iterations=20, lr=0.02, gradient_norm_bound=1e-4)
    assert result["objective"] == result["grad_norm"]  # ‖g‖₂ > γ throughout: the objective is ‖g‖₂
    assert result["grad_norm"][-1] < 0.8 * result["grad_norm"][0]


def test_gradinit_hypergradient_sign_matches_finite_differences():
    """One Adam step moves each scale by −lr · sign(∂objective/∂s); the sign, from central differences of the
    objective computed independently in float64, must agree for every scale with a clear derivative. The
    step's direction is held at its value for the unscaled model (GradInit's stop-gradient)."""
    model = _sparse_mlp(dtype=torch.float64)
    (b1, b2), = _pairs(_batches(2, seed=4, dtype=torch.float64))
    lr, step_size, h = 1e-3, 0.5, 1e-5
    scales = gradinit_(copy.deepcopy(model), [b1, b2], iterations=1, lr=lr, step_size=step_size,
                       gradient_norm_bound=100)["scales"]
    checked = 0
    for name, derivative in _fixed_direction_derivatives(model, b1, b2, scales, step_size, h).items():
        if abs(derivative) > 1e-4:
            assert scales[name] == pytest.approx(1 - lr * math.copysign(1, derivative), abs=1e-3 * lr), name
            checked += 1
    assert checked >= 4, scales


def test_gradinit_hypergradient_matches_finite_differences_of_the_first_order_objective(monkeypatch):
    """With SGD in place of Adam one step moves each scale by −lr · ∂objective/∂s, so the size of the
    hypergradient shows, not only its sign: it must be the central difference of L(s·θ − η·d; B₂) with the
    direction d held fixed (the official first-order step). Differentiating through d as well (second order)
    gives values 1-60 % off on this model, far outside the tolerance."""
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: torch.optim.SGD(params, lr=lr))
    model = _sparse_mlp(dtype=torch.float64)
    (b1, b2), = _pairs(_batches(2, seed=4, dtype=torch.float64))
    lr, step_size, h = 0.1, 0.5, 1e-5
    scales = gradinit_(copy.deepcopy(model), [b1, b2], iterations=1, lr=lr, step_size=step_size,
                       gradient_norm_bound=100, min_scale=1e-6)["scales"]
    checked = 0
    for name, derivative in _fixed_direction_derivatives(model, b1, b2, scales, step_size, h).items():
        hypergradient = (1 - scales[name]) / lr
        assert hypergradient == pytest.approx(derivative, rel=1e-4, abs=1e-9), name
        checked += abs(derivative) > 1e-4
    assert checked >= 4, scales


def test_gradinit_sparse_and_dense_backends_agree():
    """Double backward through the sparse kernels and through the dense fallback: the same scales."""
    data = _batches(4, seed=5, dtype=torch.float64)
    results = [gradinit_(_sparse_mlp(batch_norm=False, backend=backend, dtype=torch.float64), data,
                         iterations=5, lr=0.02, step_size=0.5, gradient_norm_bound=100)
               for backend in ("sparse", "dense")]
    sparse, dense = (r["scales"] for r in results)
    for name in sparse:
        assert sparse[name] == pytest.approx(dense[name], abs=1e-9), name
    assert results[0]["objective"] == pytest.approx(results[1]["objective"], rel=1e-12)


@pytest.mark.parametrize("start", ["eval", "train", "mixed"])
def test_gradinit_restores_running_stats_and_train_flags(start):
    model = _sparse_mlp()
    model.train()
    with torch.no_grad():
        for x, _ in _batches(3, seed=6):  # non-trivial running stats
            model(x)
    if start == "eval":
        model.eval()
    elif start == "mixed":
        model[1].eval()
    flags = [m.training for m in model.modules()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    gradinit_(model, _batches(4, seed=1), iterations=3)
    assert [m.training for m in model.modules()] == flags
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name


def test_gradinit_runs_batch_norm_in_train_mode():
    """From an eval-mode model the objective still uses batch statistics (running stats are ignored)."""
    data = _batches(2, seed=8)
    results = []
    for mode in ("train", "eval"):
        model = _sparse_mlp()
        with torch.no_grad():
            model[1].running_mean.fill_(3.0)  # would change every output in eval mode
        model.train(mode == "train")
        results.append(gradinit_(model, data, iterations=2)["objective"])
    assert results[0] == results[1]


def test_gradinit_cycles_data_two_batches_per_iteration():
    class Counting:
        def __init__(self, batches):
            self.batches, self.passes, self.served = batches, 0, 0

        def __iter__(self):
            self.passes += 1
            for batch in self.batches:
                self.served += 1
                yield batch

    data = Counting(_batches(4, seed=1))
    gradinit_(_sparse_mlp(), data, iterations=3)  # 6 batches: one full pass and half of another
    assert data.served == 6 and data.passes == 2
    one_shot = iter(_batches(1, seed=1))  # a one-shot iterator shorter than needed is replayed
    assert len(gradinit_(_sparse_mlp(), one_shot, iterations=3)["objective"]) == 3


def test_gradinit_skips_ghost_modules_and_honours_layers():
    model = _WithGhost()
    data = [(torch.randn(8, 4, 6, 6), torch.randint(0, 3, (8,))) for _ in range(2)]
    ghost_before = copy.deepcopy(model.ghost1.state_dict())
    scales = gradinit_(model, data, iterations=2)["scales"]
    assert set(scales) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.weight", "head.bias"}
    for key, value in model.ghost1.state_dict().items():
        assert torch.equal(value, ghost_before[key]), key
    scales = gradinit_(model, data, iterations=2, layers=["head.weight"])["scales"]
    assert set(scales) == {"head.weight", "head.bias"}
    assert "ghost1.0.weight" in gradinit_(model, data, iterations=1, exclude=None)["scales"]


def test_gradinit_progress_bar(capsys):
    result = gradinit_(_sparse_mlp(), _batches(2, seed=1), iterations=2, progress=True)
    assert len(result["objective"]) == 2
    assert "GradInit" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, match", [
    ({"data": None}, TypeError, "data"),
    ({"data": 3}, TypeError, "data"),
    ({"data": []}, ValueError, "data"),
    ({"data": iter([])}, ValueError, "data"),
    ({"data": [torch.zeros(2, 20)]}, TypeError, "data"),
    ({"iterations": 0}, ValueError, "iterations"),
    ({"iterations": 2.0}, TypeError, "iterations"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": -1e-3}, ValueError, "lr"),
    ({"step_size": 0}, ValueError, "step_size"),
    ({"gradient_norm_bound": -1.0}, ValueError, "gradient_norm_bound"),
    ({"gradient_norm_bound": float("inf")}, ValueError, "gradient_norm_bound"),
    ({"min_scale": 0.0}, ValueError, "min_scale"),
    ({"min_scale": 1.5}, ValueError, "min_scale"),
    ({"min_scale": "0.1"}, TypeError, "min_scale"),
    ({"loss_fn": "cross_entropy"}, TypeError, "loss_fn"),
    ({"layers": ["fc.weight"]}, KeyError, "fc.weight"),
    ({"progress": 1}, TypeError, "progress"),
])
def test_gradinit_bad_input(kwargs, error, match):
    model = _sparse_mlp().eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    arguments = {"data": _batches(2, seed=1), "iterations": 2, **kwargs}
    data = arguments.pop("data")
    with pytest.raises(error, match=match):
        gradinit_(model, data, **arguments)
    assert not any(m.training for m in model.modules())  # the flags are restored after a failure too
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
