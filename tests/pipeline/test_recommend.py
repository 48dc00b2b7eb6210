import io
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.hashing import content_sha256, perceptual_hashes
from pipeline.recommend import (
    REPOSITORY_KEY,
    InvalidRequest,
    build_profile,
    own_image_mask,
    rank,
    recommend_for_user,
    score_matches,
    validate_request,
)

ATTRS = ["pattern", "fabric", "style", "shape"]


# -- helpers ------------------------------------------------------------------------------------------
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


def profile_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Profile rows: ``classes`` plus optional phash / content_sha256 / prob."""
    columns: dict[str, list] = {
        "image_key": [f"users/u/{i}.jpg" for i in range(len(rows))],
        "phash": [r.get("phash", 2**64 - 1 - i) for i, r in enumerate(rows)],  # far from items' small hashes
        "content_sha256": [r.get("sha", f"profile-sha-{i}") for i, r in enumerate(rows)],
    }
    for a in ATTRS:
        columns[a] = [r["classes"][a] for r in rows]
        columns[f"{a}_prob"] = [r.get("prob", 0.9) for r in rows]
        columns[f"{a}_model_version"] = ["v1"] * len(rows)
    return pa.Table.from_pydict(columns, schema=pa.schema([
        pa.field(n, pa.uint64() if n == "phash" else pa.float64() if n.endswith("_prob") else pa.string())
        for n in columns
    ]))


def repository_table(items: list[dict[str, Any]]) -> pa.Table:
    """A fashion-vector repository with the contract's columns."""
    columns: dict[str, list] = {
        "item_id": [it["item_id"] for it in items],
        "retailer": ["demo-store"] * len(items),
        "product_url": [f"http://shop.test/p/{it['item_id']}" for it in items],
        "title": [it.get("title", f"Item {it['item_id']}") for it in items],
        "price": [19.5] * len(items),
        "currency": ["EUR"] * len(items),
        "image_key": [it.get("image_key", f"images/full/{it['item_id']}.jpg") for it in items],
        "phash": [it.get("phash", i + 1) for i, it in enumerate(items)],
        "content_sha256": [it.get("sha", f"item-sha-{i}") for i, it in enumerate(items)],
        "crawled_at": ["2026-11-27T00:00:00Z"] * len(items),
    }
    for a in ATTRS:
        columns[a] = [it["classes"][a] for it in items]
        columns[f"{a}_prob"] = [it.get("prob", 0.8) for it in items]
        columns[f"{a}_model_version"] = ["v1"] * len(items)
    columns["inferred_at"] = ["2026-11-27T01:00:00Z"] * len(items)
    types = {"phash": pa.uint64(), "price": pa.float64()}
    schema = pa.schema([
        pa.field(n, types.get(n, pa.float64() if n.endswith("_prob") else pa.string())) for n in columns
    ])
    return pa.Table.from_pydict(columns, schema=schema)


class FakeVectorizer:
    """Test double: classes looked up by the image's sha256; unknown images fail loudly."""

    def __init__(self, by_sha: dict[str, dict[str, str]], prob: float = 0.9) -> None:
        self.by_sha = by_sha
        self.prob = prob
        self.calls = 0

    def vectorize(self, images: list[bytes]) -> list[dict]:
        self.calls += 1
        out = []
        for data in images:
            cls = self.by_sha[content_sha256(data)]
            vector = {}
            for a in ATTRS:
                vector.update({a: cls[a], f"{a}_prob": self.prob, f"{a}_model_version": "fake-1"})
            out.append(vector)
        return out


# -- validate_request -----------------------------------------------------------------------------------
@pytest.fixture
def user_store(any_store):
    for key in ("users/alice/a.jpg", "users/alice/sub/b.PNG", "users/alice2/c.jpg", "users/bob/x.jpg"):
        any_store.put_bytes(key, noise_jpeg(1))
    any_store.put_bytes("users/alice/notes.txt", b"not an image")
    return any_store


def test_validate_lists_every_image_of_the_user_only(user_store):
    assert validate_request(user_store, "alice", None, 10) == ["users/alice/a.jpg", "users/alice/sub/b.PNG"]
    assert validate_request(user_store, "alice", [], 1) == ["users/alice/a.jpg", "users/alice/sub/b.PNG"]


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


