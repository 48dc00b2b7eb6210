"""The batch path (pipeline.recommend.recommendations.recommend_for_users: many users in one streamed pass) gives
exactly the one-user path's lists (recommend_for_user), item for item and in order."""

import datetime as dt
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipeline.hashing import content_sha256, perceptual_hashes
from pipeline.recommend.options import validate_options
from pipeline.recommend.recommendations import UserRequest, recommend_for_user, recommend_for_users
from pipeline.settings import get_settings
from pipeline.store_layout import FASHION_VECTORS_PREFIX, recommendations_key, shown_key

ATTRS = ["pattern", "fabric", "style", "shape"]
TAXONOMY = {a: get_settings().taxonomy.classes(a) for a in ATTRS}
get_settings.cache_clear()
DIMS = 16
DAY = "2026-12-01"
USERS = 32
FLOATS = ("score", "mmr_score", "match_probability", "score_weighted", "score_embedding")
# The one float32 product of every user's photos and the per-user products may differ in the last bit
# (BLAS picks kernels by shape), which can move a cosine's 6th rounded decimal: values derived from
# cosines agree to that, everything else to float64 noise; the items and their order agree exactly.
COSINE_TOLERANCE = 2e-5


def noise_jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def vector(seed: int, source: str = "fake", null_embedding: bool = False) -> dict[str, Any]:
    """A random fashion vector (classes, softmax vectors, unit embedding); seeds below 40 repeat, so
    several items share every score and the item_id tie-break decides."""
    rng = np.random.default_rng(seed % 40 if seed >= 1000 else seed)
    out: dict[str, Any] = {}
    for a in ATTRS:
        probs = rng.dirichlet(np.full(len(TAXONOMY[a]), 0.5)).astype(np.float32)
        best = int(np.argmax(probs))
        out.update(
            {a: TAXONOMY[a][best], f"{a}_prob": float(probs[best]), f"{a}_probs": probs, f"{a}_model_version": "v1"}
        )
    embedding = rng.normal(size=DIMS).astype(np.float32)
    out["embedding"] = None if null_embedding else embedding / np.linalg.norm(embedding)
    out["embedding_source"] = source
    return out


class SeededVectorizer:
    """Each image's fashion vector seeded by its bytes (a user photo that is also a shop photo gets the
    shop item's vector)."""

    def __init__(self, seeds: dict[str, int]) -> None:
        self.seeds = seeds

    def vectorize(self, images: list[bytes]) -> list[dict]:
        return [vector(self.seeds.get(content_sha256(data), int(content_sha256(data)[:6], 16))) for data in images]


