"""The training CLI's settings: defaults, dataset defaults, config files, flag overrides and bad input."""
import json

import pytest

from sparsekern.cli import build_parser, main
from sparsekern.train.config import DATASET_DEFAULTS, PAPER_MILESTONES, TrainConfig, config_from_args, load_config_file


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_paper_defaults_for_cifar():
    c = parse("--dataset", "cifar10")
    assert (c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == ("resnet32", 182, 128, 0.1, 0.9, 2e-4)
    assert c.lr_schedule == "step" and c.milestone_epochs() == [90, 135]


def test_milestones_scale_with_epochs_and_can_be_given():
    assert TrainConfig(epochs=20).milestone_epochs() == [round(f * 20) for f in PAPER_MILESTONES]
    assert TrainConfig(milestones="3,7").milestone_epochs() == [3, 7]


def test_digits_defaults_apply_only_when_not_given():
    c = parse()
    for key, value in DATASET_DEFAULTS["digits"].items():
        assert getattr(c, key) == value
    c = parse("--epochs", "3", "--model", "resnet32")
    assert (c.epochs, c.model) == (3, "resnet32")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_then_flags(tmp_path, suffix):
    values = {"dataset": "cifar100", "sparsity": 0.95, "mask": "snip", "recipe": "tost", "ghost-skips": False}
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in values.items()))
    c = parse("--config", str(path), "--sparsity", "0.98", "--no-ghost-neurons")
    assert (c.dataset, c.mask, c.recipe, c.ghost_skips) == ("cifar100", "snip", "tost", False)
    assert c.sparsity == 0.98 and c.ghost_neurons is False
    assert c.epochs == 182  # cifar100: no dataset defaults


def test_switches_reach_the_recipe():
    from sparsekern.train.trainer import make_recipe

    recipe = make_recipe(parse("--recipe", "tost", "--no-label-smoothing", "--init", "fan_in", "--ghost-fraction",
                               "0.5"))
    assert recipe.config.label_smoothing is False and recipe.config.init == "fan_in"
    assert recipe.config.neuron_schedule.fraction == 0.5 and recipe.config.ghost_skips is True
    assert make_recipe(parse("--recipe", "none")).config.ghost_neurons is False
    assert make_recipe(parse("--recipe", "tost"), fresh=False).config.init is None


@pytest.mark.parametrize("settings, message", [
    ({"sparsity": 1.0}, "sparsity"), ({"epochs": 0}, "epochs"), ({"mask": "lottery"}, "mask"),
    ({"no_such": 1}, "no_such"), ({"lr": "fast"}, "lr"), ({"granularity": "block"}, "block_size"),
    ({"milestones": "a,b"}, "milestones"), ({"ghost_fraction": 0.0}, "ghost_fraction"),
])
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig.from_dict(settings)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_config_file(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config_file(str(listed))


def test_cli_reports_errors_without_a_traceback(capsys):
    assert main(["train", "--sparsity", "1.5", "--no-progress"]) == 2
    assert "sparsity" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--mask", "nonsense"])  # argparse's own choices check


def test_help_explains_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--mask", "--sparsity", "--recipe", "--ghost-neurons", "--resume", "--milestones",
                 "--config", "--threads", "--backend"):
        assert flag in text
    assert "182 epochs" in text


def test_settings_are_validated_once_after_every_layer(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("granularity: block\n")
    c = parse("--config", str(path), "--block-size", "4")  # the file alone would be incomplete
    assert (c.granularity, c.block_size) == ("block", 4)


def test_yaml_reads_numbers_as_yaml_1_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("granularity: n:m\nn_m: 2:4\nlr: 1e-3\nweight_decay: 5e-4\nepochs: 3\n")
    c = parse("--config", str(path))
    assert c.n_m == "2:4" and c.n_m_pair() == (2, 4) and c.lr == 1e-3 and c.weight_decay == 5e-4 and c.epochs == 3


@pytest.mark.parametrize("settings, error, message", [
    ({"epochs": None}, TypeError, "epochs"), ({"seed": None}, TypeError, "seed"),
    ({"granularity": "n:m", "n_m": "2-4"}, ValueError, "n_m"), ({"n_m": "4:2"}, ValueError, "n_m"),
    ({"block_size": 0}, ValueError, "block_size"), ({"masks_file": "/no/such/masks.pt"}, FileNotFoundError,
                                                    "masks_file"),
])
def test_more_bad_settings(settings, error, message):
    with pytest.raises(error, match=message):
        TrainConfig.from_dict(settings)


def test_keep_freed_memory_is_on_unless_switched_off():
    assert parse().keep_freed_memory is True
    assert parse("--no-keep-freed-memory").keep_freed_memory is False