@pytest.mark.parametrize(("key", "message"), [
    ("../users/alice/a.jpg", "not a key inside the store"),
    ("users/alice/../bob/x.jpg", "not a key inside the store"),
    ("/users/alice/a.jpg", "not a key inside the store"),
    ("s3://bucket/users/alice/a.jpg", "not a key inside the store"),
    ("https://example.com/users/alice/a.jpg", "not a key inside the store"),
    ("users\\alice\\a.jpg", "not a key inside the store"),
    ("users/bob/x.jpg", "not one of user 'alice'"),
    ("users/alice2/c.jpg", "not one of user 'alice'"),
    ("images/full/abc.jpg", "not one of user 'alice'"),
    ("users/alice/missing.jpg", "does not exist"),
    ("users/alice/notes.txt", "not an image file"),
    (42, "must be strings"),
])
def test_validate_rejects_bad_image_keys(user_store, key, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_request(user_store, "alice", ["users/alice/a.jpg", key], 10)


def test_validate_rejects_a_plain_string_of_keys(user_store):
    with pytest.raises(InvalidRequest, match="list of keys"):
        validate_request(user_store, "alice", "users/alice/a.jpg", 10)


def test_validate_user_without_images(user_store):
    with pytest.raises(InvalidRequest, match=re.escape("user 'carol' has no images under users/carol/")):
        validate_request(user_store, "carol", None, 10)


# -- scoring --------------------------------------------------------------------------------------------
PROFILE_2 = [
    {"classes": classes("striped", "cotton", "casual", "full-sleeve")},
    {"classes": classes("striped", "silk", "formal", "sleeveless")},
]
ITEMS_6 = [
    {"item_id": "a", "classes": classes("striped", "cotton", "casual", "full-sleeve")},  # 4 + 1
    {"item_id": "b", "classes": classes("striped", "silk", "formal", "sleeveless")},    # 1 + 4
    {"item_id": "c", "classes": classes("striped", "cotton", "formal", "half-sleeve")},  # 2 + 2
    {"item_id": "d", "classes": classes("floral", "wool", "winter", "half-sleeve")},     # 0
    {"item_id": "e", "classes": classes(None, "cotton", "casual", None)},                # 2 + 0
    {"item_id": "f", "classes": classes("striped", "lace", "party", "half-sleeve")},     # 1 + 1
]


def test_score_matches_exact_numbers():
    scores = score_matches(profile_table(PROFILE_2), repository_table(ITEMS_6), ATTRS)
    assert scores.score.tolist() == [5, 5, 4, 0, 2, 2]
    assert scores.best_row.tolist() == [4, 4, 2, 0, 2, 1]
    assert scores.attribute_hits.tolist() == [
        [2, 1, 1, 1], [2, 1, 1, 1], [2, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0], [2, 0, 0, 0],
    ]
    assert (scores.attribute_hits.sum(axis=1) == scores.score).all()


def test_null_classes_never_match():
    profile = profile_table([{"classes": classes(None, "cotton", None, None)}])
    repo = repository_table([{"item_id": "x", "classes": classes(None, "cotton", None, None)}])
    assert score_matches(profile, repo, ATTRS).score.tolist() == [1]


def test_score_sums_over_profile_rows():
    """Matching two of the user's images beats matching one equally well."""
    profile = profile_table([{"classes": classes("striped", "cotton", "casual", "full-sleeve")}] * 3)
    repo = repository_table([{"item_id": "x", "classes": classes("striped", "cotton", "formal", "sleeveless")}])
    scores = score_matches(profile, repo, ATTRS)
    assert scores.score.tolist() == [6] and scores.best_row.tolist() == [2]


# -- ranking --------------------------------------------------------------------------------------------
def test_rank_order_and_columns():
    ranked = rank(profile_table(PROFILE_2), repository_table(ITEMS_6), ATTRS, k=10, phash_max_distance=6)
    assert ranked.column("item_id").to_pylist() == ["a", "b", "c", "e", "f"]  # d has no match
    assert ranked.column("rank").to_pylist() == [1, 2, 3, 4, 5]
    assert ranked.column("score").to_pylist() == [5, 5, 4, 2, 2]
    assert ranked.column("best_row_matches").to_pylist() == [4, 4, 2, 2, 1]
    assert ranked.column("matched_attributes").to_pylist() == [
        "pattern,fabric,style,shape", "pattern,fabric,style,shape", "pattern,fabric,style", "fabric,style", "pattern",
    ]
    assert ranked.column_names[:6] == ["rank", "item_id", "score", "best_row_matches", "matched_attributes",
                                       "match_probability"]
    for name in ("retailer", "product_url", "title", "price", "currency", "image_key", "phash", "inferred_at"):
        assert name in ranked.column_names
    assert ranked.column("title").to_pylist()[0] == "Item a"


def test_rank_tie_breaks_are_deterministic():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    items = [
        {"item_id": "m", "classes": cls, "prob": 0.5},
        {"item_id": "z", "classes": cls, "prob": 0.9},   # same score and best row: probability first
        {"item_id": "b", "classes": cls, "prob": 0.5},   # equal to m in everything: item_id asc
        {"item_id": "a", "classes": classes("striped", "cotton", "casual", None), "prob": 0.99},  # lower score
    ]
    profile = profile_table([{"classes": cls}])
    expected = ["z", "b", "m", "a"]
    assert rank(profile, repository_table(items), ATTRS, 10, 6).column("item_id").to_pylist() == expected
    for seed in range(3):
        shuffled = [items[i] for i in np.random.RandomState(seed).permutation(len(items))]
        for i, item in enumerate(shuffled):
            item["phash"] = 100 + i  # keep hashes far apart regardless of order
        assert rank(profile, repository_table(shuffled), ATTRS, 10, 6).column("item_id").to_pylist() == expected
    assert rank(profile, repository_table(items), ATTRS, 2, 6).column("item_id").to_pylist() == ["z", "b"]


def test_probability_only_counts_matching_attributes():
    profile = profile_table([{"classes": classes("striped", "cotton", "casual", "full-sleeve")}])
    repo = repository_table([
        {"item_id": "p", "classes": classes("striped", "cotton", "x", "y"), "prob": 0.6},
        {"item_id": "q", "classes": classes("striped", "x", "casual", "y"), "prob": 0.7},
    ])
    ranked = rank(profile, repo, ATTRS, 10, 6)
    assert ranked.column("item_id").to_pylist() == ["q", "p"]
    assert ranked.column("match_probability").to_pylist() == pytest.approx([0.7, 0.6])


def test_own_images_and_near_duplicates_are_excluded():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    base = 0xF0F0_F0F0_F0F0_F0F0
    profile = profile_table([{"classes": cls, "phash": base, "sha": "mine"}])
    repo = repository_table([
        {"item_id": "same-bytes", "classes": cls, "sha": "mine", "phash": base ^ 0xFFFF_FFFF},  # far hash
        {"item_id": "near-3", "classes": cls, "phash": base ^ 0b111},
        {"item_id": "near-6", "classes": cls, "phash": base ^ 0b111111},
        {"item_id": "far-7", "classes": cls, "phash": base ^ 0b1111111},
        {"item_id": "other", "classes": cls, "phash": base ^ (2**64 - 1)},
    ])
    assert own_image_mask(profile, repo, 6).tolist() == [True, True, True, False, False]
    assert rank(profile, repo, ATTRS, 10, 6).column("item_id").to_pylist() == ["far-7", "other"]
    assert rank(profile, repo, ATTRS, 10, 2).column("item_id").to_pylist() == ["far-7", "near-3", "near-6", "other"]


def test_rank_takes_the_phash_threshold_from_settings():
    cls = classes("striped", "cotton", "casual", "full-sleeve")
    profile = profile_table([{"classes": cls, "phash": 0}])
    repo = repository_table([{"item_id": "n", "classes": cls, "phash": 0b11}, {"item_id": "o", "classes": cls,
                                                                              "phash": 2**64 - 1}])
    assert rank(profile, repo, ATTRS, 10).column("item_id").to_pylist() == ["o"]  # settings: 6


def test_rank_of_an_empty_repository():
    ranked = rank(profile_table(PROFILE_2), repository_table([]), ATTRS, 10, 6)
    assert ranked.num_rows == 0 and "title" in ranked.column_names


# -- the whole request ----------------------------------------------------------------------------------
U1_CLASSES = classes("striped", "cotton", "casual", "full-sleeve")
U2_CLASSES = classes("floral", "silk", "party", "sleeveless")


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
        {"item_id": "i1", "classes": U1_CLASSES, "data": noise_jpeg(1), "prob": 0.8},                   # 4, best 4
        {"item_id": "i2", "classes": classes("striped", "silk", "party", "sleeveless"), "data": noise_jpeg(2)},  # 4, best 3
        {"item_id": "i3", "classes": classes("striped", "cotton", "formal", "half-sleeve"), "data": noise_jpeg(3),
         "title": 'Tee <b>"bold"</b> & co'},                                                              # 2
        {"item_id": "i4", "classes": classes("checkered", "wool", "winter", "half-sleeve"), "data": noise_jpeg(4)},  # 0
        {"item_id": "i5", "classes": U2_CLASSES, "data": None, "prob": 0.95},                             # 4, best 4
    ]
    for it in items:
        data = it["data"] if it["data"] is not None else noise_jpeg(5)
        it["phash"], it["sha"] = phash_of(data), content_sha256(data)
        if it["data"] is not None:
            any_store.put_bytes(f"images/full/{it['item_id']}.jpg", data)
    any_store.write_parquet(REPOSITORY_KEY, repository_table(items))
    vectorizer = FakeVectorizer({content_sha256(u1): U1_CLASSES, content_sha256(u2): U2_CLASSES})
    return any_store, vectorizer


