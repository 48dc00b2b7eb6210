"""The attribute network: shape, softmax, preprocessing inside the graph, frozen vs trainable base."""

from __future__ import annotations

import numpy as np
import pytest

from models.network import (
    BACKBONE_LAYER,
    build_attribute_network,
    feature_extractor,
    head_model,
    set_backbone_trainable,
)


@pytest.fixture(scope="module")
def network():
    return build_attribute_network(3, image_size=32, dense_units=16, name="pattern_network")


def test_output_is_a_softmax_over_the_classes(network):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
    probs = network.predict(images, verbose=0)
    assert probs.shape == (4, 3)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert network.name == "pattern_network"
    assert network.get_layer(BACKBONE_LAYER).name == "backbone"


def test_preprocess_input_is_inside_the_model(network):
    import keras

    raw = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype("float32")
    probe = keras.Model(network.input, network.get_layer("preprocess").output)
    expected = keras.applications.vgg16.preprocess_input(raw.copy())
    np.testing.assert_allclose(probe.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-3)
    # The backbone is fed the preprocessed tensor, not the raw image (nor raw / 255).
    backbone_input = network.get_layer(BACKBONE_LAYER).input
    assert network.get_layer(BACKBONE_LAYER)._inbound_nodes[0].parent_nodes[0].operation.name == "preprocess"
    assert backbone_input.shape[1:] == (32, 32, 3)


def test_uint8_and_float_inputs_give_the_same_prediction(network):
    raw = np.random.default_rng(2).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    np.testing.assert_allclose(
        network.predict(raw, verbose=0), network.predict(raw.astype("float32"), verbose=0), rtol=1e-5
    )


def test_frozen_means_the_whole_base_and_unfrozen_all_of_it():
    model = build_attribute_network(2, image_size=32, dense_units=8)
    base = model.get_layer(BACKBONE_LAYER)
    set_backbone_trainable(model, False)
    assert base.weights and not base.trainable_weights
    assert all(not layer.trainable for layer in base.layers if layer.weights)
    head_names = {w.path.split("/")[0] for w in model.trainable_weights}
    assert head_names == {"head_dense", "predictions"}
    set_backbone_trainable(model, True)
    assert len(base.trainable_weights) == len(base.weights) == 26  # 13 conv layers, kernel + bias
    assert all(layer.trainable for layer in base.layers if layer.weights)


def test_head_model_shares_the_network_layers():
    model = build_attribute_network(2, image_size=32, dense_units=8)
    head = head_model(model)
    features = feature_extractor(model)
    images = np.random.default_rng(3).integers(0, 256, size=(3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        head.predict(features.predict(images, verbose=0), verbose=0),
        model.predict(images, verbose=0),
        rtol=1e-4,
        atol=1e-6,
    )
    kernel = model.get_layer("predictions").kernel
    assert any(w is kernel for w in head.weights)


def test_weights_from_a_local_file(tmp_path):
    source = build_attribute_network(2, image_size=32, dense_units=8)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.get_layer(BACKBONE_LAYER).save_weights(str(path))
    loaded = build_attribute_network(2, image_size=32, dense_units=8, weights=str(path))
    for a, b in zip(source.get_layer(BACKBONE_LAYER).get_weights(), loaded.get_layer(BACKBONE_LAYER).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_and_unknown_backbone_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_attribute_network(2, image_size=32, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        build_attribute_network(2, image_size=32, backbone="resnet9")
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_attribute_network(1, image_size=32)


def test_efficientnet_lite0_backbone_is_registered_next_to_the_vgg16_default():
    import keras

    from models.efficientnet_lite import preprocess_input
    from models.network import BACKBONES, BackbonePreprocess

    assert set(BACKBONES) == {"vgg16", "efficientnet_lite0"}
    default = build_attribute_network(2, image_size=32, dense_units=8)
    assert default.get_layer("preprocess").backbone == "vgg16"  # VGG16 stays the default

    model = build_attribute_network(3, backbone="efficientnet_lite0", image_size=32, dense_units=8)
    raw = np.random.default_rng(4).integers(0, 256, size=(2, 32, 32, 3)).astype("float32")
    probe = keras.Model(model.input, model.get_layer("preprocess").output)
    np.testing.assert_allclose(probe.predict(raw, verbose=0), preprocess_input(raw), rtol=1e-6)
    assert BackbonePreprocess.from_config(model.get_layer("preprocess").get_config()).backbone == "efficientnet_lite0"
    assert model.get_layer(BACKBONE_LAYER).output.shape[1:] == (1, 1, 1280)
    assert model.get_layer("pool").output.shape[1:] == (1280,)

    # Unfrozen for fine-tuning: every conv trainable, every BatchNormalization still frozen.
    set_backbone_trainable(model, True)
    base = model.get_layer(BACKBONE_LAYER)
    batch_norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 49 and not any(layer.trainable for layer in batch_norms)
    bn_numbers = sum(int(np.prod(w.shape)) for layer in batch_norms for w in layer.weights)
    trainable = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    assert trainable == base.count_params() - bn_numbers == 3_328_992  # the convolutions' kernels
    set_backbone_trainable(model, False)
    assert not base.trainable_weights

    with pytest.raises(ValueError, match="at least 32 px"):
        build_attribute_network(2, backbone="efficientnet_lite0", image_size=24)
    with pytest.raises(ValueError, match="known: \\['efficientnet_lite0', 'vgg16'\\]"):
        build_attribute_network(2, image_size=32, backbone="resnet9")


def test_feature_standardization_floors_the_std_of_features_that_never_vary():
    """A dead channel in training must not turn a small shift later into thousands of sigmas."""
    from models.network import FeatureStandardization

    rng = np.random.default_rng(0)
    features = rng.normal(2.0, 0.5, size=(64, 8)).astype("float32")
    features[:, 0] = 6.0  # a ReLU6 channel stuck at its ceiling on every training image
    layer = FeatureStandardization()
    layer.build((None, 8))
    layer.adapt_to(features)
    shifted = features[:1].copy()
    shifted[0, 0] = 5.9
    out = np.asarray(layer(shifted))
    assert abs(out[0, 0]) < 10  # 0.1 below a constant, scaled by a tenth of the typical std: ~2 sigma
    np.testing.assert_allclose(np.asarray(layer(features))[:, 1:].std(axis=0), 1.0, rtol=1e-3)
