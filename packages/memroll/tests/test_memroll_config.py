"""Run configurations: every shipped config validates and round-trips through TOML; every bad
key or value is an error that names it; --set overrides; models build as configured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from memroll_test_configs import TINY_RUN

import unrolled
from memroll import config as _config
from memroll._console import CommandError
from memroll._run_config import resume_config

TINY = (
    TINY_RUN
    + """
[strategy]
name = "backprop"

[strategy.greedy]
modules = 2

[train]
steps = 3
batch_size = 2
"""
)


def _write(tmp_path: Path, text: str = TINY, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _load(tmp_path: Path, text: str = TINY, overrides: tuple[str, ...] = ()):
    return _config.load_config(_write(tmp_path, text), overrides)


# --------------------------------------------------------------------------------------------
# the shipped configs
# --------------------------------------------------------------------------------------------
SHIPPED = sorted(_config.shipped_configs())


def test_the_papers_configs_ship():
    expected = {
        "gleam_modl_2d",
        "gleam_pgd_2d",
        "mel_modl",
        "mel_fpm",
        "luser_deblur",
        "luser_ct",
        "luser_mri",
        "irim_2d",
        "irim_3d",
        "demo",
    }
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates_and_round_trips(name, tmp_path):
    config = _config.load_config(name)
    assert config.name == name
    assert config.description, "every shipped config says what it is"
    assert config.strategy.resolve().name == config.strategy.name
    text = _config.dump_config(config, header="a copy")
    again = _config.load_config(_write(tmp_path, text))
    assert again == config
    assert _config.dump_config(again, header="a copy") == text


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_explains_its_miniature(name):
    text = _config.config_path(name).read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert len(comments) > 200, "each config explains the paper's setting and its own size"


@pytest.mark.parametrize("name", SHIPPED)
def test_mri_configs_take_fastmri_files_with_one_option(name, tmp_path):
    config = _config.load_config(name)
    valid = unrolled.get_task(config.task.name).defaults()
    if config.task.name in ("multicoil_mri", "singlecoil_mri"):
        assert "root" in valid
        again = _config.load_config(name, [f'task.root="{tmp_path}"'])
        assert again.task.options["root"] == str(tmp_path)
    else:
        assert "root" not in valid


def test_config_by_name_and_by_path_agree():
    path = _config.config_path("demo")
    assert path.name == "demo.toml"
    assert _config.load_config(path) == _config.load_config("demo")
    assert _config.load_config("demo.toml") == _config.load_config("demo")


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"no config file 'nope'.*gleam_modl_2d"):
        _config.config_path("nope")


# --------------------------------------------------------------------------------------------
# every bad key or value names itself
# --------------------------------------------------------------------------------------------
def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ValueError, match="unknown configuration key colour; valid keys here"):
        _load(tmp_path, TINY.replace('name = "tiny"', 'name = "tiny"\ncolour = 1'))


def test_unknown_task_option_names_it_and_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown configuration key task\.coils: .* valid keys here: name, "
    ):
        _load(tmp_path, overrides=("task.coils=4",))


def test_unknown_model_option(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown configuration key model\.depth: MoDL has no option 'depth'"
    ):
        _load(tmp_path, overrides=("model.depth=4",))


def test_wrong_model_option_type(tmp_path):
    with pytest.raises(ValueError, match=r"model\.iterations: expected int, got '8' \(str\)"):
        _load(tmp_path, overrides=('model.iterations="8"',))


def test_wrong_task_option_type(tmp_path):
    with pytest.raises(ValueError, match=r"task\.acceleration: expected float, got 'fast'"):
        _load(tmp_path, overrides=("task.acceleration=fast",))


def test_wrong_train_option_type(tmp_path):
    with pytest.raises(ValueError, match=r"train\.lr: expected float, got 'big' \(str\)"):
        _load(tmp_path, overrides=("train.lr=big",))


def test_invalid_train_value_names_the_table(tmp_path):
    with pytest.raises(ValueError, match=r"train: steps must be a positive integer, got 0"):
        _load(tmp_path, overrides=("train.steps=0",))


def test_train_compile_is_off_by_default_and_a_bool(tmp_path):
    assert _load(tmp_path).train.compile is False
    assert _config.load_config("demo").train.compile is False
    config = _load(tmp_path, overrides=("train.compile=true",))
    assert config.train.compile is True
    assert _config.config_from_data(config.to_data()).train.compile is True  # round trip
    with pytest.raises(ValueError, match=r"train\.compile: expected bool, got 'yes' \(str\)"):
        _load(tmp_path, overrides=("train.compile=yes",))


def test_a_resumed_run_may_switch_compile(tmp_path):
    """torch.compile changes the speed, not the training: a resume may turn it on or off."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(TINY)
    config = resume_config(run, ["train.compile=true"], None, None, step=1)
    assert config.train.compile is True
    with pytest.raises(CommandError, match=r"cannot resume with train\.lr changed"):
        resume_config(run, ["train.lr=0.5"], None, None, step=1)


