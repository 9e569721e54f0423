"""The string choices of the config and the library: Literal aliases (gpd.choices), checked in one place."""

from __future__ import annotations

import pytest

from gpd.choices import KDMethodName, LayoutChoice, MemoryMode, check_choice, choice_error, choices_of, describe_choices
from gpd.config import load_config
from gpd.config.loading import _choice_keys, validate
from gpd.config.schema import Config
from gpd.errors import ConfigError


def test_choices_are_read_from_the_literal():
    assert choices_of(MemoryMode) == ("joint", "sequential")
    assert describe_choices(KDMethodName) == "none, kd, dkd or reviewkd"
    assert describe_choices(LayoutChoice, optional=True) == "auto, tiled, interleaved or null"
    assert (
        choice_error("gpd.layout", "wide", LayoutChoice) == "gpd.layout must be auto, tiled or interleaved, got 'wide'"
    )
    assert check_choice("train.memory_mode", "joint", MemoryMode) == "joint"
    assert check_choice("x", None, MemoryMode, optional=True) is None
    with pytest.raises(ValueError, match="x must be joint or sequential, got 'both'"):
        check_choice("x", "both", MemoryMode, error=ValueError)


TODAYS_MESSAGES = {  # the messages of the checks validate() held before the Literal aliases
    "gpd.branches": "gpd.branches must be none or orepa, got 'bad'",
    "gpd.branch_init": "gpd.branch_init must be default or identity, got 'bad'",
    "gpd.layout": "gpd.layout must be auto, tiled or interleaved, got 'bad'",
    "gpd.step_rule": "gpd.step_rule must be paper or plain, got 'bad'",
    "train.precision": "train.precision must be fp32, bf16 or fp16, got 'bad'",
    "train.memory_mode": "train.memory_mode must be joint or sequential, got 'bad'",
    "train.on_nonfinite": "train.on_nonfinite must be stop or skip, got 'bad'",
    "data.interpolation": "data.interpolation must be bilinear, bicubic, nearest or null, got 'bad'",
}


def test_every_literal_key_of_the_schema_is_checked_with_its_one_line_message(tmp_path):
    keys = {key for key, *_ in _choice_keys(Config())}
    assert keys == set(TODAYS_MESSAGES)
    for key, message in TODAYS_MESSAGES.items():
        with pytest.raises(ConfigError) as override:
            load_config(None, [f"{key}=bad"])
        assert str(override.value) == message
        section, name = key.split(".")
        path = tmp_path / f"{section}_{name}.yaml"
        path.write_text(f"{section}:\n  {name}: bad\n")
        with pytest.raises(ConfigError) as in_file:
            load_config(str(path))
        assert str(in_file.value) == message
        cfg = Config()  # a config built in code: validate() checks it the same way
        setattr(getattr(cfg, section), name, "bad")
        with pytest.raises(ConfigError) as built:
            validate(cfg)
        assert str(built.value) == message


def test_kd_method_is_checked_against_the_registry_with_one_line_message(tmp_path):
    """kd.method is a string (a registered name or an import path), not a Literal: the registry lists the names."""
    message = (
        "kd.method must be none, kd, dkd or reviewkd or an import path "
        "(package.module:ClassName or path/to/file.py:ClassName), got 'bad'"
    )
    with pytest.raises(ConfigError) as override:
        load_config(None, ["kd.method=bad"])
    path = tmp_path / "kd.yaml"
    path.write_text("kd:\n  method: bad\n")
    with pytest.raises(ConfigError) as in_file:
        load_config(str(path))
    cfg = Config()
    cfg.kd.method = "bad"
    with pytest.raises(ConfigError) as built:
        validate(cfg)
    assert str(override.value) == str(in_file.value) == str(built.value) == message
    for name in ("none", "kd", "dkd", "reviewkd"):
        teacher = ["teacher.model=resnet8"] * (name != "none")
        assert load_config(None, [f"kd.method={name}", *teacher]).kd.method == name


def test_a_literal_key_takes_each_of_its_values():
    for key, _, choices, _ in _choice_keys(Config()):
        for value in choices_of(choices):
            needs = {"data.interpolation": ["data.name=cifar10"]}
            cfg = load_config(None, [f"{key}={value}", *needs.get(key, [])])
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value
