import datetime as dt
import io
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from PIL import Image

from pipeline.hashing import content_sha256, perceptual_hashes
from pipeline.images import rules_from_settings
from pipeline.recommend import scoring
from pipeline.recommend.exclusions import own_image_mask, shown_before
from pipeline.recommend.options import Filters, InvalidRequest, options_from_params, run_partition, validate_options
from pipeline.recommend.outputs import latest_run
from pipeline.recommend.profile import build_profile
from pipeline.recommend.ranking import RankRequest, rank
from pipeline.recommend.recommendations import UserRequest, recommend_for_user, recommend_for_users
from pipeline.recommend.users import list_users, plan_requests, validate_request
from pipeline.settings import get_settings
from pipeline.store_layout import (
    FASHION_VECTORS_PREFIX,
    profile_key,
    recommendation_page_key,
    recommendations_key,
    shown_key,
)

ATTRS = ["pattern", "fabric", "style", "shape"]
TAXONOMY = {a: get_settings().taxonomy.classes(a) for a in ATTRS}
get_settings.cache_clear()
MATCHES = {"score_kind": "matches", "mmr_lambda": 1.0}


# -- helpers ------------------------------------------------------------------------------------------
def rank_request(profile, k, phash_max_distance=None, *, exclude_item_ids=(), confirm_near_copy=None, **options):
    """A RankRequest as users' input becomes one: the options validated (k, score_kind, mmr_lambda)."""
    return RankRequest(profile, validate_options(k, **options), exclude_item_ids, phash_max_distance, confirm_near_copy)


def user_request(user_id, image_keys, k, run_date, *, run_id=None, filters=None, **options):
    """A UserRequest as users' input becomes one: the options validated (k, score_kind, mmr_lambda, filters)."""
    return UserRequest(user_id, image_keys, run_date, validate_options(k, filters=filters, **options), run_id)


