"""ToST, the recipe of "Training Your Sparse Neural Network Better with Any Mask" (Jaiswal et al., ICML 2022):
ghost soft neurons, ghost skip connections, a sparsity-aware initialisation and label smoothing, composed
over any model and any mask, each part switchable so an ablation is one flag.

    recipe = ToST("tost")                       # or "paper-code", "none", or switches: ToST(ghost_skips=False)
    model = recipe.prepare(model, masks, data)  # sparsify with the masks, initialise, add the ghosts
    for it in range(iterations):
        if recipe.step(it / iterations):        # schedules; faded ghosts are removed, and then
            drop_removed_parameters(optimizer, model)   # the optimizer lets go of their parameters
        loss = recipe.loss(model(x), y)
        ...
    model = recipe.finalize(model)              # the plain sparse network: no ghosts, plain ReLUs

Presets:
- ``"tost"``: all four parts; ghost neurons (parametric Swish, β = 2) and ghost skips fade out linearly
  over the first 30 % of training and are then removed; GradInit ("LRsI") on the masked network, before
  the ghosts are added; label smoothing ε = 0.1 (as ε/(C − 1)).
- ``"paper-code"``: as the official code: the same parts, but the ghosts keep α = 1 for the whole run (so
  ``finalize`` leaves them in place, and says so).
- ``"none"``: default training: only the masks (sparsify), the model's own init, plain cross-entropy.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.sparsify import sparsify
from .ghost_neurons import SOFT_FUNCTIONS, add_ghost_neurons, remove_ghost_neurons, set_ghost_neuron_alpha
from .ghost_skips import add_ghost_skips, count_ghost_skips, remove_ghost_skips, set_ghost_skip_alpha
from .labels import label_smoothing_loss
from .schedules import Schedule

INITS = (None, "fan_in", "gradinit")
PRESETS = ("tost", "paper-code", "none")
_FADE = Schedule("linear", 1.0, 0.0, 0.3)
_KEEP = Schedule("constant", 1.0, 1.0, 1.0)


@dataclass
class RecipeConfig:
    ghost_neurons: bool = True
    ghost_skips: bool = True
    init: str | None = "gradinit"
    label_smoothing: bool = True
    soft: str = "pswish"
    beta: float = 2.0
    neuron_schedule: Schedule = _FADE
    skip_schedule: Schedule = _FADE
    epsilon: float = 0.1
    epsilon_schedule: Schedule | None = None   # None: ε constant
    gradinit_options: dict = field(default_factory=dict)   # passed to gradinit_ (iterations, lr, ...)


def preset(name: str) -> RecipeConfig:
    if name == "tost":
        return RecipeConfig()
    if name == "paper-code":
        return RecipeConfig(neuron_schedule=_KEEP, skip_schedule=_KEEP)
    if name == "none":
        return RecipeConfig(ghost_neurons=False, ghost_skips=False, init=None, label_smoothing=False)
    raise ValueError(f"preset: expected one of {PRESETS}, got {name!r}")


class ToST:
    """The recipe; ``ToST(preset, **overrides)`` with any RecipeConfig field as an override."""

    def __init__(self, preset_name: str = "tost", **overrides):
        config = preset(preset_name)
        unknown = sorted(set(overrides) - set(RecipeConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"ToST: unknown options {unknown}; expected some of "
                            f"{sorted(RecipeConfig.__dataclass_fields__)}")
        self.config = replace(config, **overrides)
        self.preset = preset_name
        _check_config(self.config)
        self.progress = 0.0
        self._neurons_removed = False
        self._skips_removed = False
        self._model: nn.Module | None = None

    # ------------------------------------------------------------------------------------------- setup
    def prepare(self, model: nn.Module, masks: dict | None = None, data=None) -> nn.Module:
        """Apply the masks (``sparsify``), run the init on the masked network, and add the ghosts at their
        starting α; returns the model to train (the same object, modified in place, unless ``model`` itself
        is replaced)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        c = self.config
        if c.init == "gradinit" and data is None:
            raise ValueError("data: the 'gradinit' init needs batches of (inputs, targets) (an iterable such as a "
                             "DataLoader); pass data=..., or choose init='fan_in' or init=None")
        self.progress = 0.0  # a recipe object may prepare a second model: its schedules start again
        self._neurons_removed = self._skips_removed = False
        if masks:
            model = sparsify(model, masks)
        if c.init is not None:
            # Before the ghosts: the init is for the sparse network that remains once they have faded (the
            # official LRsI initialises the plain masked network, which has no ghosts), and with the dense
            # ghost paths in place GradInit mostly spent its steps bounding their gradient norm (‖g‖ 6.4 vs
            # 1.4 without them on digits at 98 %). Plain cross-entropy, as the official GradInit step uses.
            # The same order for "paper-code", whose ghosts never fade: its scales then fit the plain masked
            # network rather than the one it trains, as the official LRsI scripts (which have no ghosts) do.
            from . import init as sparse_init  # GradInit pulls in torch.func; only when used

            if c.init == "fan_in":
                sparse_init.masked_fan_in_init_(model)
            else:
                sparse_init.gradinit_(model, data, **c.gradinit_options)
        if c.ghost_neurons:
            add_ghost_neurons(model, soft=c.soft, beta=c.beta, alpha=c.neuron_schedule(0.0))
        if c.ghost_skips:
            if add_ghost_skips(model, alpha=c.skip_schedule(0.0)) == 0:
                warnings.warn("ghost_skips: the model declares no ghost-skip sites (see sparsekern.models."
                              "ghost_sites), so none were added", stacklevel=2)
        self._model = model
        self.step(0.0)
        return model

    # -------------------------------------------------------------------------------------- per step
    def step(self, progress: float, model: nn.Module | None = None) -> bool:
        """Set every schedule to ``progress`` (fraction of training done, in [0, 1]) and remove ghosts whose
        α has reached 0. Returns True when parameters left the model (rebuild the optimizer)."""
        model = model if model is not None else self._model
        if model is None:
            raise RuntimeError("step: call prepare(model, ...) first, or pass model=...")
        if progress < self.progress - 1e-12:
            raise ValueError(f"progress: expected a value >= the last one ({self.progress}), got {progress}; "
                             f"to resume, load the recipe's state_dict")
        self.progress = float(progress)
        c = self.config
        changed = False
        if c.ghost_neurons and not self._neurons_removed:
            alpha = c.neuron_schedule(self.progress)
            if alpha == 0.0:
                remove_ghost_neurons(model)
                self._neurons_removed = True
            else:
                set_ghost_neuron_alpha(model, alpha)
        if c.ghost_skips and not self._skips_removed:
            alpha = c.skip_schedule(self.progress)
            if alpha == 0.0:
                changed = remove_ghost_skips(model) > 0
                self._skips_removed = True
            else:
                set_ghost_skip_alpha(model, alpha)
        return changed

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not c.label_smoothing:
            return F.cross_entropy(logits, targets)
        return label_smoothing_loss(logits, targets, self.epsilon)

    @property
    def epsilon(self) -> float:
        c = self.config
        return c.epsilon if c.epsilon_schedule is None else c.epsilon_schedule(self.progress)

    def alphas(self) -> dict:
        """The ghosts' current α (0 once removed), for logging."""
        c = self.config
        return {"ghost_neurons": 0.0 if not c.ghost_neurons or self._neurons_removed
                else c.neuron_schedule(self.progress),
                "ghost_skips": 0.0 if not c.ghost_skips or self._skips_removed else c.skip_schedule(self.progress)}

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        """The network to keep: ghosts whose α is 0 removed and ReLUs restored. Ghosts still active (the
        "paper-code" preset keeps α = 1) stay, with a warning, since removing them would change the function."""
        model = model if model is not None else self._model
        if model is None:
            raise RuntimeError("finalize: call prepare(model, ...) first, or pass model=...")
        self.step(max(self.progress, 1.0), model)
        alphas = self.alphas()
        if alphas["ghost_neurons"] != 0.0 or (alphas["ghost_skips"] != 0.0 and count_ghost_skips(model)):
            warnings.warn(f"finalize: ghosts still active at the end of training (α = {alphas}); they stay in the "
                          f"network (as in the official code). Use a fading schedule (the 'tost' preset) for a "
                          f"plain sparse network", stacklevel=2)
        return model

    # ---------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """What a checkpoint needs to continue exactly: progress and which ghosts are gone (plain values)."""
        return {"preset": self.preset, "progress": self.progress, "neurons_removed": self._neurons_removed,
                "skips_removed": self._skips_removed}

    def load_state_dict(self, state: dict, model: nn.Module | None = None) -> None:
        """Restore a recipe's state onto a model prepared the same way (call ``prepare`` first, without
        init when resuming: ``ToST(..., init=None)``): ghosts removed then are removed again."""
        for key in ("progress", "neurons_removed", "skips_removed"):
            if key not in state:
                raise KeyError(f"state: missing {key!r}; expected a dict from ToST.state_dict()")
        model = model if model is not None else self._model
        if model is None:
            raise RuntimeError("load_state_dict: call prepare(model, ...) first (the state says which ghosts "
                               "to remove from that model), or pass model=...")
        self.progress = 0.0
        self._neurons_removed = self._skips_removed = False
        self.step(float(state["progress"]), model)


def drop_removed_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Take the parameters that are no longer in ``model`` (removed ghost branches) out of ``optimizer``,
    keeping every other parameter's state (momentum, Adam moments); returns how many were dropped.
    The alternative, a new optimizer, would restart the momentum of every weight."""
    live = {id(p) for p in model.parameters()}
    dropped = 0
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) in live]
        dropped += len(group["params"]) - len(kept)
        group["params"] = kept
    for p in [p for p in optimizer.state if id(p) not in live]:
        del optimizer.state[p]
    return dropped


def _check_config(c: RecipeConfig) -> None:
    if c.init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {c.init!r}")
    if c.soft not in SOFT_FUNCTIONS:
        raise ValueError(f"soft: expected one of {SOFT_FUNCTIONS}, got {c.soft!r}")
    for name in ("neuron_schedule", "skip_schedule"):
        if not isinstance(getattr(c, name), Schedule):
            raise TypeError(f"{name}: expected a sparsekern.recipe.Schedule, got {type(getattr(c, name)).__name__}")
    if not 0.0 <= c.epsilon < 1.0:
        raise ValueError(f"epsilon: expected a number in [0, 1), got {c.epsilon!r}")
