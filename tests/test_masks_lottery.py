"""sparsekern.masks.iterative_magnitude_pruning: the sparsity schedule, exact rewinding, nested masks,
pruned weights staying zero while training, and bad arguments."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekern import SparseLinear
from sparsekern.masks import iterative_magnitude_pruning, prunable_layers
from sparsekern.masks.prunable import weight_of


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


class _Trainer:
    """A few epochs of SGD with momentum and weight decay on fixed data; records what each round saw."""

    def __init__(self, epochs=3, steps=4):
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 12, generator=gen)
        self.y = torch.randint(0, 4, (32,), generator=gen)
        self.epochs, self.steps = epochs, steps
        self.start_weights, self.end_weights, self.epoch_states, self.contexts = [], [], [], []

    def __call__(self, model, context):
        self.contexts.append(context)
        self.start_weights.append(_dense_weights(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        for epoch in range(1, self.epochs + 1):
            for _ in range(self.steps):
                opt.zero_grad()
                nn.functional.cross_entropy(model(self.x), self.y).backward()
                opt.step()
            if context.round == 0:
                self.epoch_states.append(_dense_weights(model))
            context.epoch_done(epoch)
        self.end_weights.append(_dense_weights(model))
        return {"round": context.round}


def _dense_weights(model):
    return {name: weight_of(layer).clone() for name, layer in prunable_layers(model).items()}


def test_rounds_reach_the_lottery_ticket_sparsities():
    trainer = _Trainer()
    result = iterative_magnitude_pruning(_model(), trainer, rounds=4)
    assert len(result.rounds) == 5 and [r.result["round"] for r in result.rounds] == [0, 1, 2, 3, 4]
    total = sum(m.numel() for m in result.masks.values())
    for k, record in enumerate(result.rounds):
        kept = sum(int(m.sum()) for m in record.masks.values())
        assert kept == round(0.8 ** k * total), k  # 20 %, 36 %, 48.8 %, 59.04 % of all prunable weights
    assert result.sparsities[1:4] == pytest.approx([0.2, 0.36, 0.488], abs=1 / total)
    assert all(isinstance(m, SparseLinear) for m in result.model if isinstance(m, (nn.Linear, SparseLinear)))


def test_target_sparsity_stops_at_the_target_exactly():
    result = iterative_magnitude_pruning(_model(), _Trainer(epochs=1), target_sparsity=0.5)
    total = sum(m.numel() for m in result.masks.values())
    assert len(result.rounds) == 5  # 0, 20, 36, 48.8, then 50 (not 59.04)
    assert sum(int(m.sum()) for m in result.masks.values()) == round(0.5 * total)


def test_masks_are_nested_and_prune_the_smallest_trained_weights():
    trainer = _Trainer()
    result = iterative_magnitude_pruning(_model(), trainer, rounds=3)
    for k in range(1, 4):
        before, after = result.rounds[k - 1].masks, result.rounds[k].masks
        trained = trainer.end_weights[k - 1]
        kept_scores = torch.cat([trained[n].abs()[after[n]] for n in after])
        pruned_now = torch.cat([trained[n].abs()[before[n] & ~after[n]] for n in after])
        assert all(not (after[n] & ~before[n]).any() for n in after)  # nested
        assert pruned_now.max() <= kept_scores.min()  # global magnitude


def test_rewinding_to_init_restores_the_initial_weights_bit_for_bit():
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _Trainer()
    result = iterative_magnitude_pruning(model, trainer, rounds=2, rewind="init")
    for k in (1, 2):
        masks = result.rounds[k].masks
        for name, start in trainer.start_weights[k].items():
            assert torch.equal(start[masks[name]], initial[name][masks[name]])
            assert bool((start[~masks[name]] == 0).all())
    # Biases are rewound too, and the result carries the state it rewound to.
    assert torch.equal(result.rewind_state["0.bias"], initial["0.bias"])


def test_rewinding_to_an_epoch_restores_that_epochs_weights():
    trainer = _Trainer(epochs=3)
    result = iterative_magnitude_pruning(_model(), trainer, rounds=2, rewind=2)
    epoch2 = trainer.epoch_states[1]
    for k in (1, 2):
        masks = result.rounds[k].masks
        for name, start in trainer.start_weights[k].items():
            assert torch.equal(start[masks[name]], epoch2[name][masks[name]])


def test_pruned_weights_stay_zero_while_training_and_layers_not_selected_stay_dense():
    trainer = _Trainer()
    result = iterative_magnitude_pruning(_model(), trainer, rounds=2, layers=["0.weight", "2.weight"])
    assert isinstance(result.model[4], nn.Linear) and not isinstance(result.model[4], SparseLinear)
    for k in (1, 2):
        masks = result.rounds[k].masks
        assert set(masks) == {"0.weight", "2.weight"}
        for name in masks:
            assert bool((trainer.end_weights[k][name][~masks[name]] == 0).all())


def test_block_granularity_gives_block_masks():
    result = iterative_magnitude_pruning(_model(), _Trainer(epochs=1), rounds=2, granularity="block", block_size=4)
    for mask in result.masks.values():
        tiles = mask.reshape(mask.shape[0] // 4, 4, mask.shape[1] // 4, 4)
        assert (tiles.all(dim=(1, 3)) | ~tiles.any(dim=(1, 3))).all()


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "rounds, target_sparsity: give at least one"),
    ({"rounds": 2, "prune_fraction": 0.0}, ValueError, r"prune_fraction: expected a number in \(0, 1\)"),
    ({"rounds": 2, "prune_fraction": 1.0}, ValueError, r"prune_fraction: expected a number in \(0, 1\)"),
    ({"rounds": -1}, ValueError, "rounds: expected an int >= 0"),
    ({"target_sparsity": 1.0}, ValueError, r"target_sparsity: expected a number in \[0, 1\)"),
    ({"rounds": 1, "rewind": "start"}, ValueError, "rewind: expected 'init' or an epoch number"),
    ({"rounds": 1, "layers": ["9.weight"]}, KeyError, "layers: '9.weight' is not the weight"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        iterative_magnitude_pruning(_model(), _Trainer(epochs=1), **kwargs)


def test_rewinding_to_an_epoch_that_never_ended_is_an_error():
    with pytest.raises(RuntimeError, match="rewind: round 0 never reported the end of epoch 5"):
        iterative_magnitude_pruning(_model(), _Trainer(epochs=2), rounds=1, rewind=5)
    with pytest.raises(TypeError, match="train: expected a callable"):
        iterative_magnitude_pruning(_model(), None, rounds=1)