def noise_jpeg(seed: int, size: int = 128, quality: int = 90) -> bytes:
    """A blocky random image: distinct seeds give pHashes far apart (>= 18 bits here)."""
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def recompressed(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).resize((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def phash_of(data: bytes) -> int:
    return perceptual_hashes(Image.open(io.BytesIO(data)))[0]


def classes(pattern, fabric, style, shape) -> dict[str, str | None]:
    return dict(zip(ATTRS, (pattern, fabric, style, shape)))


def probs_for(attribute: str, cls: str | None, prob: float) -> list[float] | None:
    """A softmax vector with ``prob`` on ``cls`` and the rest spread evenly (None for a null class)."""
    names = TAXONOMY[attribute]
    if cls is None:
        return None
    rest = (1.0 - prob) / (len(names) - 1) if cls in names else 1.0 / len(names)
    return [prob if name == cls else rest for name in names]


def embedding_for(cls: dict[str, str | None]) -> list[float] | None:
    """One-hot of every attribute's class, normalised: the cosine of two is their share of equal classes."""
    vector = np.concatenate([[1.0 if name == cls[a] else 0.0 for name in TAXONOMY[a]] for a in ATTRS])
    norm = np.linalg.norm(vector)
    return (vector / norm).tolist() if norm else None


def profile_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Profile rows: ``classes`` plus optional phash / content_sha256 / prob / emb."""
    columns: dict[str, Any] = {
        "image_key": [f"users/u/{i}.jpg" for i in range(len(rows))],
        "phash": pa.array([r.get("phash", 2**64 - 1 - i) for i, r in enumerate(rows)], pa.uint64()),
        "content_sha256": [r.get("sha", f"profile-sha-{i}") for i, r in enumerate(rows)],
    }
    for a in ATTRS:
        columns[a] = pa.array([r["classes"][a] for r in rows], pa.string())
        columns[f"{a}_prob"] = pa.array([r.get("prob", 0.9) for r in rows], pa.float64())
        columns[f"{a}_probs"] = pa.array(
            [probs_for(a, r["classes"][a], r.get("prob", 0.9)) for r in rows], pa.list_(pa.float32())
        )
        columns[f"{a}_model_version"] = ["v1"] * len(rows)
    columns["embedding"] = pa.array([r.get("emb", embedding_for(r["classes"])) for r in rows], pa.list_(pa.float32()))
    return pa.table(columns)


def repository_table(items: list[dict[str, Any]]) -> pa.Table:
    """A fashion-vector repository with the contract's columns (pipeline/repository/schema.json)."""
    n = len(items)
    columns: dict[str, Any] = {
        "item_id": [it["item_id"] for it in items],
        "retailer": [it.get("retailer", "demo-store") for it in items],
        "product_url": [f"http://shop.test/p/{it['item_id']}" for it in items],
        "title": [it.get("title", f"Item {it['item_id']}") for it in items],
        "price": pa.array([it.get("price", 19.5) for it in items], pa.float64()),
        "currency": ["EUR"] * n,
        "category": [it.get("category", "tops") for it in items],
        "image_key": [it.get("image_key", f"images/full/{it['item_id']}.jpg") for it in items],
        "phash": pa.array([it.get("phash", i + 1) for i, it in enumerate(items)], pa.uint64()),
        "phash_mirror": pa.array([None] * n, pa.uint64()),
        "dhash": pa.array([i + 1 for i in range(n)], pa.uint64()),
        "content_sha256": [it.get("sha", f"item-sha-{i}") for i, it in enumerate(items)],
        "crawled_at": pa.array([dt.datetime(2026, 11, 27, tzinfo=dt.UTC)] * n, pa.timestamp("us", "UTC")),
        "crawl_date": pa.array([dt.date(2026, 11, 1)] * n, pa.date32()),
    }
    for a in ATTRS:
        columns[a] = pa.array([it["classes"][a] for it in items], pa.string())
        columns[f"{a}_prob"] = pa.array([it.get("prob", 0.8) for it in items], pa.float32())
        columns[f"{a}_probs"] = pa.array(
            [probs_for(a, it["classes"][a], it.get("prob", 0.8)) for it in items], pa.list_(pa.float32())
        )
        columns[f"{a}_model_version"] = ["v1"] * n
    columns["embedding"] = pa.array(
        [it.get("emb", embedding_for(it["classes"])) for it in items], pa.list_(pa.float32())
    )
    columns["embedding_source"] = ["fake"] * n
    columns["inferred_at"] = pa.array([dt.datetime(2026, 11, 27, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", "UTC"))
    return pa.table(columns)


def write_repository(store, table: pa.Table) -> None:
    """The repository as pipeline.repository lays it out: crawl_date=<date>/retailer=<retailer>/ folders
    (read back through pipeline.repository.dataset.read_repository)."""
    store.delete_prefix(f"{FASHION_VECTORS_PREFIX}/")
    for retailer in sorted(set(table["retailer"].to_pylist())):
        part = table.filter(pc.equal(table["retailer"], retailer)).drop_columns(["crawl_date", "retailer"])
        store.write_parquet(f"{FASHION_VECTORS_PREFIX}/crawl_date=2026-11-01/retailer={retailer}/part-0.parquet", part)


class FakeVectorizer:
    """Test double: classes looked up by the image's sha256; unknown images fail loudly."""

    def __init__(self, by_sha: dict[str, dict[str, str]], prob: float = 0.9, embeddings: bool = True) -> None:
        self.by_sha = by_sha
        self.prob = prob
        self.embeddings = embeddings
        self.calls = 0

    def vectorize(self, images: list[bytes]) -> list[dict]:
        self.calls += 1
        out = []
        for data in images:
            cls = self.by_sha[content_sha256(data)]
            vector: dict[str, Any] = {}
            for a in ATTRS:
                vector.update({a: cls[a], f"{a}_prob": self.prob, f"{a}_model_version": "fake-1"})
                if self.embeddings:
                    vector[f"{a}_probs"] = np.array(probs_for(a, cls[a], self.prob), dtype=np.float32)
            if self.embeddings:
                vector["embedding"] = np.array(embedding_for(cls), dtype=np.float32)
                vector["embedding_source"] = "fake"
            out.append(vector)
        return out


# -- validation -----------------------------------------------------------------------------------------
@pytest.fixture
def user_store(any_store):
    for key in (
        "users/alice/a.jpg",
        "users/alice/b.PNG",
        "users/alice/sub/c.jpg",
        "users/alice2/c.jpg",
        "users/bob/x.jpg",
        "users/bad.name/x.jpg",
    ):
        any_store.put_bytes(key, noise_jpeg(1))
    any_store.put_bytes("users/alice/notes.txt", b"not an image")
    any_store.put_bytes("users/carol/_shown/2026-11-01.parquet", b"history only")
    return any_store


def test_validate_lists_the_images_directly_under_the_user_only(user_store):
    assert validate_request(user_store, "alice", None, 10) == ["users/alice/a.jpg", "users/alice/b.PNG"]
    assert validate_request(user_store, "alice", [], 1) == ["users/alice/a.jpg", "users/alice/b.PNG"]


def test_validate_explicit_keys_are_normalised_and_deduplicated(file_store):
    for key in ("users/alice/a.jpg", "users/alice/b.png"):
        file_store.put_bytes(key, b"x")
    keys = ["users/alice/b.png", "users/alice//a.jpg", "users/alice/./b.png"]
    assert validate_request(file_store, "alice", keys, 100) == ["users/alice/b.png", "users/alice/a.jpg"]


@pytest.mark.parametrize("user_id", ["", "a" * 65, "al ice", "../bob", "alice\n", "al/ice", "ali.ce", None, 7])
def test_validate_rejects_bad_user_ids(file_store, user_id):
    with pytest.raises(InvalidRequest, match="user_id must be"):
        validate_request(file_store, user_id, None, 10)


@pytest.mark.parametrize("k", [0, -1, 101, True, 2.5, "10", None])
def test_validate_rejects_bad_k(file_store, k):
    file_store.put_bytes("users/alice/a.jpg", b"x")
    with pytest.raises(InvalidRequest, match="k must be an integer from 1 to 100"):
        validate_request(file_store, "alice", None, k)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("../users/alice/a.jpg", "not a key inside the store"),
        ("users/alice/../bob/x.jpg", "not a key inside the store"),
        ("/users/alice/a.jpg", "not a key inside the store"),
        ("s3://bucket/users/alice/a.jpg", "not a key inside the store"),
        ("https://example.com/users/alice/a.jpg", "not a key inside the store"),
        ("users\\alice\\a.jpg", "not a key inside the store"),
        ("users/bob/x.jpg", "not one of user 'alice'"),
        ("users/alice2/c.jpg", "not one of user 'alice'"),
        ("images/full/abc.jpg", "not one of user 'alice'"),
        ("users/alice/sub/c.jpg", "not directly under users/alice/"),
        ("users/alice/missing.jpg", "does not exist"),
        ("users/alice/notes.txt", "not an image file"),
        (42, "must be strings"),
    ],
)
def test_validate_rejects_bad_image_keys(user_store, key, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_request(user_store, "alice", ["users/alice/a.jpg", key], 10)


def test_validate_rejects_a_plain_string_of_keys(user_store):
    with pytest.raises(InvalidRequest, match="list of keys"):
        validate_request(user_store, "alice", "users/alice/a.jpg", 10)


def test_validate_unknown_user_or_user_without_images(user_store):
    for user in ("carol", "dave"):
        with pytest.raises(InvalidRequest, match=re.escape(f"user '{user}' has no images under users/{user}/")):
            validate_request(user_store, user, None, 10)


def test_list_users_and_plan_every_user_in_batches(user_store):
    assert list_users(user_store) == ["alice", "alice2", "bob"]  # not bad.name, not carol (no images)
    options = validate_options()
    batches = plan_requests(user_store, None, [], options, users_per_batch=2)
    assert batches == [
        [
            {"user_id": "alice", "image_keys": ["users/alice/a.jpg", "users/alice/b.PNG"]},
            {"user_id": "alice2", "image_keys": ["users/alice2/c.jpg"]},
        ],
        [{"user_id": "bob", "image_keys": ["users/bob/x.jpg"]}],
    ]
    assert plan_requests(user_store, "", None, options) == [batches[0] + batches[1]]  # settings: 25 per task
    assert plan_requests(user_store, "bob", ["users/bob/x.jpg"], options) == [batches[1]]
    with pytest.raises(InvalidRequest, match="image_keys need a user_id"):
        plan_requests(user_store, None, ["users/bob/x.jpg"], options)
    with pytest.raises(InvalidRequest, match="has no images"):
        plan_requests(user_store, "carol", None, options)


def test_options_default_to_settings_and_reject_bad_values():
    options = validate_options()
    config = get_settings().recommend
    assert (options.k, options.score_kind, options.mmr_lambda) == (config.k, config.score, config.mmr_lambda)
    assert options.filters == Filters()
    options = options_from_params(
        {
            "k": 3,
            "score": "weighted",
            "mmr_lambda": 0,
            "retailers": ["demo-store"],
            "categories": ["dress", "dress"],
            "price_min": 5,
            "price_max": 5,
        }
    )
    assert (options.k, options.score_kind, options.mmr_lambda) == (3, "weighted", 0.0)
    assert options.filters == Filters(("demo-store",), ("dress",), 5.0, 5.0)
    for bad, message in [
        ({"score": "cosine"}, "score must be one of"),
        ({"mmr_lambda": 1.5}, "mmr_lambda must be"),
        ({"mmr_lambda": float("nan")}, "mmr_lambda must be"),
        ({"k": 0}, "k must be"),
        ({"price_min": 10, "price_max": 5}, "price_min (10) is above price_max (5)"),
        ({"price_min": -1}, "price_min must be"),
        ({"retailers": ["../x"]}, "retailers has an invalid value"),
        ({"retailers": "demo-store"}, "retailers must be a list"),
        ({"categories": [""]}, "invalid value"),
        ({"categories": ["x"] * 51}, "at most 50"),
    ]:
        with pytest.raises(InvalidRequest, match=re.escape(message)):
            options_from_params(bad)
    with pytest.raises(InvalidRequest, match="unknown filters"):
        validate_options(filters={"colour": "red"})


# -- ranking --------------------------------------------------------------------------------------------
PROFILE_2 = [
    {"classes": classes("striped", "cotton", "casual", "full-sleeve")},
    {"classes": classes("striped", "silk", "formal", "sleeveless")},
]
ITEMS_6 = [
    {"item_id": "a", "classes": classes("striped", "cotton", "casual", "full-sleeve")},  # 4 + 1
    {"item_id": "b", "classes": classes("striped", "silk", "formal", "sleeveless")},  # 1 + 4
    {"item_id": "c", "classes": classes("striped", "cotton", "formal", "half-sleeve")},  # 2 + 2
    {"item_id": "d", "classes": classes("floral", "wool", "winter", "half-sleeve")},  # 0
    {"item_id": "e", "classes": classes(None, "cotton", "casual", None)},  # 2 + 0
    {"item_id": "f", "classes": classes("striped", "lace", "party", "half-sleeve")},  # 1 + 1
]


def test_the_seed_matches_score_exact_numbers():
    parts = scoring.components(
        scoring.fashion_matrix(repository_table(ITEMS_6), TAXONOMY),
        scoring.fashion_matrix(profile_table(PROFILE_2), TAXONOMY),
    )
    assert parts.matches.tolist() == [5, 5, 4, 0, 2, 2]
    assert parts.best_row.tolist() == [4, 4, 2, 0, 2, 1]
    assert parts.attribute_hits.tolist() == [
        [2, 1, 1, 1],
        [2, 1, 1, 1],
        [2, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [2, 0, 0, 0],
    ]


def test_rank_matches_order_and_columns():
    ranked = rank(rank_request(profile_table(PROFILE_2), 10, 6, **MATCHES), repository_table(ITEMS_6), ATTRS)
    assert ranked.column("item_id").to_pylist() == ["a", "b", "c", "e", "f"]  # d has no match
    assert ranked.column("rank").to_pylist() == [1, 2, 3, 4, 5]
    assert ranked.column("score").to_pylist() == [5, 5, 4, 2, 2]
    assert ranked.column("score_matches").to_pylist() == [5, 5, 4, 2, 2]
    assert set(ranked.column("score_kind").to_pylist()) == {"matches"}
    assert ranked.column("best_row_matches").to_pylist() == [4, 4, 2, 2, 1]
    assert ranked.column("matched_attributes").to_pylist() == [
        "pattern,fabric,style,shape",
        "pattern,fabric,style,shape",
        "pattern,fabric,style",
        "fabric,style",
        "pattern",
    ]
    assert ranked.column("nearest_profile_image").to_pylist()[:2] == ["users/u/0.jpg", "users/u/1.jpg"]
    assert ranked.column_names[:13] == [
        "rank",
        "item_id",
        "score",
        "score_kind",
        "mmr_score",
        "score_matches",
        "best_row_matches",
        "matched_attributes",
        "match_probability",
        "score_weighted",
        "score_embedding",
        "nearest_profile_image",
        "pattern",
    ]
    for name in (
        "pattern",
        "pattern_prob",
        "shape_model_version",
        "retailer",
        "category",
        "product_url",
        "title",
        "price",
        "currency",
        "image_key",
        "crawl_date",
        "crawled_at",
        "inferred_at",
    ):
        assert name in ranked.column_names
    for name in ("embedding", "pattern_probs", "phash", "content_sha256"):
        assert name not in ranked.column_names  # the output stays small
    assert ranked.column("title").to_pylist()[0] == "Item a"
    assert ranked.column("score_weighted").null_count == 0 and ranked.column("score_embedding").null_count == 0


def test_rank_matches_tie_breaks_are_deterministic():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    items = [
        {"item_id": "m", "classes": cls, "prob": 0.5},
        {"item_id": "z", "classes": cls, "prob": 0.9},  # same score and best row: probability first
        {"item_id": "b", "classes": cls, "prob": 0.5},  # equal to m in everything: item_id asc
        {"item_id": "a", "classes": classes("striped", "cotton", "casual", None), "prob": 0.99},  # lower score
    ]
    profile = profile_table([{"classes": cls}])
    expected = ["z", "b", "m", "a"]
    assert (
        rank(rank_request(profile, 10, 6, **MATCHES), repository_table(items), ATTRS).column("item_id").to_pylist()
        == expected
    )
    for seed in range(3):
        shuffled = [items[i] for i in np.random.RandomState(seed).permutation(len(items))]
        for i, item in enumerate(shuffled):
            item["phash"] = 100 + i  # keep hashes far apart regardless of order
        assert (
            rank(rank_request(profile, 10, 6, **MATCHES), repository_table(shuffled), ATTRS)
            .column("item_id")
            .to_pylist()
            == expected
        )
    assert rank(rank_request(profile, 2, 6, **MATCHES), repository_table(items), ATTRS).column(
        "item_id"
    ).to_pylist() == ["z", "b"]


def test_probability_only_counts_matching_attributes():
    profile = profile_table([{"classes": classes("striped", "cotton", "casual", "full-sleeve")}])
    repo = repository_table(
        [
            {"item_id": "p", "classes": classes("striped", "cotton", "x", "y"), "prob": 0.6},
            {"item_id": "q", "classes": classes("striped", "x", "casual", "y"), "prob": 0.7},
        ]
    )
    ranked = rank(rank_request(profile, 10, 6, **MATCHES), repo, ATTRS)
    assert ranked.column("item_id").to_pylist() == ["q", "p"]
    assert ranked.column("match_probability").to_pylist() == pytest.approx([0.7, 0.6])


@pytest.mark.parametrize("kind", ["weighted", "embedding", "hybrid"])
def test_every_score_puts_the_closest_items_first_and_ties_by_item_id(kind):
    ranked = rank(
        rank_request(profile_table(PROFILE_2), 10, 6, score_kind=kind, mmr_lambda=1.0), repository_table(ITEMS_6), ATTRS
    )
    ids = ranked.column("item_id").to_pylist()
    assert ids[:2] == ["a", "b"]  # exact copies of a profile style, equal scores: item_id order
    assert ids[-1] == "d" and len(ids) == 6  # only matches drops items sharing nothing
    scores = ranked.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    assert set(ranked.column("score_kind").to_pylist()) == {kind}
    assert ranked.column("mmr_score").to_pylist() == pytest.approx(
        [(s - min(scores)) / (max(scores) - min(scores)) for s in scores]
    )


def test_weighted_prefers_confident_predictions_that_matches_cannot_tell_apart():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    repo = repository_table(
        [{"item_id": "sure", "classes": cls, "prob": 0.95}, {"item_id": "unsure", "classes": cls, "prob": 0.4}]
    )
    profile = profile_table([{"classes": cls}])
    assert rank(rank_request(profile, 2, 6, score_kind="weighted", mmr_lambda=1.0), repo, ATTRS).column(
        "item_id"
    ).to_pylist() == [
        "sure",
        "unsure",
    ]
    ranked = rank(rank_request(profile, 2, 6, **MATCHES), repo, ATTRS)
    assert ranked.column("score").to_pylist() == [4, 4]


def test_mmr_lambda_diversifies_the_list():
    profile = profile_table([{"classes": classes("striped", "cotton", "casual", "full-sleeve")}])
    items = [
        {
            "item_id": f"same-{n}",
            "classes": classes("striped", "cotton", "casual", "half-sleeve"),
            "prob": 0.9 - n / 100,
        }
        for n in range(3)
    ]
    items.append({"item_id": "other", "classes": classes("striped", "silk", "formal", "full-sleeve")})
    repo = repository_table(items)
    plain = (
        rank(rank_request(profile, 3, 6, score_kind="hybrid", mmr_lambda=1.0), repo, ATTRS)
        .column("item_id")
        .to_pylist()
    )
    assert plain == ["same-0", "same-1", "same-2"]
    diverse = (
        rank(rank_request(profile, 3, 6, score_kind="hybrid", mmr_lambda=0.3), repo, ATTRS)
        .column("item_id")
        .to_pylist()
    )
    assert diverse[0] == "same-0" and diverse[1] == "other"


def test_missing_vectors_fail_with_a_clear_message():
    profile = profile_table(PROFILE_2).drop_columns(["embedding"])
    with pytest.raises(scoring.MissingVectors, match="embedding"):
        rank(rank_request(profile, 3, 6, score_kind="hybrid"), repository_table(ITEMS_6), ATTRS)
    ranked = rank(rank_request(profile, 3, 6, **MATCHES), repository_table(ITEMS_6), ATTRS)
    assert ranked.column("score_embedding").null_count == 3 and ranked.column("score_weighted").null_count == 0


def test_embeddings_of_other_networks_are_not_compared():
    """After the networks change and before the repository is refreshed, its embeddings live in another
    space: their cosine to the profile is replaced by the comparable items' mean."""
    profile = profile_table(PROFILE_2).append_column("embedding_source", pa.array(["new", "new"]))
    repo = repository_table(ITEMS_6)
    sources = ["old", "new", "new", "new", "new", "new"]  # a: an exact copy of profile row 0, but "old"
    repo = repo.set_column(repo.schema.get_field_index("embedding_source"), "embedding_source", pa.array(sources))
    ranked = rank(rank_request(profile, 6, 6, score_kind="embedding", mmr_lambda=1.0), repo, ATTRS)
    ids = ranked.column("item_id").to_pylist()
    assert ids[0] == "b" and ids.index("a") > 1
    assert ranked.column("score_embedding").to_pylist()[ids.index("a")] is None
    assert rank(rank_request(profile, 2, 6, score_kind="hybrid", mmr_lambda=1.0), repo, ATTRS).column(
        "item_id"
    ).to_pylist() == [
        "b",
        "a",
    ]
    everything_old = repo.set_column(
        repo.schema.get_field_index("embedding_source"), "embedding_source", pa.array(["old"] * 6)
    )
    with pytest.raises(scoring.MissingVectors, match="next repository refresh"):
        rank(rank_request(profile, 2, 6, score_kind="embedding"), everything_old, ATTRS)
    assert rank(rank_request(profile, 2, 6, score_kind="hybrid"), everything_old, ATTRS).num_rows == 2


def test_own_images_and_near_duplicates_are_excluded():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    base = 0xF0F0_F0F0_F0F0_F0F0
    profile = profile_table([{"classes": cls, "phash": base, "sha": "mine"}])
    repo = repository_table(
        [
            {"item_id": "same-bytes", "classes": cls, "sha": "mine", "phash": base ^ 0xFFFF_FFFF},  # far hash
            {"item_id": "near-3", "classes": cls, "phash": base ^ 0b111},
            {"item_id": "near-6", "classes": cls, "phash": base ^ 0b111111},
            {"item_id": "far-7", "classes": cls, "phash": base ^ 0b1111111},
            {"item_id": "other", "classes": cls, "phash": base ^ (2**64 - 1)},
        ]
    )
    assert own_image_mask(profile, repo, 6).tolist() == [True, True, True, False, False]
    for kind in scoring.SCORE_KINDS:
        assert rank(rank_request(profile, 10, 6, score_kind=kind), repo, ATTRS).column("item_id").to_pylist() == [
            "far-7",
            "other",
        ]
    assert rank(rank_request(profile, 10, 2, **MATCHES), repo, ATTRS).column("item_id").to_pylist() == [
        "far-7",
        "near-3",
        "near-6",
        "other",
    ]


def test_rank_takes_the_phash_threshold_and_defaults_from_settings():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    profile = profile_table([{"classes": cls, "phash": 0}])
    repo = repository_table(
        [{"item_id": "n", "classes": cls, "phash": 0b11}, {"item_id": "o", "classes": cls, "phash": 2**64 - 1}]
    )
    ranked = rank(rank_request(profile, 10), repo, ATTRS)
    assert ranked.column("item_id").to_pylist() == ["o"]  # settings: 6
    assert ranked.column("score_kind").to_pylist() == [get_settings().recommend.score]


def test_rank_excludes_given_item_ids():
    ranked = rank(
        rank_request(profile_table(PROFILE_2), 10, 6, exclude_item_ids=["a", "c"], **MATCHES),
        repository_table(ITEMS_6),
        ATTRS,
    )
    assert ranked.column("item_id").to_pylist() == ["b", "e", "f"]


def test_rank_of_an_empty_repository():
    for kind in scoring.SCORE_KINDS:
        ranked = rank(
            rank_request(profile_table(PROFILE_2), 10, 6, score_kind=kind, mmr_lambda=0.5), repository_table([]), ATTRS
        )
        assert ranked.num_rows == 0 and "title" in ranked.column_names


# -- the whole request ----------------------------------------------------------------------------------
U1_CLASSES = classes("striped", "cotton", "casual", "full-sleeve")
U2_CLASSES = classes("floral", "silk", "party", "sleeveless")
DAY = "2026-11-28"


@pytest.fixture
def scene(any_store):
    """Two user photos, a repository with their copies and five other items (one image missing)."""
    u1, u2 = noise_jpeg(101), noise_jpeg(102)
    any_store.put_bytes("users/ann/u1.jpg", u1)
    any_store.put_bytes("users/ann/u2.jpg", u2)
    near = recompressed(u1)
    items = [
        {"item_id": "own", "classes": U1_CLASSES, "data": u1, "prob": 0.99},
        {"item_id": "near", "classes": U1_CLASSES, "data": near, "prob": 0.99},
        {"item_id": "i1", "classes": U1_CLASSES, "data": noise_jpeg(1), "prob": 0.8, "price": 10.0},  # 4, best 4
        {
            "item_id": "i2",
            "classes": classes("striped", "silk", "party", "sleeveless"),
            "data": noise_jpeg(2),
            "retailer": "other-shop",
            "category": "dresses",
        },  # 4, best 3
        {
            "item_id": "i3",
            "classes": classes("striped", "cotton", "formal", "half-sleeve"),
            "data": noise_jpeg(3),
            "title": 'Tee <b>"bold"</b> & co',
            "price": None,
        },  # 2
        {"item_id": "i4", "classes": classes("checkered", "wool", "winter", "half-sleeve"), "data": noise_jpeg(4)},  # 0
        {"item_id": "i5", "classes": U2_CLASSES, "data": None, "prob": 0.95, "price": 99.0},  # 4, best 4
    ]
    for it in items:
        data = it["data"] if it["data"] is not None else noise_jpeg(5)
        it["phash"], it["sha"] = phash_of(data), content_sha256(data)
        if it["data"] is not None:
            any_store.put_bytes(f"images/full/{it['item_id']}.jpg", it["data"])
    write_repository(any_store, repository_table(items))
    vectorizer = FakeVectorizer({content_sha256(u1): U1_CLASSES, content_sha256(u2): U2_CLASSES})
    return any_store, vectorizer


def test_recommend_for_user_end_to_end(scene):
    store, vectorizer = scene
    summary = recommend_for_user(store, user_request("ann", None, 4, DAY, run_id="scheduled__1", **MATCHES), vectorizer)

    expected_keys = {
        "recommendations": f"recommendations/date={DAY}/run=scheduled__1/user_id=ann/recommendations.parquet",
        "profile": f"profiles/date={DAY}/run=scheduled__1/user_id=ann/profile.parquet",
        "html": f"recommendations_html/{DAY}/run=scheduled__1/ann.html",
        "shown": f"users/ann/_shown/{DAY}/run=scheduled__1.parquet",
    }
    assert summary["keys"] == expected_keys and summary["run"] == "scheduled__1"
    run = "scheduled__1"
    assert expected_keys == {
        "recommendations": recommendations_key("ann", DAY, run),
        "html": recommendation_page_key("ann", DAY, run),
        "profile": profile_key("ann", DAY, run),
        "shown": shown_key("ann", DAY, run),
    }
    for key in expected_keys.values():
        assert store.exists(key)
    assert summary["n_items_scored"] == 7 and summary["n_recommended"] == 4
    assert summary["profile_images"] == ["users/ann/u1.jpg", "users/ann/u2.jpg"]
    assert [row["item_id"] for row in summary["top_k"]] == ["i5", "i1", "i2", "i3"]

    recs = store.read_parquet(expected_keys["recommendations"])
    assert recs.column("item_id").to_pylist() == ["i5", "i1", "i2", "i3"]
    assert recs.column("score").to_pylist() == [4, 4, 4, 2]
    assert recs.column("best_row_matches").to_pylist() == [4, 4, 3, 2]
    assert recs.column("matched_attributes").to_pylist()[3] == "pattern,fabric"
    assert "date" not in recs.column_names and "user_id" not in recs.column_names  # partition columns

    profile = store.read_parquet(expected_keys["profile"])
    assert profile.column("image_key").to_pylist() == ["users/ann/u1.jpg", "users/ann/u2.jpg"]
    assert profile.column("pattern").to_pylist() == ["striped", "floral"]
    assert profile.schema.field("phash").type == pa.uint64()
    assert profile.schema.field("embedding").type == pa.list_(pa.float32())
    assert profile.column("pattern_probs").to_pylist()[0] == pytest.approx(probs_for("pattern", "striped", 0.9))
    assert profile.column("content_sha256").to_pylist()[0] == content_sha256(store.get_bytes("users/ann/u1.jpg"))

    page = store.get_bytes(expected_keys["html"]).decode()
    assert page.count("<img ") == 2 + 3  # i5's image is missing: a placeholder instead
    assert page.count('class="placeholder"') == 1
    assert "Tee &lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; co" in page and '<b>"bold"' not in page
    assert "score matches" in page

    shown = store.read_parquet(expected_keys["shown"])
    assert shown.column("item_id").to_pylist() == ["i5", "i1", "i2", "i3"]
    assert shown.column("shown_on").to_pylist() == [DAY] * 4


def test_outputs_are_hive_datasets_that_readers_can_open(scene):
    store, vectorizer = scene
    for user_day in (DAY, "2026-11-29"):
        recommend_for_user(store, user_request("ann", None, 3, user_day), vectorizer)
    partitioning = ds.partitioning(pa.schema([("date", pa.string()), ("user_id", pa.string())]), flavor="hive")
    for prefix in ("recommendations/", "profiles/"):
        table = ds.dataset(
            store.path(prefix), filesystem=store.fs, format="parquet", partitioning=partitioning
        ).to_table()
        assert set(table.column("date").to_pylist()) == {DAY, "2026-11-29"}
        assert set(table.column("user_id").to_pylist()) == {"ann"}
    assert not any(key.endswith(".html") for key in store.list("recommendations/") + store.list("profiles/"))


@pytest.mark.parametrize("kind", scoring.SCORE_KINDS)
def test_every_score_kind_end_to_end(scene, kind):
    store, vectorizer = scene
    summary = recommend_for_user(store, user_request("ann", None, 5, DAY, score_kind=kind), vectorizer)
    ids = [row["item_id"] for row in summary["top_k"]]
    assert "own" not in ids and "near" not in ids
    assert summary["score_kind"] == kind and {row["score_kind"] for row in summary["top_k"]} == {kind}
    recs = store.read_parquet(summary["keys"]["recommendations"])
    for name in ("score_matches", "score_weighted", "score_embedding"):
        assert recs.column(name).null_count == 0
    assert set(ids[:2]) == {"i1", "i5"}  # each an exact style of one profile photo


def test_filters(scene):
    store, vectorizer = scene

    def ids(**filters):
        summary = recommend_for_user(
            store, user_request("ann", None, 10, DAY, filters=filters, run_id="r", **MATCHES), vectorizer
        )
        return [row["item_id"] for row in summary["top_k"]]

    assert ids() == ["i5", "i1", "i2", "i3"]
    assert ids(retailers=["other-shop"]) == ["i2"]
    assert ids(categories=["tops"]) == ["i5", "i1", "i3"]
    assert ids(price_min=15) == ["i5", "i2"]  # i3 has no price: never passes a price bound
    assert ids(price_max=19.5) == ["i1", "i2"]
    assert ids(price_min=10, price_max=10) == ["i1"]
    assert ids(retailers=["nobody"]) == []
    page = store.get_bytes(recommendation_page_key("ann", DAY, "r")).decode()
    assert "retailers=[&#x27;nobody&#x27;]" in page and "No recommendations" in page


def test_items_shown_on_earlier_days_are_not_recommended_again(scene):
    store, vectorizer = scene
    first = recommend_for_user(store, user_request("ann", None, 2, DAY, run_id="one", **MATCHES), vectorizer)
    assert [r["item_id"] for r in first["top_k"]] == ["i5", "i1"]
    rerun = recommend_for_user(store, user_request("ann", None, 2, DAY, run_id="one", **MATCHES), vectorizer)
    assert rerun == first  # its own earlier output does not count as shown
    other_run = recommend_for_user(store, user_request("ann", None, 2, DAY, run_id="two", **MATCHES), vectorizer)
    assert other_run["top_k"] == first["top_k"]  # nor does another run's of the same date
    next_day = recommend_for_user(store, user_request("ann", None, 2, "2026-11-29", run_id="n", **MATCHES), vectorizer)
    assert [r["item_id"] for r in next_day["top_k"]] == ["i2", "i3"] and next_day["n_excluded_shown"] == 2
    assert shown_before(store, "ann", "2026-11-30") == ["i1", "i2", "i3", "i5"]
    # a backfill of the first day after the second ran is still the first day's list
    assert recommend_for_user(store, user_request("ann", None, 2, DAY, run_id="one", **MATCHES), vectorizer) == first
    assert "shown before and left out" in store.get_bytes(recommendation_page_key("ann", "2026-11-29", "n")).decode()


def test_a_retry_of_the_same_run_overwrites_its_keys(scene):
    store, vectorizer = scene
    first = recommend_for_user(
        store, user_request("ann", None, 3, DAY, run_id="manual__2026-11-28T10:00:00+00:00"), vectorizer
    )
    keys = store.list()
    blobs = {name: store.get_bytes(key) for name, key in first["keys"].items() if name != "recommendations"}
    recs = store.read_parquet(first["keys"]["recommendations"])
    second = recommend_for_user(
        store, user_request("ann", None, 3, DAY, run_id="manual__2026-11-28T10:00:00+00:00"), vectorizer
    )
    assert second == first
    assert store.list() == keys
    again = store.read_parquet(second["keys"]["recommendations"])
    assert again.drop_columns(["generated_at"]).equals(recs.drop_columns(["generated_at"]))
    assert again["generated_at"][0].as_py() >= recs["generated_at"][0].as_py()
    assert {name: store.get_bytes(key) for name, key in second["keys"].items() if name != "recommendations"} == blobs


def test_two_runs_on_one_date_keep_both_outputs(scene):
    """A manual run and the scheduled one of the same date write different keys (issue 12), and the
    recommendations stay one Hive-partitioned dataset whose generated_at picks the latest run."""
    store, vectorizer = scene
    store.write_parquet("users/ann/_shown/2026-11-27.parquet", pa.table({"item_id": ["legacy"]}))  # before runs
    assert shown_before(store, "ann", DAY) == ["legacy"]
    scheduled = recommend_for_user(
        store, user_request("ann", None, 3, DAY, run_id="scheduled__2026-11-28T00:00:00+00:00"), vectorizer
    )
    manual = recommend_for_user(
        store, user_request("ann", None, 2, DAY, run_id="manual__2026-11-28T09:30:00+00:00"), vectorizer
    )
    for name in ("recommendations", "profile", "html", "shown"):
        assert scheduled["keys"][name] != manual["keys"][name] and store.exists(scheduled["keys"][name])
    assert store.read_parquet(scheduled["keys"]["recommendations"]).num_rows == 3
    assert store.read_parquet(manual["keys"]["recommendations"]).num_rows == 2
    assert manual["run"].startswith("manual__2026-11-28T09-30-00-00-00-") and ":" not in manual["run"]
    assert latest_run(store, "ann") == (DAY, manual["run"]) and latest_run(store, "nobody") is None
    root = store.local_path("recommendations")
    if root is not None:  # the file store: read it back as one dataset, the way analysts do
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
        assert sorted(set(table["run"].to_pylist())) == sorted([scheduled["run"], manual["run"]])
        latest = table.filter(ds.field("generated_at") == pc.max(table["generated_at"]))
        assert set(latest["run"].to_pylist()) == {manual["run"]} and latest.num_rows == 2


def test_run_partition_is_path_safe_and_distinct():
    assert run_partition("scheduled__2026-12-01") == "scheduled__2026-12-01"
    cleaned = {run_partition(r) for r in ("a:b", "a-b", "a/b", "a b", "..", ".hidden")}
    assert len(cleaned) == 6 and all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", c) for c in cleaned)
    for bad in ("", "  ", None, 5, "x" * 251):
        with pytest.raises(InvalidRequest, match="run id"):
            run_partition(bad)


def test_explicit_images_profile_only_those(scene):
    store, vectorizer = scene
    summary = recommend_for_user(store, user_request("ann", ["users/ann/u2.jpg"], 2, DAY, **MATCHES), vectorizer)
    assert [row["item_id"] for row in summary["top_k"]] == ["i5", "i2"]


def test_recommend_for_users_serves_everyone_and_reports_failures(scene, caplog):
    store, vectorizer = scene
    store.put_bytes("users/bea/b.jpg", noise_jpeg(101))  # the same photo as ann's u1
    store.put_bytes("users/cid/c.jpg", noise_jpeg(999))  # the fake vectorizer does not know it
    options = validate_options(k=2, **MATCHES)
    batches = plan_requests(store, None, None, options)
    assert [r["user_id"] for r in batches[0]] == ["ann", "bea", "cid"]
    with pytest.raises(RuntimeError, match="failed for 1 user"):
        recommend_for_users(store, batches[0], DAY, options, vectorizer, run_id="r1")
    assert [(r.name, r.levelname) for r in caplog.records if "recommend cid: FAILED" in r.getMessage()] == [
        ("pipeline.recommend.recommendations", "ERROR")
    ]
    assert store.exists(recommendations_key("ann", DAY, "r1")) and store.exists(recommendations_key("bea", DAY, "r1"))
    assert not store.exists(recommendations_key("cid", DAY, "r1"))
    summaries = recommend_for_users(store, batches[0][:2], DAY, options, vectorizer)
    assert [s["user_id"] for s in summaries] == ["ann", "bea"]
    assert [r["item_id"] for r in summaries[1]["top_k"]] == ["i1", "i3"]
    assert recommend_for_users(store, [], DAY, options, vectorizer) == []


def test_invalid_requests_fail_before_any_work(file_store):
    vectorizer = FakeVectorizer({})
    with pytest.raises(InvalidRequest, match="has no images"):
        recommend_for_user(file_store, user_request("ann", None, 3, DAY), vectorizer)
    file_store.put_bytes("users/ann/u1.jpg", noise_jpeg(1))
    for bad_date in ("2026-13-01", "28/11/2026", "../x", None):
        with pytest.raises(InvalidRequest, match="run_date"):
            recommend_for_user(file_store, user_request("ann", None, 3, bad_date), vectorizer)
    with pytest.raises(InvalidRequest, match="score must be one of"):
        recommend_for_user(file_store, user_request("ann", None, 3, DAY, score_kind="best"), vectorizer)
    with pytest.raises(InvalidRequest, match="price_min"):
        recommend_for_user(file_store, user_request("ann", None, 3, DAY, filters={"price_min": -2}), vectorizer)
    assert vectorizer.calls == 0
    assert file_store.list("recommendations/") == [] and file_store.list("users/ann/_shown/") == []


def test_build_profile_rejects_undecodable_images_and_bad_vectorizers(file_store):
    file_store.put_bytes("users/ann/bad.jpg", b"not a jpeg")
    with pytest.raises(ValueError, match="cannot be decoded"):
        build_profile(file_store, "ann", ["users/ann/bad.jpg"], FakeVectorizer({}), ATTRS)

    good = noise_jpeg(9)
    file_store.put_bytes("users/ann/ok.jpg", good)

    class Short:
        def vectorize(self, images):
            return [{"pattern": "striped", "pattern_prob": 0.9}]

    with pytest.raises(ValueError, match="lacks 'pattern_model_version'"):
        build_profile(file_store, "ann", ["users/ann/ok.jpg"], Short(), ATTRS)

    class Empty:
        def vectorize(self, images):
            return []

    with pytest.raises(ValueError, match="returned 0 vectors for 1 images"):
        build_profile(file_store, "ann", ["users/ann/ok.jpg"], Empty(), ATTRS)


def test_a_vectorizer_without_probabilities_or_embeddings_still_serves_matches(file_store):
    data = noise_jpeg(9)
    file_store.put_bytes("users/ann/ok.jpg", data)
    profile = build_profile(
        file_store,
        "ann",
        ["users/ann/ok.jpg"],
        FakeVectorizer({content_sha256(data): U1_CLASSES}, embeddings=False),
        ATTRS,
    )
    assert profile.column("embedding").null_count == 1 and "embedding_source" not in profile.column_names
    repo = repository_table(ITEMS_6)
    assert rank(rank_request(profile, 2, 6, **MATCHES), repo, ATTRS).column("item_id").to_pylist() == ["a", "c"]
    with pytest.raises(scoring.MissingVectors):
        rank(rank_request(profile, 2, 6, score_kind="weighted"), repo, ATTRS)


def test_same_silhouette_in_another_colour_is_not_taken_for_the_users_own_photo(file_store):
    """Hashes see shape: a red and a blue copy of one drawing are hash-close but different items."""
    import io as _io

    import pyarrow as _pa
    from PIL import Image as _Image
    from PIL import ImageDraw as _ImageDraw

    from pipeline.hashing import content_sha256 as _sha
    from pipeline.hashing import perceptual_hashes as _hashes
    from pipeline.recommend.exclusions import own_image_mask, thumbnail_check

    def garment(colour: str) -> bytes:
        image = _Image.new("RGB", (96, 96), "white")
        _ImageDraw.Draw(image).polygon(
            [(20, 10), (76, 10), (90, 40), (70, 40), (70, 90), (26, 90), (26, 40), (6, 40)], fill=colour
        )
        buffer = _io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    mine, red_copy, blue = garment("red"), garment("red"), garment("blue")
    file_store.put_bytes("users/u/mine.jpg", mine)
    file_store.put_bytes("images/red.jpg", red_copy)
    file_store.put_bytes("images/blue.jpg", blue)

    def table(keys, blobs):
        phashes = [_hashes(_Image.open(_io.BytesIO(b)))[0] for b in blobs]
        return _pa.table(
            {
                "image_key": keys,
                "phash": _pa.array(phashes, _pa.uint64()),
                "content_sha256": [_sha(b) + "-other" for b in blobs],
            }
        )

    profile = table(["users/u/mine.jpg"], [mine])
    repository = table(["images/red.jpg", "images/blue.jpg"], [red_copy, blue])
    assert own_image_mask(profile, repository, 6).tolist() == [True, True]  # hashes alone: both "own"
    check = thumbnail_check(file_store, profile, repository, max_mad=4.0, max_pixels=rules_from_settings().max_pixels)
    assert own_image_mask(profile, repository, 6, check).tolist() == [True, False]


def test_a_mirrored_upload_of_a_shop_photo_is_still_the_users_own(file_store):
    """The profile keeps the pHash of each image's mirror image: a user's photo that is a shop photo
    flipped left to right is never recommended back to them (and other items still are)."""
    from pipeline.recommend.exclusions import thumbnail_check

    shop = noise_jpeg(7)
    upload = io.BytesIO()
    Image.open(io.BytesIO(shop)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload, "JPEG", quality=85)
    upload = upload.getvalue()
    file_store.put_bytes("users/ann/flipped.jpg", upload)
    items = [
        {"item_id": "shop", "classes": U1_CLASSES, "data": shop},
        {"item_id": "other", "classes": U1_CLASSES, "data": noise_jpeg(8)},
    ]
    for it in items:
        it["phash"], it["sha"] = phash_of(it["data"]), content_sha256(it["data"])
        file_store.put_bytes(f"images/full/{it['item_id']}.jpg", it["data"])
    repository = repository_table(items)
    profile = build_profile(
        file_store, "ann", ["users/ann/flipped.jpg"], FakeVectorizer({content_sha256(upload): U1_CLASSES}), ATTRS
    )
    assert profile.schema.field("phash_mirror").type == pa.uint64()
    check = thumbnail_check(file_store, profile, repository, max_mad=3.0, max_pixels=rules_from_settings().max_pixels)
    assert own_image_mask(profile, repository, 6, check).tolist() == [True, False]
    assert rank(rank_request(profile, k=5, phash_max_distance=6, confirm_near_copy=check), repository, ATTRS).column(
        "item_id"
    ).to_pylist() == ["other"]
    # A profile without the mirror hash (as built before) would have shown the user their own photo.
    assert own_image_mask(profile.drop_columns(["phash_mirror"]), repository, 6, check).tolist() == [False, False]
