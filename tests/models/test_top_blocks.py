"""Issue 13: a linear head, the backbone cut for top-blocks fine-tuning, and the head started as the probe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.network import (
    BACKBONE_LAYER,
    backbone_cut,
    build_attribute_network,
    embedding_layer,
    head_layer_names,
    set_tail_trainable,
    split_at,
)


def test_a_linear_head_has_no_hidden_layer_and_embeds_the_standardised_features():
    model = build_attribute_network(3, image_size=32, dense_units=0, dropout=0.0)
    assert "head_dense" not in head_layer_names(model) and embedding_layer(model) == "feature_norm"
    assert embedding_layer(build_attribute_network(3, image_size=32, dense_units=4)) == "head_dense"
    with pytest.raises(ValueError, match="dense_units"):
        build_attribute_network(3, image_size=32, dense_units=-1)


def test_the_tail_computes_what_the_whole_network_does_and_shares_its_weights():
    model = build_attribute_network(2, image_size=32, dense_units=4)
    cut = backbone_cut(model, "block5")
    assert cut == "block5_conv1"
    frozen, tail, tail_features = split_at(model, cut)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    activations = frozen.predict(images, verbose=0)
    np.testing.assert_allclose(
        tail.predict(activations, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert tail_features.output.shape[-1] == 512
    model_weights = {id(w) for w in model.weights}
    assert all(id(w) in model_weights for w in tail.weights)  # training the tail trains the network


def test_set_tail_trainable_leaves_the_lower_blocks_frozen():
    model = build_attribute_network(2, image_size=32, dense_units=4)
    set_tail_trainable(model, "block5_conv1")
    base = model.get_layer(BACKBONE_LAYER)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    set_tail_trainable(model, None)
    assert all(layer.trainable for layer in base.layers if layer.weights)


def test_an_unknown_cut_is_a_clear_error():
    model = build_attribute_network(2, image_size=32, dense_units=4)
    assert backbone_cut(model, "all") is None
    with pytest.raises(ValueError, match="no layer of backbone"):
        backbone_cut(model, "block99")


@pytest.mark.slow
def test_top_blocks_fine_tuning_from_the_probe_changes_only_the_tail(file_store, tiny_training):
    """The production path end to end on tiny data: the head starts as the probe (so phase 1 starts at the
    probe's predictions), phase 2 trains only block5 (VGG16) on cached activations and mirrors."""
    from fashion_synthetic import write_dataset

    import models.train as train_module
    from models.registry import load_model, publish

    write_dataset(file_store, per_class=12, kinds=("striped", "solid"))
    config = dataclasses.replace(
        tiny_training,
        dense_units=0,
        dropout=0.0,
        head_init="probe",
        frozen_epochs=0,
        unfrozen_epochs=2,
        unfreeze_from={"vgg16": "block5"},
        image_size={"vgg16": tiny_training.input_size(), "efficientnet_lite0": 288},  # per backbone, as shipped
        mirror_augment=True,
        lr_schedule="cosine",
        warmup_epochs=1,
        selection_margin=0,
        patience=2,
    )
    seen = {}
    original = train_module.fine_tune_tail

    def spy(model, cut, train, validation, *args, **kwargs):
        base = model.get_layer(BACKBONE_LAYER)
        seen["before"] = {layer.name: [w.copy() for w in layer.get_weights()] for layer in base.layers if layer.weights}
        seen["cut"], seen["train_inputs"] = cut, train.inputs.shape
        seen["mirrored"] = None if train.mirrored is None else train.mirrored.shape
        original(model, cut, train, validation, *args, **kwargs)
        seen["after"] = {layer.name: layer.get_weights() for layer in base.layers if layer.weights}

    train_module.fine_tune_tail = spy
    try:
        metrics = train_module.train_attribute(file_store, "pattern", "v1", config, ("striped", "solid"))
    finally:
        train_module.fine_tune_tail = original
    assert seen["cut"] == "block5_conv1" and seen["mirrored"] == seen["train_inputs"]
    moved = {
        name
        for name in seen["before"]
        if any(not np.array_equal(b, a) for b, a in zip(seen["before"][name], seen["after"][name]))
    }
    assert moved and moved <= {"block5_conv1", "block5_conv2", "block5_conv3"}
    assert [r["phase"] for r in metrics["history"]] == ["unfrozen", "unfrozen"]
    assert metrics["probe"]["val_accuracy"] >= 0 and metrics["published"] in ("network", "probe")
    assert metrics["timing"]["phase2_images_per_second"] > 0 and metrics["timing"]["frozen_pass_seconds"] > 0
    publish(file_store, "pattern", "v1")
    loaded = load_model(file_store, "pattern")
    kept = "head_dense" not in {layer.name for layer in loaded.model.layers}
    assert kept  # network and probe are both linear heads here


def test_head_init_probe_needs_a_linear_head(file_store, tiny_training):
    from fashion_synthetic import write_dataset

    from models.train import train_attribute

    write_dataset(file_store, per_class=4, kinds=("striped", "solid"))
    with pytest.raises(ValueError, match="linear head"):
        train_attribute(
            file_store,
            "pattern",
            "v1",
            dataclasses.replace(tiny_training, head_init="probe", frozen_epochs=1, unfrozen_epochs=0),
            ("striped", "solid"),
        )