def test_literal_option_lists_its_values(tmp_path):
    with pytest.raises(ValueError, match=r"eval\.split: expected one of 'train' \| 'val'"):
        _load(tmp_path, overrides=("eval.split=holdout",))


def test_unknown_model_lists_the_models(tmp_path):
    with pytest.raises(ValueError, match=r"model\.name: unknown model 'UNet'; valid models: MoDL"):
        _load(tmp_path, overrides=("model.name=UNet",))


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"task\.name: unknown task 'mri'; valid tasks: ct"):
        _load(tmp_path, overrides=("task.name=mri",))


def test_missing_task_name(tmp_path):
    text = TINY.replace('name = "multicoil_mri"\n', "")
    with pytest.raises(ValueError, match=r"missing required configuration key task\.name"):
        _load(tmp_path, text)


def test_missing_model_table(tmp_path):
    text = TINY.split("[model]")[0] + "[train]\nsteps = 3\n"
    with pytest.raises(ValueError, match="missing required configuration key model"):
        _load(tmp_path, text)


def test_strategy_table_unknown_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown configuration key strategy\.greedy\.blocks"):
        _load(tmp_path, overrides=("strategy.greedy.blocks=2",))


def test_strategy_table_option_of_another_strategy(tmp_path):
    with pytest.raises(
        ValueError, match=r"strategy\.checkpoint: modules=2 only applies to strategy='greedy'"
    ):
        _load(tmp_path, overrides=("strategy.checkpoint.modules=2",))


def test_strategy_table_wrong_type(tmp_path):
    with pytest.raises(ValueError, match=r"strategy\.reversible\.check_drift: expected float"):
        _load(tmp_path, overrides=("strategy.reversible.check_drift=tight",))


def test_unknown_strategy_name(tmp_path):
    with pytest.raises(ValueError, match=r"strategy\.name: expected one of 'backprop'"):
        _load(tmp_path, overrides=("strategy.name=adjoint",))


def test_resolve_unknown_strategy_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown strategy 'fast'; valid strategies: backprop"):
        _load(tmp_path).strategy.resolve("fast")


@pytest.mark.parametrize(
    ("key", "hint"),
    [("run_dir", "--run-dir"), ("resume", "--resume"), ("strategy_options", r"\[strategy")],
)
def test_command_line_options_are_refused_in_the_file(tmp_path, key, hint):
    with pytest.raises(ValueError, match=rf"train\.{key} cannot be set in a config file: .*{hint}"):
        _load(tmp_path, overrides=(f"train.{key}=1",))


def test_dataclass_option_fields_are_checked(tmp_path):
    text = TINY.replace('name = "MoDL"', 'name = "LUSER"').replace("cg_max_iter = 5\n", "")
    with pytest.raises(ValueError, match=r"model\.solver\.tol: expected float, got 'x'"):
        _load(tmp_path, text, overrides=('model.solver={tol = "x"}',))
    with pytest.raises(ValueError, match=r"unknown configuration key model\.solver\.tolerance"):
        _load(tmp_path, text, overrides=("model.solver={tolerance = 1e-3}",))
    config = _load(tmp_path, text, overrides=("model.solver={tol = 1e-3, max_iter = 7}",))
    assert config.model.options["solver"] == unrolled.EquilibriumSolver(tol=1e-3, max_iter=7)


def test_option_a_file_cannot_give(tmp_path):
    text = """
name = "fpm"
[task]
name = "ptychography"
[model]
name = "FPMNet"
design = [[1.0]]
"""
    with pytest.raises(ValueError, match=r"model\.design: FPMNet takes a .*Tensor"):
        _load(tmp_path, text)


def test_bad_eval_values(tmp_path):
    with pytest.raises(ValueError, match=r"eval\.cs_lamda must be a number > 0, got -1\.0"):
        _load(tmp_path, overrides=("eval.cs_lamda=-1.0",))
    with pytest.raises(ValueError, match=r"eval\.figure_samples must be a positive integer"):
        _load(tmp_path, overrides=("eval.figure_samples=0",))


