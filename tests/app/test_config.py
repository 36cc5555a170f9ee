"""The option schema: one declaration per option, presets, validation, the resume policy."""

import argparse
import dataclasses
import math
import types
import typing

import pytest

from npgrad.app.config import (
    BY_NAME,
    OPTIONS,
    PRESETS,
    Config,
    config_from_dict,
    explicit_options,
    make_config,
    parse_hidden,
    preset_values,
    resume_config,
)
from npgrad.cli import build_parser
from npgrad.errors import CheckpointError, ConfigError


def test_every_option_is_a_config_field_and_nothing_else():
    fields = set(Config.__dataclass_fields__)
    assert fields == {o.name for o in OPTIONS} | {"preset"}


def _has_type(value, hint):
    """isinstance for the field types Config uses: classes, ``list[X]`` and ``X | None``."""
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    assert hint in (str, int, float, bool), f"not a real field type: {hint}"
    return type(value) is hint  # an int is not a float here, nor a bool an int


def test_config_fields_are_the_option_table_in_order_typed_and_defaulted_by_it():
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == ["preset"] + [o.name for o in OPTIONS]
    hints = typing.get_type_hints(Config)
    assert hints["preset"] is str and Config().preset == "default"
    cfg = Config()
    for o in OPTIONS:
        hint = hints[o.name]
        assert getattr(cfg, o.name) == o.default, o.name
        # Every value the table declares for the option has the field's type ...
        declared = [o.default, *o.presets.values(), *o.families.values()]
        assert all(_has_type(v, hint) for v in declared), (o.name, hint, declared)
        # ... and so has what its flag makes of text.
        if o.default is not None:
            shown = ",".join(map(str, o.default)) if isinstance(o.default, list) else o.default
            assert _has_type(o.parse(str(shown)), hint), (o.name, hint)
    assert Config().hidden is not Config().hidden  # a list default is each Config's own


def test_every_train_flag_comes_from_the_schema():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    schema_dests = {o.name for o in OPTIONS if o.cli}
    own = {
        "help",
        "preset",
        "out",
        "resume",
        "force",
        "json",
        "plot",
        "quiet",
        "compile",
        "workers",
        "device",
    }
    dests = [a.dest for a in sub._actions]
    assert len(dests) == len(set(dests))  # each option once
    assert set(dests) == schema_dests | own
    for o in OPTIONS:
        action = next(a for a in sub._actions if a.dest == o.name)
        assert tuple(action.option_strings) == o.flag_names
        assert action.default is None  # the preset supplies the value, not argparse


def _train_help():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    return {a.dest: " ".join(a.help.split()) for a in sub._actions}


@pytest.mark.parametrize("preset", PRESETS)
def test_help_shows_the_value_each_preset_really_uses(preset):
    helps, cfg = _train_help(), make_config(preset)
    for o in OPTIONS:
        value = getattr(cfg, o.name)
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        shown = f"{shown:g}" if isinstance(shown, float) else str(shown)
        label = "default" if preset == "default" or preset not in o.presets else f"{preset} preset"
        if value is not None:
            assert f"{label} {shown}" in helps[o.name], (o.name, helps[o.name])


def test_shift_help_matches_the_preset():  # it said "default 2" while the preset used 1
    assert make_config("default").shift == 1
    assert "(default 1;" in _train_help()["shift"]


def test_presets_and_families():
    assert make_config("plain").hidden == [100] and make_config("plain").lr == 1e-3
    ex = make_config("exercise")
    assert (ex.model, ex.dtype, ex.batch_size, ex.epochs) == ("exercise", "float64", 0, 50)
    assert make_config("default", dataset="digits").batch_size == 64
    assert make_config("default", family="fashion-mnist", dataset="/x/y").shift == 0
    assert make_config("plain", dataset="digits").batch_size == 128  # families adapt "default" only
    assert preset_values("default")["hidden"] is not preset_values("default")["hidden"]


