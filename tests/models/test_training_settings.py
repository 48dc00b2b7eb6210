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
        ("image_size", 16, "integer >= 32"),
        ("image_size", {"efficientnet_lite0": 288, "vgg16": 16}, r"integer >= 32 \(or a mapping"),
        ("image_size", {"vgg16": "224"}, "integer >= 32"),
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


def test_image_size_can_be_set_per_backbone():
    import dataclasses

    from models.train import run_config

    training = load_settings({}).training
    sizes = {"vgg16": 224, "efficientnet_lite0": 288}
    validate_training({"image_size": sizes})
    for backbone, size in sizes.items():
        assert dataclasses.replace(training, backbone=backbone, image_size=sizes).input_size() == size
    assert dataclasses.replace(training, image_size=160).input_size() == 160
    unnamed = dataclasses.replace(training, backbone="vgg16", image_size={"efficientnet_lite0": 288})
    with pytest.raises(ValueError, match="names no size for backbone 'vgg16'"):
        run_config(unnamed)