def repository(items: list[dict[str, Any]]) -> pa.Table:
    n = len(items)
    columns: dict[str, Any] = {
        "item_id": [it["item_id"] for it in items],
        "retailer": [it["retailer"] for it in items],
        "product_url": [f"http://shop.test/p/{it['item_id']}" for it in items],
        "title": [f"Item {it['item_id']}" for it in items],
        "price": pa.array([it["price"] for it in items], pa.float64()),
        "currency": ["EUR"] * n,
        "category": [it["category"] for it in items],
        "image_key": [f"images/full/{it['item_id']}.jpg" for it in items],
        "phash": pa.array([it["phash"] for it in items], pa.uint64()),
        "phash_mirror": pa.array([None] * n, pa.uint64()),
        "content_sha256": [it["sha"] for it in items],
        "crawled_at": pa.array([dt.datetime(2026, 11, 27, tzinfo=dt.UTC)] * n, pa.timestamp("us", "UTC")),
    }
    for a in ATTRS:
        columns[a] = pa.array([it["v"][a] for it in items], pa.string())
        columns[f"{a}_prob"] = pa.array([it["v"][f"{a}_prob"] for it in items], pa.float32())
        columns[f"{a}_probs"] = pa.array([it["v"][f"{a}_probs"].tolist() for it in items], pa.list_(pa.float32()))
        columns[f"{a}_model_version"] = ["v1"] * n
    columns["embedding"] = pa.array(
        [None if it["v"]["embedding"] is None else it["v"]["embedding"].tolist() for it in items],
        pa.list_(pa.float32()),
    )
    columns["embedding_source"] = [it["v"]["embedding_source"] for it in items]
    columns["inferred_at"] = pa.array([dt.datetime(2026, 11, 27, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", "UTC"))
    return pa.table(columns)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """32 users of 1-4 photos; 700 items in 3 retailers' files: copies of some users' photos (same bytes
    and recompressed), items sharing vectors (ties), items of other networks, items without
    embeddings or price; items shown to some users on an earlier day."""
    from pipeline.storage import open_store

    store = open_store(f"file://{tmp_path_factory.mktemp('batch-store')}")
    seeds: dict[str, int] = {}
    photos: list[tuple[str, bytes]] = []
    for u in range(USERS):
        for p in range(1 + u % 4):
            data = noise_jpeg(10_000 + 10 * u + p)
            store.put_bytes(f"users/user{u:02d}/p{p}.jpg", data)
            photos.append((f"user{u:02d}", data))
    rng = np.random.default_rng(7)
    items = []
    for i in range(700):
        data = noise_jpeg(50_000 + i)
        seed = 1000 + i if i % 7 == 0 else 100 + i  # every 7th item repeats one of 40 vectors
        if i < 12:  # the exact bytes of a user's photo; 12..23: a recompressed copy of it
            data = photos[i * 3][1]
        elif i < 24:
            with Image.open(io.BytesIO(photos[(i - 12) * 3][1])) as image:
                out = io.BytesIO()
                image.save(out, format="JPEG", quality=60)
                data = out.getvalue()
        if i < 24:
            seeds.setdefault(content_sha256(photos[(i % 12) * 3][1]), 100 + i)
        v = vector(seed, source="other" if i % 23 == 5 else "fake", null_embedding=i % 31 == 3)
        item_id = hashlib.sha1(f"item{i}".encode()).hexdigest()[:10]
        store.put_bytes(f"images/full/{item_id}.jpg", data)
        items.append(
            {
                "item_id": item_id,
                "retailer": ("shop-a", "shop-b", "shop-c")[i % 3],
                "category": ("tops", "dresses")[int(rng.integers(2))],
                "price": None if i % 17 == 0 else float(rng.uniform(5, 200)),
                "phash": perceptual_hashes(Image.open(io.BytesIO(data)))[0],
                "sha": content_sha256(data),
                "v": v,
            }
        )
    table = repository(items)
    for retailer in ("shop-a", "shop-b", "shop-c"):
        part = table.filter(pc.equal(table["retailer"], retailer)).drop_columns(["retailer"])
        for half, rows in enumerate((slice(0, 120), slice(120, None))):
            store.write_parquet(
                f"{FASHION_VECTORS_PREFIX}/crawl_date=2026-11-01/retailer={retailer}/part-{half}.parquet",
                part.slice(rows.start, (rows.stop or part.num_rows) - rows.start),
            )
    for u in range(0, USERS, 3):  # shown yesterday: 15 items each
        shown = [items[(u * 11 + j) % 700]["item_id"] for j in range(15)]
        store.write_parquet(shown_key(f"user{u:02d}", "2026-11-30", "before"), pa.table({"item_id": shown}))
    # the exact copies (the recompressed ones are left out as the one-user path decides: a quality-60
    # copy can be beyond the pHash distance)
    owners = {items[i]["item_id"]: photos[i * 3][0] for i in range(12)}
    return store, SeededVectorizer(seeds), owners


def assert_same_tables(batch: pa.Table, single: pa.Table, user: str, kind: str) -> None:
    assert batch.column_names == single.column_names, user
    assert batch["item_id"].to_pylist() == single["item_id"].to_pylist(), user
    for name in batch.column_names:
        if name == "generated_at":  # the write time
            continue
        left, right = batch[name].to_pylist(), single[name].to_pylist()
        if name in FLOATS:
            assert [v is None for v in left] == [v is None for v in right], (user, name)
            cosine = name == "score_embedding" or (kind in ("embedding", "hybrid") and name in ("score", "mmr_score"))
            assert np.allclose(
                [v or 0.0 for v in left], [v or 0.0 for v in right], rtol=0, atol=COSINE_TOLERANCE if cosine else 1e-9
            ), (user, name)
        else:
            assert left == right, (user, name)


CASES = [
    ("matches", 1.0, 10, {}),
    ("weighted", 0.5, 10, {"retailers": ["shop-a", "shop-c"]}),
    ("embedding", 1.0, 20, {}),
    ("embedding", 0.3, 10, {"categories": ["tops"], "price_max": 150.0}),
    ("hybrid", 0.7, 10, {}),
    ("hybrid", 1.0, 25, {"price_min": 20.0, "price_max": 180.0, "retailers": ["shop-b", "shop-c"]}),
    ("hybrid", 0.0, 5, {"categories": ["dresses"]}),
]


@pytest.mark.parametrize("kind,lam,k,filters", CASES)
def test_batch_lists_equal_the_one_user_path(shop, kind, lam, k, filters):
    store, vectorizer, _ = shop
    options = validate_options(k=k, score_kind=kind, mmr_lambda=lam, filters=filters)
    requests = [{"user_id": f"user{u:02d}", "image_keys": None} for u in range(USERS)]
    summaries = recommend_for_users(store, requests, DAY, options, vectorizer, chunk_rows=37, run_id="batch")
    assert [s["user_id"] for s in summaries] == [r["user_id"] for r in requests]
    batch = {r["user_id"]: store.read_parquet(recommendations_key(r["user_id"], DAY, "batch")) for r in requests}
    excluded_somewhere = 0
    for request, summary in zip(requests, summaries):
        user = request["user_id"]
        single = recommend_for_user(store, UserRequest(user, None, DAY, options, run_id="single"), vectorizer)
        assert_same_tables(batch[user], store.read_parquet(recommendations_key(user, DAY, "single")), user, kind)
        assert {key: v for key, v in summary.items() if key not in ("top_k", "keys", "run")} == {
            key: v for key, v in single.items() if key not in ("top_k", "keys", "run")
        }
        assert batch[user].num_rows == min(k, batch[user].num_rows) and batch[user].num_rows > 0
        excluded_somewhere += single["n_excluded_shown"]
    assert excluded_somewhere > 0


def test_own_photos_and_shown_items_never_come_back(shop):
    store, vectorizer, owners = shop
    options = validate_options(k=100, score_kind="embedding", mmr_lambda=1.0)
    requests = [{"user_id": f"user{u:02d}", "image_keys": None} for u in range(USERS)]
    recommend_for_users(store, requests, DAY, options, vectorizer, chunk_rows=64, run_id="own")
    own = others = 0
    for u in range(USERS):
        ids = set(store.read_parquet(recommendations_key(f"user{u:02d}", DAY, "own"))["item_id"].to_pylist())
        if u % 3 == 0:
            shown = set(store.read_parquet(shown_key(f"user{u:02d}", "2026-11-30", "before"))["item_id"].to_pylist())
            assert not ids & shown
        own += len(ids & {item for item, owner in owners.items() if owner == f"user{u:02d}"})
        others += len(ids & {item for item, owner in owners.items() if owner != f"user{u:02d}"})
    assert own == 0 and others > 0  # a copy of someone's photo is only left out for its owner


def test_dropping_unneeded_kept_rows_copies_one_piece_at_a_time():
    """The merge's compaction replaces each kept piece by its needed rows as it goes: a new list built
    beside the old one held every kept row twice at the merge's peak (found at 1,000 users x 100k
    items: 1.51 GB peak, 1.32 GB in place)."""
    import tracemalloc
    from types import SimpleNamespace

    from pipeline.recommend import batch, scoring

    pieces, rows_per_piece, dims = 8, 1000, 1280
    tracemalloc.start()
    try:
        scorer = object.__new__(batch.BatchScorer)
        scorer.attributes = []
        scorer._reset_kept()
        every_other = np.arange(0, pieces * rows_per_piece, 2)
        scorer.users = [SimpleNamespace(rows=every_other, foreign_rows=np.zeros(0, dtype=np.int64))]
        scorer.pending, scorer.foreign_pending, scorer.pending_size = [], [], 0
        for piece in range(pieces):
            offset = piece * rows_per_piece
            chunk = pa.table({"item_id": [f"item{offset + r:06d}" for r in range(rows_per_piece)]})
            matrix = scoring.FashionMatrix(
                (),
                np.zeros((rows_per_piece, 0), dtype=np.int16),
                np.zeros((rows_per_piece, 0), dtype=np.float32),
                None,
                np.ones((rows_per_piece, dims), dtype=np.float32),
            )
            scorer._keep(chunk, matrix, np.arange(rows_per_piece), offset)
            del chunk, matrix
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        scorer._merge()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    piece_bytes = rows_per_piece * dims * 4
    assert list(scorer.kept_rows) == list(every_other)  # the needed rows stay, the others go
    assert after < before - pieces * piece_bytes // 3  # half of every piece released
    assert peak - before < 1.5 * piece_bytes  # at most about one piece's copy beyond what was kept