def test_recommend_for_user_end_to_end(scene):
    store, vectorizer = scene
    summary = recommend_for_user(store, "ann", None, 4, "2026-11-28", vectorizer=vectorizer)

    prefix = "recommendations/ann/2026-11-28/"
    assert summary["keys"] == {"recommendations": prefix + "recommendations.parquet",
                               "profile": prefix + "profile.parquet", "html": prefix + "index.html"}
    assert store.list(prefix) == sorted(summary["keys"].values())
    assert summary["n_items_scored"] == 7 and summary["n_recommended"] == 4
    assert summary["profile_images"] == ["users/ann/u1.jpg", "users/ann/u2.jpg"]
    assert [row["item_id"] for row in summary["top_k"]] == ["i5", "i1", "i2", "i3"]

    recs = store.read_parquet(prefix + "recommendations.parquet")
    assert recs.column("item_id").to_pylist() == ["i5", "i1", "i2", "i3"]
    assert recs.column("score").to_pylist() == [4, 4, 4, 2]
    assert recs.column("best_row_matches").to_pylist() == [4, 4, 3, 2]
    assert recs.column("matched_attributes").to_pylist()[3] == "pattern,fabric"

    profile = store.read_parquet(prefix + "profile.parquet")
    assert profile.column("image_key").to_pylist() == ["users/ann/u1.jpg", "users/ann/u2.jpg"]
    assert profile.column("pattern").to_pylist() == ["striped", "floral"]
    assert profile.schema.field("phash").type == pa.uint64()
    assert profile.column("content_sha256").to_pylist()[0] == content_sha256(store.get_bytes("users/ann/u1.jpg"))

    page = store.get_bytes(prefix + "index.html").decode()
    assert page.count("<img ") == 2 + 3  # i5's image is missing: a placeholder instead
    assert page.count('class="placeholder"') == 1
    assert "Tee &lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; co" in page and "<b>\"bold\"" not in page


