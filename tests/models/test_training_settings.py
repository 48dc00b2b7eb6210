"""Issue 13: the training section of config/settings.yaml is validated where it is read (pipeline.settings),
and the recipe it holds is what models.train runs."""

from __future__ import annotations

import pytest

from pipeline.settings import load_settings, validate_training


def test_the_shipped_profiles_validate_and_name_the_recipe():
    for env in ({}, {"FASHIONNET_PROFILE": "demo"}, {"FASHIONNET_PROFILE": "test"}):
        training = load_settings(env).training
        assert validate_training(training) is training


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr_schedule", "step", "one of"),
        ("image_fit", "pad", "one of"),
        ("mixed_precision", "fp16", "one of"),
        ("dense_units", -1, "integer >= 0"),
        ("frozen_epochs", 2.5, "integer"),
        ("label_smoothing", 1.5, "number in"),
        ("weight_decay", -0.1, "number in"),
        ("selection_margin", "one", "number in"),
        ("mirror_augment", "yes", "true or false"),
        ("unfreeze_from", "", "prefix"),
        ("unfreeze_from", {"efficientnet_lite0": 11}, "prefix"),
    ],
)
def test_bad_training_values_are_clear_errors(key, value, message):
    with pytest.raises(ValueError, match=rf"training\.{key}: .*{message}"):
        validate_training({key: value})


def test_head_from_the_probe_needs_a_linear_head():
    validate_training({"head_init": "probe", "dense_units": 0})
    with pytest.raises(ValueError, match="head_init: probe needs dense_units: 0"):
        validate_training({"head_init": "probe", "dense_units": 512})


def test_the_default_config_is_what_training_reads():
    from models.train import run_config

    training = load_settings({}).training
    config = run_config(training)
    for key, value in training.as_dict().items():
        assert getattr(config, key) == value, key
