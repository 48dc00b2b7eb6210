"""Batch inference: fashion vectors and embeddings with real networks (the repository refresh they feed:
tests/pipeline/repository/test_infer.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fashion_synthetic import SHAPES as CLASSES
from fashion_synthetic import pattern_image, publish_untrained, write_version

from models.inference import FashionVectorizer
from models.registry import publish

ATTRIBUTES = ["shape", "pattern"]


@pytest.fixture
def published(file_store):
    return publish_untrained(file_store, ATTRIBUTES)


def test_from_registry_names_the_attributes_without_a_model(published):
    with pytest.raises(LookupError, match=r"\['fabric'\]"):
        FashionVectorizer.from_registry(published, ["shape", "fabric"])


def test_vectorize_gives_class_probabilities_version_and_an_embedding(published):
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    rng = np.random.default_rng(0)
    images = [pattern_image("striped", rng), pattern_image("solid", rng, fmt="PNG")]
    vectors = vectorizer.vectorize(images)
    assert len(vectors) == 2
    for vector in vectors:
        assert set(vector) == {
            f"{a}{suffix}" for a in ATTRIBUTES for suffix in ("", "_prob", "_probs", "_model_version")
        } | {"embedding", "embedding_source"}
        assert vector["shape"] in CLASSES and 1 / 3 <= vector["shape_prob"] <= 1.0
        assert vector["shape_probs"].dtype == np.float32 and vector["shape_probs"].sum() == pytest.approx(1.0, abs=1e-5)
        assert vector["shape"] == CLASSES[int(vector["shape_probs"].argmax())]
        assert vector["shape_prob"] == pytest.approx(float(vector["shape_probs"].max()))
        assert vector["pattern_model_version"] == "v1"
        # Two networks with backbones of their own: their Dense layers (8 units here), each normalised.
        assert vector["embedding_source"] == "head_dense(shape)+head_dense(pattern)"
        assert vector["embedding"].shape == (16,) and np.linalg.norm(vector["embedding"]) == pytest.approx(
            1.0, abs=1e-5
        )
    # Batched prediction equals one-by-one prediction.
    assert vectorizer.vectorize(images[1:])[0]["shape_prob"] == pytest.approx(vectors[1]["shape_prob"], rel=1e-5)


def test_networks_with_one_backbone_share_it_and_give_the_same_vectors(file_store):
    """Two attributes trained on the same frozen base: one backbone pass, the networks' own answers."""
    import keras

    from models.inference import backbone_fingerprint
    from models.registry import load_model

    for attribute in ("shape", "pattern", "style"):
        write_version(file_store, attribute, "v1", seed=0 if attribute != "style" else 5)  # same seed: same base
        publish(file_store, attribute, "v1")
    pattern = load_model(file_store, "pattern")
    head = pattern.model.get_layer("predictions")
    head.set_weights([w + np.random.default_rng(1).normal(0, 0.5, w.shape).astype(w.dtype) for w in head.get_weights()])
    networks = {"shape": load_model(file_store, "shape"), "pattern": pattern, "style": load_model(file_store, "style")}
    assert backbone_fingerprint(networks["shape"]) == backbone_fingerprint(networks["pattern"])
    assert backbone_fingerprint(networks["style"]) != backbone_fingerprint(networks["shape"])

    shared = FashionVectorizer(networks)
    assert sorted(map(sorted, shared.groups)) == [["pattern", "shape"], ["style"]]
    stacked = FashionVectorizer(networks, shared=False)
    assert len(stacked.groups) == 3

    rng = np.random.default_rng(2)
    images = [pattern_image(kind, rng) for kind in ("striped", "solid", "checkered", "striped")]
    decoded = [shared.decode(image) for image in images]
    by_shared, by_stacked = shared.probabilities(decoded), stacked.probabilities(decoded)
    for attribute, network in networks.items():
        direct = network.model.predict(np.stack([d[32] for d in decoded]).astype("float32"), verbose=0)
        np.testing.assert_allclose(by_shared[attribute], direct, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(by_stacked[attribute], direct, rtol=1e-4, atol=1e-6)
    assert not np.allclose(by_shared["pattern"], by_shared["shape"])  # each head is its own
    for a, b in zip(shared.vectorize(images), stacked.vectorize(images)):
        for attribute in networks:
            assert a[attribute] == b[attribute] and a[f"{attribute}_model_version"] == b[f"{attribute}_model_version"]
            assert a[f"{attribute}_prob"] == pytest.approx(b[f"{attribute}_prob"], rel=1e-4)
            np.testing.assert_allclose(a[f"{attribute}_probs"], b[f"{attribute}_probs"], rtol=1e-4, atol=1e-6)
    # The embedding: the shared base's pooled features for the group, the Dense layer of a network alone.
    assert sorted(shared.embedding_source.split("+")) == ["head_dense(style)", "pool(vgg16:shape,pattern)"]
    assert stacked.embedding_source == "head_dense(shape)+head_dense(pattern)+head_dense(style)"
    _, embedding = shared.outputs(decoded)
    pooled = keras.Model(pattern.model.input, pattern.model.get_layer("pool").output).predict(
        np.stack([d[32] for d in decoded]).astype("float32"), verbose=0
    )
    part = embedding[:, : pooled.shape[1]] * np.sqrt(2)
    np.testing.assert_allclose(part, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_images_reach_the_networks_by_the_shared_decoding_rules(published):
    """Training and inference decode (models.data.decode_image) through pipeline.images: a phone JPEG
    stored sideways reaches the networks upright, and a refused image keeps its reason."""
    import io
    import struct
    import zlib

    from PIL import Image

    from models.data import UndecodableImage

    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    upright = Image.open(io.BytesIO(pattern_image("striped", np.random.default_rng(1)))).convert("RGB")
    upright = upright.resize((upright.width, upright.height * 2))  # portrait, so a turn shows
    exif = Image.Exif()
    exif[0x0112] = 6
    phone, shop = io.BytesIO(), io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(phone, "JPEG", quality=95, exif=exif.tobytes())
    upright.save(shop, "JPEG", quality=95)
    ((size, from_phone),) = vectorizer.decode(phone.getvalue()).items()
    ((_, from_shop),) = vectorizer.decode(shop.getvalue()).items()
    assert np.abs(from_phone.astype(int) - from_shop).mean() < 4

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(UndecodableImage) as caught:
        vectorizer.vectorize([shop.getvalue(), bomb])
    assert caught.value.reason == "decompression_bomb" and "#1" in str(caught.value)