def test_empty_name(tmp_path):
    with pytest.raises(ValueError, match="name: the run's name must not be empty"):
        _load(tmp_path, overrides=('name=" "',))


def test_invalid_toml_names_the_file(tmp_path):
    path = _write(tmp_path, "name = [unclosed")
    with pytest.raises(ValueError, match=r"c\.toml: not valid TOML"):
        _config.load_config(path)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"^.*c\.toml: unknown configuration key model\.depth"):
        _load(tmp_path, overrides=("model.depth=4",))


# --------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------
def test_set_reads_toml_values(tmp_path):
    config = _load(
        tmp_path,
        overrides=(
            "model.iterations=3",
            "train.lr=2e-3",
            "model.learn_mu=false",
            "train.betas=[0.8, 0.9]",
            "task.mask=random",  # a bare word is a string
            "strategy.name=greedy",
        ),
    )
    assert config.model.options["iterations"] == 3
    assert config.train.lr == 2e-3
    assert config.model.options["learn_mu"] is False
    assert config.train.betas == (0.8, 0.9)
    assert config.task.options["mask"] == "random"
    assert config.strategy.resolve() == unrolled.Strategy("greedy", modules=2)


def test_set_without_equals_sign(tmp_path):
    with pytest.raises(ValueError, match=r"--set expects key=value \(e\.g\. train\.steps=100\)"):
        _load(tmp_path, overrides=("train.steps",))


def test_set_into_a_value(tmp_path):
    with pytest.raises(ValueError, match=r"--set name\.first: name is a value, not a table"):
        _load(tmp_path, overrides=("name.first=1",))


def test_float_option_accepts_an_integer(tmp_path):
    config = _load(tmp_path, overrides=("model.mu=2",))
    assert config.model.options["mu"] == 2.0
    assert isinstance(config.model.options["mu"], float)


# --------------------------------------------------------------------------------------------
# TOML writing
# --------------------------------------------------------------------------------------------
def test_dump_toml_round_trips_awkward_values():
    data = {
        "name": 'quote " and \\ backslash\nnewline',
        "big": 1e300,
        "small": 1.5e-9,
        "inf": math.inf,
        "flags": [True, False],
        "t": {"nested": {"a": 1, "b": [1.0, 2.5]}, "key with space": "x"},
    }
    text = _config.dump_toml(data, header="two\nlines")
    assert text.startswith("# two\n# lines\n")
    parsed = _config.toml_module().loads(text)
    assert parsed == data


def test_dump_toml_refuses_what_toml_cannot_hold():
    with pytest.raises(ValueError, match=r"x: cannot write .*object"):
        _config.dump_toml({"x": object()})


# --------------------------------------------------------------------------------------------
# building what a config describes
# --------------------------------------------------------------------------------------------
def test_model_is_built_for_the_task_and_seeded(tmp_path):
    config = _load(tmp_path)
    data = _config.make_task(config, "train")
    first = _config.build_model(config, data)
    second = _config.build_model(config, data)
    assert isinstance(first, unrolled.MoDL)
    assert len(first.stages) == 2
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    other = _config.build_model(_load(tmp_path, overrides=("train.seed=1",)), data)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


def test_task_options_reach_the_data(tmp_path):
    config = _load(tmp_path, overrides=("task.image_size=24",))
    batch = _config.make_task(config, "val").batch([0])
    assert tuple(batch.target.shape) == (1, 24, 24)


def test_image_type_comes_from_the_task(tmp_path):
    config = _load(tmp_path, overrides=("model.complex=false",))
    data = _config.make_task(config, "val")
    with pytest.raises(ValueError, match=r"model\.complex is set by the task .*remove it"):
        _config.build_model(config, data)


def test_make_task_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'dev'"):
        _config.make_task(_load(tmp_path), "dev")


def test_every_registered_model_builds_with_defaults_from_its_signature():
    for name, entry in _config.MODELS.items():
        params = entry.parameters()
        assert params, name
        assert entry.hints(), name


def test_readme_config_example_is_valid(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Configs", 1)[1]
    text = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = _load(tmp_path, text)
    assert config.strategy.resolve() == unrolled.Strategy("reversible")
    assert config.strategy.resolve("greedy") == unrolled.Strategy("greedy", modules=4)
