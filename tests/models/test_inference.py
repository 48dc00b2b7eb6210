"""Batch inference: fashion vectors and the repository table (merge, idempotency, broken images)."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from fashion_synthetic import SHAPES as CLASSES, pattern_image, write_accepted, write_version
from models.inference import REPOSITORY_KEY, FashionVectorizer
from models.registry import publish

ATTRIBUTES = ["shape", "pattern"]
T1 = datetime(2026, 11, 2, tzinfo=timezone.utc)
T2 = datetime(2026, 11, 3, tzinfo=timezone.utc)


def publish_untrained(store):
    for seed, attribute in enumerate(ATTRIBUTES):
        write_version(store, attribute, "v1", seed=seed)
        publish(store, attribute, "v1")
    return store


@pytest.fixture
def published(file_store):
    return publish_untrained(file_store)


@pytest.fixture
def published_anywhere(any_store):
    """The same, once on a folder store and once on S3 (moto)."""
    return publish_untrained(any_store)


def test_from_registry_names_the_attributes_without_a_model(published):
    with pytest.raises(LookupError, match=r"\['fabric'\]"):
        FashionVectorizer.from_registry(published, ["shape", "fabric"])


def test_vectorize_gives_class_probability_and_version_per_attribute(published):
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    rng = np.random.default_rng(0)
    images = [pattern_image("striped", rng), pattern_image("solid", rng, fmt="PNG")]
    vectors = vectorizer.vectorize(images)
    assert len(vectors) == 2
    for vector in vectors:
        assert set(vector) == {"shape", "shape_prob", "shape_model_version", "pattern", "pattern_prob", "pattern_model_version"}
        assert vector["shape"] in CLASSES and 1 / 3 <= vector["shape_prob"] <= 1.0
        assert vector["pattern_model_version"] == "v1"
    # Batched prediction equals one-by-one prediction.
    assert vectorizer.vectorize(images[1:])[0]["shape_prob"] == pytest.approx(vectors[1]["shape_prob"], rel=1e-5)


def test_build_repository_is_idempotent_and_skips_broken_images(published_anywhere):
    published = published_anywhere
    ids = write_accepted(published, "batch-20261101", ["striped", "solid", "checkered", "striped"], broken=1)
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    summary = vectorizer.build_repository(published, "batch-20261101", inferred_at=T1, batch_size=2)
    assert summary["accepted"] == 5 and summary["vectorized"] == 4
    assert summary["skipped_undecodable"] == 1 and summary["skipped_item_ids"] == [ids[-1]]
    assert summary["repository_rows"] == 4
    first = published.read_parquet(REPOSITORY_KEY)
    assert first.column_names == [
        "item_id", "retailer", "product_url", "title", "price", "currency", "image_key", "phash",
        "content_sha256", "crawled_at", "shape", "shape_prob", "shape_model_version",
        "pattern", "pattern_prob", "pattern_model_version", "inferred_at",
    ]
    assert first["item_id"].to_pylist() == sorted(ids[:4])
    assert first.schema.field("phash").type == pa.uint64()

    vectorizer.build_repository(published, "batch-20261101", inferred_at=T1)
    again = published.read_parquet(REPOSITORY_KEY)
    assert again.num_rows == 4
    assert again.equals(first)


def test_build_repository_replaces_rows_of_the_same_item(published):
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    first_ids = write_accepted(published, "batch-a", ["striped", "solid", "checkered"], start=0)
    vectorizer.build_repository(published, "batch-a", inferred_at=T1)
    # batch-b: item 2 again (new image) plus two new items.
    second_ids = write_accepted(published, "batch-b", ["solid", "striped", "solid"], start=2, seed=99)
    summary = vectorizer.build_repository(published, "batch-b", inferred_at=T2)
    table = published.read_parquet(REPOSITORY_KEY).to_pylist()
    assert summary["repository_rows"] == len(table) == 5
    assert sorted(r["item_id"] for r in table) == sorted(set(first_ids) | set(second_ids))
    by_id = {r["item_id"]: r for r in table}
    assert by_id[first_ids[2]]["inferred_at"] == T2 and by_id[first_ids[2]]["title"] == "solid shirt 2"
    assert by_id[first_ids[0]]["inferred_at"] == T1
    assert [r["item_id"] for r in table] == sorted(by_id)


def test_module_level_build_repository_uses_the_taxonomy_attributes(published):
    from models.inference import build_repository

    write_accepted(published, "batch-c", ["striped", "solid"])
    summary = build_repository(published, "batch-c", inferred_at=T1, attributes=ATTRIBUTES)
    assert summary["vectorized"] == 2 and summary["model_versions"] == {"shape": "v1", "pattern": "v1"}
    with pytest.raises(LookupError, match="fabric"):  # the taxonomy's other attributes are not published
        build_repository(published, "batch-c")


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
        assert {k: v for k, v in a.items() if not k.endswith("_prob")} == {k: v for k, v in b.items() if not k.endswith("_prob")}
        assert [a[k] for k in sorted(a) if k.endswith("_prob")] == pytest.approx([b[k] for k in sorted(b) if k.endswith("_prob")], rel=1e-4)
    keras.backend.clear_session()
