"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin, 2019; Frankle et al., 2020).

Round 0 trains the network (dense, or under ``initial_masks``). Each later round prunes ``prune_fraction``
of the weights that are still kept, by magnitude (globally by default), rewinds the kept weights (and
every other parameter and buffer) to their values at initialisation or after epoch k of round 0, and
trains again. After n pruning rounds the sparsity is 1 − (1 − p)^n: 20 %, 36 %, 48.8 %, ... for p = 0.2;
with ``target_sparsity`` the last round prunes exactly to the target.

Training is the caller's: ``train(model, context)`` runs any loop. From round 1 on the model's pruned
layers are sparsekern sparse layers (``sparsify``), so pruned weights stay exactly zero whatever the
optimizer does; their trainable parameters change shape between rounds, so ``train`` must build its
optimizer afresh each call. To rewind to epoch k, ``train`` calls ``context.epoch_done(epoch)`` at the end
of every epoch (1-based) of round 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..nn.kept_weights import KeptWeightsModule
from ..nn.sparsify import sparsify
from .builder import build_masks
from .magnitude import magnitude_scores
from .prunable import current_masks, resolve_layers


@dataclass
class RoundContext:
    """What ``train`` gets besides the model: the round, its masks and sparsity, and the epoch callback."""
    round: int
    sparsity: float                      # of the prunable weights, during this round's training
    masks: dict                          # weight name -> bool mask applied in this round
    epoch_done: Callable[[int], None]    # call with the 1-based epoch number at the end of every epoch


@dataclass
class PruningRound:
    round: int
    sparsity: float
    masks: dict
    result: Any                          # whatever ``train`` returned (e.g. its metrics)


@dataclass
class LotteryResult:
    model: nn.Module                     # trained in the last round, with the final masks
    masks: dict                          # the final masks
    rounds: list = field(default_factory=list)   # PruningRound per round, round 0 first
    rewind_state: dict = field(default_factory=dict)  # the state every round after 0 starts from

    @property
    def sparsities(self) -> list:
        return [r.sparsity for r in self.rounds]


def iterative_magnitude_pruning(model: nn.Module, train: Callable, *, rounds: int | None = None,
                                target_sparsity: float | None = None, prune_fraction: float = 0.2,
                                rewind: str | int = "init", layers=None, scope: str = "global",
                                granularity: str = "unstructured", block_size=None, reduce: str = "mean",
                                initial_masks: dict | None = None, backend: str = "auto") -> LotteryResult:
    """Train, prune, rewind, retrain: the lottery-ticket procedure.

    Args:
        model: the network at initialisation. It is modified in place (its pruned layers become sparse
            layers) and returned in the result.
        train: ``train(model, context: RoundContext)``; its return value is kept in ``result.rounds``.
        rounds: pruning rounds (the model is trained ``rounds + 1`` times). With ``target_sparsity`` and no
            ``rounds``: as many as it takes to reach the target.
        target_sparsity: stop once the prunable weights reach this sparsity (the last round prunes to it
            exactly, not past it).
        prune_fraction: share of the still-kept weights each round prunes, in (0, 1).
        rewind: ``"init"`` (the weights before any training) or an epoch ``k`` ≥ 0 of round 0 (0 is init).
        layers, scope, granularity, block_size, reduce: which weights to prune and how (see
            ``prunable_layers`` and ``build_masks``); layers not selected stay dense and are still rewound.
        initial_masks: masks for round 0 (weight name -> bool); default: round 0 trains dense.
        backend: passed to ``sparsify`` for the sparse layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not callable(train):
        raise TypeError(f"train: expected a callable train(model, context), got {type(train).__name__}")
    schedule = _sparsity_schedule(rounds, target_sparsity, prune_fraction)
    rewind_epoch = _check_rewind(rewind)
    names = list(resolve_layers(model, layers))

    masks = None
    if initial_masks is not None:
        model = sparsify(model, dict(initial_masks), backend=backend)
    captured: dict = {}
    if rewind_epoch == 0:
        captured["state"] = _dense_state(model)

    def epoch_done(epoch: int) -> None:
        if rewind_epoch > 0 and epoch == rewind_epoch and "state" not in captured:
            captured["state"] = _dense_state(model)

    def no_capture(epoch: int) -> None:
        return None

    result = LotteryResult(model=model, masks={})
    for index, sparsity in enumerate(schedule):
        if index > 0:
            if "state" not in captured:
                raise RuntimeError(f"rewind: round 0 never reported the end of epoch {rewind_epoch} through "
                                   f"context.epoch_done(epoch), so there is nothing to rewind to")
            current = current_masks(resolve_layers(model, names))
            masks = build_masks(magnitude_scores(model, names), sparsity, scope=scope, granularity=granularity,
                                block_size=block_size, reduce=reduce, current=current)
            model = sparsify(model, masks, backend=backend)
            model.load_state_dict(captured["state"])  # a dense state loads under each layer's new mask
        masks_now = current_masks(resolve_layers(model, names))
        context = RoundContext(round=index, sparsity=_sparsity_of(masks_now), masks=masks_now,
                               epoch_done=epoch_done if index == 0 else no_capture)
        outcome = train(model, context)
        result.rounds.append(PruningRound(index, context.sparsity, masks_now, outcome))
    result.model, result.masks, result.rewind_state = model, result.rounds[-1].masks, captured.get("state", {})
    return result


def _sparsity_schedule(rounds, target, fraction) -> list:
    """Target sparsity of each round's training: 0 (round 0, nominal), then 1 − (1 − p)^k."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"prune_fraction: expected a number in (0, 1), got {fraction!r}")
    if rounds is None and target is None:
        raise ValueError("rounds, target_sparsity: give at least one (how many rounds, or the sparsity to reach)")
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0):
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target < 1.0:
            raise ValueError(f"target_sparsity: expected a number in [0, 1), got {target!r}")
        needed = 0 if target == 0 else math.ceil(math.log(1.0 - target) / math.log(1.0 - fraction) - 1e-9)
        rounds = needed if rounds is None else min(rounds, needed)
    schedule = [0.0] + [1.0 - (1.0 - fraction) ** k for k in range(1, rounds + 1)]
    if target is not None:
        schedule = [min(s, float(target)) for s in schedule]
    return schedule


def _check_rewind(rewind) -> int:
    if rewind == "init":
        return 0
    if isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0:
        raise ValueError(f"rewind: expected 'init' or an epoch number >= 0, got {rewind!r}")
    return rewind


def _dense_state(model: nn.Module) -> dict:
    """A copy of the model's state with every sparse layer's weight written out dense, so it loads under any
    later mask (the kept positions take their values, bit for bit)."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    for module_name, module in model.named_modules():
        if isinstance(module, KeptWeightsModule):
            prefix = f"{module_name}." if module_name else ""
            state.pop(prefix + "weight_values", None)
            state.pop(prefix + "mask", None)
            state[prefix + "weight"] = module.dense_weight().detach().clone()
    return state


def _sparsity_of(masks: dict) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


