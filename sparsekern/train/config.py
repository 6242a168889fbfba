"""Everything one training run depends on, as one dataclass: defaults are the paper's CIFAR protocol, a
YAML/JSON file can set any field, and command-line flags override both.

The argparse options are generated from the fields (name, type, help), so a new setting is one field here
and shows up in ``--help``, in config files and in the run's saved ``config.json`` alike.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine", "constant")
RECIPES = ("none", "tost", "paper-code")
INITS = ("default", "fan_in", "gradinit")   # "default": the recipe preset's choice
MASK_METHODS = ("dense", "random", "erk", "magnitude", "snip", "grasp", "synflow")
GRANULARITIES = ("unstructured", "block", "channel", "kernel", "n:m")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "sparse", "dense")
# Defaults that differ from the paper's CIFAR protocol when training on the embedded digits (1,257 small
# training images): a smaller ResNet, fewer epochs, smaller batches. A config file or flag overrides them.
DATASET_DEFAULTS = {
    "digits": {"model": "resnet20", "image_size": 8, "epochs": 12, "batch_size": 64, "lr_schedule": "cosine",
               "gradinit_iterations": 20},
}
# The paper's step schedule, 182 epochs with lr × 0.1 at 90 and 135, as fractions of the run, so that a
# shorter run decays at the same points of its training.
PAPER_MILESTONES = (90 / 182, 135 / 182)


def _opt(default, help: str, group: str, choices=None, metavar=None):
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "metavar": metavar})


@dataclass
class TrainConfig:
    # data
    dataset: str = _opt("digits", "dataset: digits (embedded, no download), cifar10, cifar100, tinyimagenet",
                        "data", ("digits", "cifar10", "cifar100", "tinyimagenet"))
    data_dir: str | None = _opt(None, "folder holding the dataset files (not needed for digits)", "data",
                                metavar="DIR")
    download: bool = _opt(False, "download CIFAR-10/100 into --data-dir if missing (off: never touch the "
                                 "network)", "data")
    image_size: int | None = _opt(None, "side of the input images (digits only: upscale 8×8 to this; "
                                        "default: the dataset's own)", "data", metavar="N")
    val_size: int | None = _opt(None, "images held out of the training set for validation (default: 5000 for "
                                      "CIFAR/TinyImageNet; digits has a fixed split)", "data", metavar="N")
    augment: bool = _opt(True, "random crop (zero padding) and flip where the dataset allows", "data")
    # model and masks
    model: str = _opt("resnet32", "a sparsekern.models name (resnet18/20/32/34/50/56/104, vgg16, mobilenetv2)",
                      "model")
    mask: str = _opt("random", "how to choose the kept weights (dense: no pruning)", "model", MASK_METHODS)
    sparsity: float = _opt(0.9, "fraction of the prunable weights to prune, in [0, 1)", "model", metavar="S")
    granularity: str = _opt("unstructured", "mask granularity", "model", GRANULARITIES)
    block_size: int | None = _opt(None, "block side for --granularity block", "model", metavar="N")
    n_m: str | None = _opt(None, "N:M pattern for --granularity n:m, e.g. 2:4", "model", metavar="N:M")
    mask_scope: str | None = _opt(None, "global or layer ranking (default: the method's own: layer for "
                                        "random/erk, global otherwise)", "model", ("global", "layer"))
    keep_first_dense: bool = _opt(False, "leave the first conv layer dense", "model")
    keep_classifier_dense: bool = _opt(False, "leave the classifier dense", "model")
    mask_batches: int = _opt(1, "training batches SNIP/GraSP score on", "model", metavar="N")
    masks_file: str | None = _opt(None, "load the masks from this file (sparsekern.masks.save_masks) instead "
                                        "of computing them", "model", metavar="FILE")
    # recipe
    recipe: str = _opt("none", "training recipe: none (default training), tost (the paper's recipe, ghosts "
                               "fading out), paper-code (as the official code: ghosts kept)", "recipe", RECIPES)
    ghost_neurons: bool | None = _opt(None, "ghost soft neurons on/off", "recipe")
    ghost_skips: bool | None = _opt(None, "ghost skip connections on/off", "recipe")
    init: str = _opt("default", "sparsity-aware init: default (the recipe's), fan_in, gradinit", "recipe",
                     INITS)
    label_smoothing: bool | None = _opt(None, "label smoothing on/off", "recipe")
    epsilon: float = _opt(0.1, "label smoothing ε (spread as ε/(C−1) over the wrong classes)", "recipe",
                          metavar="E")
    ghost_fraction: float = _opt(0.3, "fraction of training over which tost's ghosts fade out", "recipe",
                                 metavar="F")
    gradinit_iterations: int = _opt(180, "GradInit steps", "recipe", metavar="N")
    # optimisation
    epochs: int = _opt(182, "training epochs", "optimisation", metavar="N")
    batch_size: int = _opt(128, "batch size (per process under torchrun)", "optimisation", metavar="N")
    optimizer: str = _opt("sgd", "optimizer", "optimisation", OPTIMIZERS)
    lr: float = _opt(0.1, "learning rate", "optimisation", metavar="LR")
    momentum: float = _opt(0.9, "SGD momentum", "optimisation", metavar="M")
    weight_decay: float = _opt(2e-4, "weight decay", "optimisation", metavar="WD")
    lr_schedule: str = _opt("step", "step (× --lr-gamma at --milestones), cosine, constant", "optimisation",
                            LR_SCHEDULES)
    milestones: str | None = _opt(None, "comma-separated epochs of the step schedule (default: the paper's "
                                        "90,135 of 182, scaled to --epochs)", "optimisation", metavar="E1,E2")
    lr_gamma: float = _opt(0.1, "step schedule factor", "optimisation", metavar="G")
    # run
    seed: int = _opt(0, "seed of the model init, masks and data order", "run", metavar="N")
    device: str = _opt("auto", "auto (cuda when available), cpu, cuda", "run", DEVICES)
    backend: str = _opt("auto", "sparse layer backend (auto: sparse kernels above the measured crossover)",
                        "run", BACKENDS)
    threads: int | None = _opt(None, "CPU threads (default: torch's)", "run", metavar="N")
    keep_freed_memory: bool = _opt(True, "keep freed memory in the process instead of returning it to the system "
                                         "(glibc only): steps stop faulting their tensors' pages in again, "
                                         "up to a third of a CPU conv step; the process keeps its peak memory",
                                   "run")
    out: str | None = _opt(None, "run folder (default runs/<model>-<dataset>-<mask>-<sparsity>-<recipe>-s<seed>)",
                           "run", metavar="DIR")
    resume: bool = _opt(False, "continue from the run folder's last checkpoint", "run")
    progress: bool = _opt(True, "progress bars", "run")
    deterministic: bool = _opt(False, "deterministic GPU kernels (cuDNN, cuBLAS) so that a resumed GPU run "
                                      "matches an uninterrupted one; CPU runs are deterministic anyway", "run")

    # --------------------------------------------------------------------------------------------------
    def run_name(self) -> str:
        sparsity = "0" if self.mask == "dense" else f"{self.sparsity:g}"
        return f"{self.model}-{self.dataset}-{self.mask}-{sparsity}-{self.recipe}-s{self.seed}"

    def run_dir(self) -> str:
        return self.out or os.path.join("runs", self.run_name())

    def milestone_epochs(self) -> list[int]:
        if self.milestones:
            return [int(m) for m in self.milestones.split(",") if m.strip()]
        return [max(1, round(f * self.epochs)) for f in PAPER_MILESTONES]

    def n_m_pair(self) -> tuple[int, int]:
        parts = str(self.n_m).split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            n = m = 0
        if len(parts) != 2 or not 0 < n <= m:
            raise ValueError(f"n_m: expected N:M with 0 < N <= M, e.g. 2:4, got {self.n_m!r}")
        return n, m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> "TrainConfig":
        config = cls()
        config.update(values, source=source)
        return config

    def update(self, values: dict, *, source: str = "config", validate: bool = True) -> "TrainConfig":
        """Set the fields in ``values`` (names with - or _); strings that spell a number are read as one
        for numeric fields (YAML reads ``1e-3`` as a string). Validates the result unless told not to (when
        several layers of settings are applied in a row, validate once at the end)."""
        known = {f.name: f for f in fields(self)}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
            setattr(self, name, _coerce(value, _base_type(known[name])))
        if validate:
            self.validate()
        return self

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name}: expected one of {', '.join(choices)}, got {value!r}")
            expected = _base_type(f)
            if value is None and "None" not in str(f.type):
                raise TypeError(f"{f.name}: expected {expected.__name__}, got None")
            if value is not None and not _is(value, expected):
                raise TypeError(f"{f.name}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity: expected a number in [0, 1), got {self.sparsity}")
        for name in ("epochs", "batch_size", "mask_batches", "gradinit_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if not 0.0 < self.ghost_fraction <= 1.0:
            raise ValueError(f"ghost_fraction: expected a number in (0, 1], got {self.ghost_fraction}")
        if self.granularity == "block" and not self.block_size:
            raise ValueError("block_size: --granularity block needs --block-size")
        if self.granularity == "n:m" and not self.n_m:
            raise ValueError("n_m: --granularity n:m needs --n-m, e.g. 2:4")
        if self.n_m is not None:
            self.n_m_pair()
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size: expected a positive integer, got {self.block_size}")
        if self.masks_file is not None and not os.path.isfile(self.masks_file):
            raise FileNotFoundError(f"masks_file: no such file {self.masks_file!r}")
        if self.milestones:
            try:
                self.milestone_epochs()
            except ValueError:
                raise ValueError(f"milestones: expected comma-separated epochs like 90,135, got {self.milestones!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {self.threads}")


def _base_type(f) -> type:
    default = f.default if f.default is not MISSING else None
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.startswith(name):
            return kind
    return type(default)


def _coerce(value, expected: type):
    if isinstance(value, str) and expected in (int, float):
        try:
            return expected(value)
        except ValueError:
            return value  # validate() names the field and the value
    return value


def _is(value, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


# ------------------------------------------------------------------------------------------------ files
def load_config_file(path: str) -> dict:
    """Settings from a ``.json``, ``.yaml`` or ``.yml`` file (a mapping of field names, - or _ both fine)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no such file {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            raise ValueError(f"config: {path!r} is not valid YAML: {e}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {path!r} is not valid JSON: {e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config: {path!r} must hold a mapping of settings, got {type(values).__name__}")
    return values


def _yaml_loader():
    """PyYAML's safe loader with YAML 1.2's plain numbers: PyYAML follows YAML 1.1, which reads ``2:4`` (an
    N:M pattern) as the base-60 integer 124 and ``1e-3`` (no dot) as a string."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
        list("-+0123456789."))
    return Loader


# --------------------------------------------------------------------------------------------- argparse
def add_config_arguments(parser: argparse.ArgumentParser, *, skip: tuple = ()) -> None:
    """One option per field, grouped; every default is None so that only flags given on the command line
    override the config file (see ``config_from_args``)."""
    groups = {}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = "the recipe's" if default is None and _base_type(f) is bool else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        kind = _base_type(f)
        if kind is bool:
            action = groups[group].add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                                default=None, help=help_text)
            action.help = help_text  # some Pythons append their own "(default: None)"
        else:
            groups[group].add_argument(flag, dest=f.name, type=kind, default=None, choices=f.metadata["choices"],
                                       metavar=f.metadata["metavar"], help=help_text)


def config_from_args(args: argparse.Namespace, *, file_key: str = "config") -> TrainConfig:
    """Defaults, then the dataset's defaults (``DATASET_DEFAULTS``), then the config file's settings, then the
    flags given on the command line; validated once, at the end."""
    path = getattr(args, file_key, None)
    file_values = load_config_file(path) if path else {}
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    dataset = given.get("dataset", file_values.get("dataset", TrainConfig.dataset))
    config = TrainConfig()
    config.update(DATASET_DEFAULTS.get(dataset, {}), source=f"{dataset} defaults", validate=False)
    config.update(file_values, source=f"config file {path!r}", validate=False)
    return config.update(given, source="command line")