def test_recommend_for_user_rerun_overwrites_the_same_keys(scene):
    store, vectorizer = scene
    first = recommend_for_user(store, "ann", None, 3, "2026-11-28", vectorizer=vectorizer)
    keys = store.list("recommendations/")
    recs, page = store.get_bytes(first["keys"]["recommendations"]), store.get_bytes(first["keys"]["html"])
    second = recommend_for_user(store, "ann", None, 3, "2026-11-28", vectorizer=vectorizer)
    assert second == first
    assert store.list("recommendations/") == keys
    assert store.get_bytes(second["keys"]["recommendations"]) == recs
    assert store.get_bytes(second["keys"]["html"]) == page


def test_explicit_images_profile_only_those(scene):
    store, vectorizer = scene
    summary = recommend_for_user(store, "ann", ["users/ann/u2.jpg"], 2, "2026-11-28", vectorizer=vectorizer)
    assert [row["item_id"] for row in summary["top_k"]] == ["i5", "i2"]


def test_invalid_requests_fail_before_any_work(file_store):
    vectorizer = FakeVectorizer({})
    with pytest.raises(InvalidRequest, match="has no images"):
        recommend_for_user(file_store, "ann", None, 3, "2026-11-28", vectorizer=vectorizer)
    file_store.put_bytes("users/ann/u1.jpg", noise_jpeg(1))
    for bad_date in ("2026-13-01", "28/11/2026", "../x", None):
        with pytest.raises(InvalidRequest, match="run_date"):
            recommend_for_user(file_store, "ann", None, 3, bad_date, vectorizer=vectorizer)
    with pytest.raises(FileNotFoundError, match="no fashion-vector repository"):
        recommend_for_user(file_store, "ann", None, 3, "2026-11-28", vectorizer=vectorizer)
    assert vectorizer.calls == 0
    assert file_store.list("recommendations/") == []


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


