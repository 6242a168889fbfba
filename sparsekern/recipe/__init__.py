"""The training recipe of "Training Your Sparse Neural Network Better with Any Mask" (Jaiswal et al.,
ICML 2022) as a thin layer over sparsekern's modules: ghost soft neurons, ghost skip connections, a
sparsity-aware initialisation and label smoothing, each with a schedule, composed by ``ToST``.
"""
from .ghost_neurons import GhostActivation, add_ghost_neurons, remove_ghost_neurons, set_ghost_neuron_alpha
from .ghost_skips import add_ghost_skips, count_ghost_skips, ghost_branches, remove_ghost_skips, set_ghost_skip_alpha
from .init import gradinit_, is_ghost_name, masked_fan_in_init_
from .labels import LabelSmoothingLoss, label_smoothing_loss
from .schedules import Schedule
from .tost import PRESETS, RecipeConfig, ToST, drop_removed_parameters, preset

__all__ = ["drop_removed_parameters", "masked_fan_in_init_", "gradinit_", "is_ghost_name", "ToST", "RecipeConfig", "preset", "PRESETS", "Schedule", "GhostActivation", "add_ghost_neurons",
           "remove_ghost_neurons", "set_ghost_neuron_alpha", "add_ghost_skips", "remove_ghost_skips",
           "set_ghost_skip_alpha", "ghost_branches", "count_ghost_skips", "LabelSmoothingLoss",
           "label_smoothing_loss"]
