"""Batch inference: fashion vectors, embeddings and the repository refresh (incremental, idempotent,
broken images, shards, re-scoring) with real networks."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest
from fashion_synthetic import SHAPES as CLASSES
from fashion_synthetic import pattern_image, write_accepted, write_version

from models.inference import FashionVectorizer
from models.registry import publish
from pipeline.repository import read_repository, repository_schema

ATTRIBUTES = ["shape", "pattern"]
T1 = datetime(2026, 11, 2, tzinfo=UTC)
T2 = datetime(2026, 11, 3, tzinfo=UTC)


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


def test_build_repository_is_idempotent_and_skips_broken_images(published_anywhere):
    published = published_anywhere
    ids = write_accepted(published, "batch-20261101", ["striped", "solid", "checkered", "striped"], broken=1)
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    summary = vectorizer.build_repository(published, "batch-20261101", inferred_at=T1, batch_size=2)
    assert summary["accepted"] == 5 and summary["vectorized"] == 4
    assert summary["skipped_undecodable"] == 1 and summary["skipped_item_ids"] == [ids[-1]]
    assert summary["repository_rows"] == 4
    first = read_repository(published)
    assert first.column_names == repository_schema(ATTRIBUTES).names
    assert first["item_id"].to_pylist() == sorted(ids[:4])
    assert first.schema.field("phash").type == pa.uint64()
    assert set(first["crawl_date"].to_pylist()) == {date(2026, 11, 1)}  # the batch id's night
    assert set(first["embedding_source"].to_pylist()) == {"head_dense(shape)+head_dense(pattern)"}
    for row in first.to_pylist():
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert row["shape"] == CLASSES[int(np.argmax(row["shape_probs"]))] and len(row["pattern_probs"]) == 3

    again = vectorizer.build_repository(published, "batch-20261101", inferred_at=T2)
    assert again["vectorized"] == 0 and again["files_written"] == 0  # only the broken image is tried again
    assert read_repository(published).equals(first)


def test_build_repository_updates_rows_of_the_same_item_in_place(published):
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    first_ids = write_accepted(published, "batch-a", ["striped", "solid", "checkered"], start=0)
    vectorizer.build_repository(published, "batch-a", inferred_at=T1, crawl_date=date(2026, 11, 2))
    # batch-b: item 2 again (new image) plus two new items.
    second_ids = write_accepted(published, "batch-b", ["solid", "striped", "solid"], start=2, seed=99)
    summary = vectorizer.build_repository(published, "batch-b", inferred_at=T2, crawl_date=date(2026, 11, 3))
    assert summary["actions"] == {"new": 2, "image": 1, "model": 0, "catalog": 0}
    table = read_repository(published).to_pylist()
    assert summary["repository_rows"] == len(table) == 5
    assert sorted(r["item_id"] for r in table) == sorted(set(first_ids) | set(second_ids))
    by_id = {r["item_id"]: r for r in table}
    assert by_id[first_ids[2]]["inferred_at"] == T2 and by_id[first_ids[2]]["title"] == "solid shirt 2"
    assert by_id[first_ids[2]]["crawl_date"] == date(2026, 11, 2)  # it stays in the partition that first had it
    assert by_id[second_ids[2]]["crawl_date"] == date(2026, 11, 3)
    assert by_id[first_ids[0]]["inferred_at"] == T1
    assert [r["item_id"] for r in table] == sorted(by_id)


def test_module_level_build_repository_uses_the_taxonomy_attributes(published):
    from models.inference import build_repository

    write_accepted(published, "batch-c", ["striped", "solid"])
    summary = build_repository(published, "batch-c", inferred_at=T1, attributes=ATTRIBUTES)
    assert summary["vectorized"] == 2 and summary["model_versions"] == {"shape": "v1", "pattern": "v1"}
    with pytest.raises(LookupError, match="fabric"):  # the taxonomy's other attributes are not published
        build_repository(published, "batch-c")


def test_shards_infer_with_the_planned_versions_and_new_models_rescore(published):
    """The DAG's steps: plan, infer_shard per shard (module level, versions from the plan), commit;
    then a newly published shape network re-scores every row in place."""
    from models.inference import infer_shard
    from pipeline.repository import commit_refresh, plan_refresh

    ids = write_accepted(published, "catalog-20261101", ["striped", "solid", "checkered", "solid", "striped"])
    plan = plan_refresh(
        published, "catalog-20261101", batch_id="catalog-20261101", attributes=ATTRIBUTES, config={"shard_size": 2}
    )
    assert plan["shards"] == 3
    write_version(published, "shape", "v2", seed=7)
    publish(published, "shape", "v2")  # published after planning: this refresh still uses v1
    summaries = [infer_shard(published, "catalog-20261101", shard) for shard in range(3)]
    assert [s["items"] for s in summaries] == [2, 2, 1] and all(s["versions"]["shape"] == "v1" for s in summaries)
    commit_refresh(published, "catalog-20261101")
    first = read_repository(published)
    assert set(first["shape_model_version"].to_pylist()) == {"v1"}

    rescore = plan_refresh(published, "rescore-20261101T120000", attributes=ATTRIBUTES)
    assert rescore["actions"]["model"] == 5 and rescore["shards"] == 1
    infer_shard(published, "rescore-20261101T120000", 0)
    commit_refresh(published, "rescore-20261101T120000")
    table = read_repository(published)
    assert table["item_id"].to_pylist() == sorted(ids)
    assert set(table["shape_model_version"].to_pylist()) == {"v2"} and set(
        table["pattern_model_version"].to_pylist()
    ) == {"v1"}
    assert table["pattern"].to_pylist() == first["pattern"].to_pylist()  # the unchanged network answers the same
    assert table["crawl_date"].to_pylist() == first["crawl_date"].to_pylist()


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