def test_explicit_values_win_and_none_means_not_given():
    cfg = make_config("plain", lr=0.01, hidden=None)
    assert cfg.lr == 0.01 and cfg.hidden == [100]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("epochs", 0, "--epochs must be an integer between 1"),
        ("lr", -1.0, "--lr must be a number in (0, 1000], got -1.0"),
        ("lr", math.nan, "--lr must be a number"),
        ("lr", 1e30, "--lr must be a number in"),
        ("dropout", 1.5, "--dropout must be a probability"),
        ("val_fraction", 0.9999999 + 1, "--val must be a fraction"),
        ("shift", 7, "--shift must be an integer between 0 and 4"),
        ("seed", -1, "--seed must be an integer between 0"),
        ("warmup_epochs", -5.0, "--warmup must be a number at least 0"),
        ("warmup_epochs", math.nan, "--warmup must be a number"),
        ("clip", -1.0, "--clip must be a number at least 0"),
        ("momentum", math.nan, "--momentum must be a number"),
        ("optimizer", "rmsprop", "--optimizer unknown value 'rmsprop': use sgd"),
        ("model", "rnn", "--model unknown value 'rnn'"),
        ("hidden", [0], "hidden sizes must be positive"),
    ],
)
def test_invalid_values_are_refused_with_the_flag_named(option, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make_config("default", **{option: value})


@pytest.mark.parametrize(
    "option", [o.name for o in OPTIONS if o.models and "exercise" not in o.models]
)
def test_options_the_exercise_model_does_not_use_are_refused(option):
    value = {"activation": "tanh", "init": "glorot", "optimizer": "sgd", "schedule": "cosine"}
    with pytest.raises(ConfigError, match="is not used by the exercise model"):
        make_config("exercise", **{option: value.get(option, BY_NAME[option].default)})


def test_exercise_model_has_one_hidden_layer():
    with pytest.raises(ConfigError, match="exactly one hidden layer"):
        make_config("exercise", hidden=[100, 50])


def test_directory_datasets_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    assert make_config(dataset="d").dataset == str(tmp_path / "d")
    assert make_config(dataset="MNIST").dataset == "mnist"


def test_resume_policy():
    stored = make_config("default", dataset="digits")
    assert resume_config(stored, {"epochs": 30}).epochs == 30
    assert resume_config(stored, {"lr": stored.lr}).lr == stored.lr
    with pytest.raises(ConfigError, match="--hidden cannot change when resuming"):
        resume_config(stored, {"hidden": [5]})
    assert resume_config(stored, {"preset": "default"}) == stored
    with pytest.raises(ConfigError, match="--preset cannot change when resuming"):
        resume_config(stored, {"preset": "plain"})


def test_config_round_trips_and_reads_older_checkpoints():
    cfg = make_config("exercise")
    assert config_from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "model"}
    old.update(optimizer="gd", loss_reduction="sum")  # how the first landing stored the exercise
    assert config_from_dict(old).model == "exercise"
    with pytest.raises(CheckpointError, match="unknown keys"):
        config_from_dict({**cfg.to_dict(), "turbo": 1})
    with pytest.raises(CheckpointError, match="stored configuration is invalid"):
        config_from_dict({**cfg.to_dict(), "lr": -1})


def test_explicit_options_from_a_namespace():
    args = argparse.Namespace(**{o.name: None for o in OPTIONS})
    args.lr, args.hidden = 0.5, [3]
    assert explicit_options(args) == {"lr": 0.5, "hidden": [3]}


@pytest.mark.parametrize(
    "text, sizes",
    [("256", [256]), ("512,256", [512, 256]), ("100-50", [100, 50]), ("none", []), ("0", [])],
)
def test_parse_hidden(text, sizes):
    assert parse_hidden(text) == sizes


@pytest.mark.parametrize(
    "text, message",
    [("256,abc", "as integers"), ("-5", "must be positive"), ("12,,3", "as integers")],
)
def test_parse_hidden_errors(text, message):
    with pytest.raises(ConfigError, match=f"bad architecture.*{message}"):
        parse_hidden(text)