def test_same_silhouette_in_another_colour_is_not_taken_for_the_users_own_photo(file_store):
    """Hashes see shape: a red and a blue copy of one drawing are hash-close but different items."""
    import io as _io

    import pyarrow as _pa
    from PIL import Image as _Image, ImageDraw as _ImageDraw

    from pipeline.hashing import content_sha256 as _sha, perceptual_hashes as _hashes
    from pipeline.recommend import own_image_mask, thumbnail_check

    def garment(colour: str) -> bytes:
        image = _Image.new("RGB", (96, 96), "white")
        _ImageDraw.Draw(image).polygon([(20, 10), (76, 10), (90, 40), (70, 40), (70, 90), (26, 90), (26, 40), (6, 40)],
                                      fill=colour)
        buffer = _io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    mine, red_copy, blue = garment("red"), garment("red"), garment("blue")
    file_store.put_bytes("users/u/mine.jpg", mine)
    file_store.put_bytes("images/red.jpg", red_copy)
    file_store.put_bytes("images/blue.jpg", blue)

    def table(keys, blobs):
        phashes = [_hashes(_Image.open(_io.BytesIO(b)))[0] for b in blobs]
        return _pa.table({"image_key": keys, "phash": _pa.array(phashes, _pa.uint64()),
                          "content_sha256": [_sha(b) + "-other" for b in blobs]})

    profile = table(["users/u/mine.jpg"], [mine])
    repository = table(["images/red.jpg", "images/blue.jpg"], [red_copy, blue])
    assert own_image_mask(profile, repository, 6).tolist() == [True, True]  # hashes alone: both "own"
    check = thumbnail_check(file_store, profile, repository, max_mad=4.0)
    assert own_image_mask(profile, repository, 6, check).tolist() == [True, False]


def test_a_mirrored_upload_of_a_shop_photo_is_still_the_users_own(file_store):
    """The profile keeps the pHash of each image's mirror image: a user's photo that is a shop photo
    flipped left to right is never recommended back to them (and other items still are)."""
    from pipeline.recommend import thumbnail_check

    shop = noise_jpeg(7)
    upload = io.BytesIO()
    Image.open(io.BytesIO(shop)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload, "JPEG", quality=85)
    upload = upload.getvalue()
    file_store.put_bytes("users/ann/flipped.jpg", upload)
    items = [{"item_id": "shop", "classes": U1_CLASSES, "data": shop}, {"item_id": "other", "classes": U1_CLASSES,
                                                                        "data": noise_jpeg(8)}]
    for it in items:
        it["phash"], it["sha"] = phash_of(it["data"]), content_sha256(it["data"])
        file_store.put_bytes(f"images/full/{it['item_id']}.jpg", it["data"])
    repository = repository_table(items)
    profile = build_profile(file_store, "ann", ["users/ann/flipped.jpg"],
                            FakeVectorizer({content_sha256(upload): U1_CLASSES}), ATTRS)
    assert profile.schema.field("phash_mirror").type == pa.uint64()
    check = thumbnail_check(file_store, profile, repository, max_mad=3.0)
    assert own_image_mask(profile, repository, 6, check).tolist() == [True, False]
    assert rank(profile, repository, ATTRS, k=5, phash_max_distance=6,
                confirm_near_copy=check).column("item_id").to_pylist() == ["other"]
    # A profile without the mirror hash (as built before) would have shown the user their own photo.
    assert own_image_mask(profile.drop_columns(["phash_mirror"]), repository, 6, check).tolist() == [False, False]
