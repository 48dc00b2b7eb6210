from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.dataset.build import build_dataset
from pipeline.review.queue import (
    Decision,
    apply_policy,
    enqueue,
    pending,
    read_decisions,
    record_decisions,
)

START = datetime(2026, 11, 1, tzinfo=UTC)


def write_batch(
    store, batch_id: str, crawl_id: str, items: dict[str, str], weak: list[tuple[str, str, str, str]], day: int = 0
) -> None:
    """A curated batch as curate_batch leaves it: items maps item_id -> content_sha256."""
    rows = []
    for n, (item_id, sha) in enumerate(sorted(items.items())):
        rows.append(
            {
                "item_id": item_id,
                "retailer": "demo-store",
                "product_url": f"http://shop.test/p/{item_id}",
                "sku": item_id.upper(),
                "title": f"Title {item_id}",
                "price": 9.5,
                "currency": "EUR",
                "category": "tops",
                "image_url": f"http://shop.test/i/{item_id}.jpg",
                "image_key": f"images/full/{item_id}.jpg",
                "crawled_at": START + timedelta(days=day, minutes=n),
                "phash": 2**63 + n,
                "dhash": n,
                "content_sha256": sha,
                "width": 100,
                "height": 120,
                "cluster_id": sha,
            }
        )
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                *(pa.field(name, pa.string()) for name in ("item_id", "retailer", "product_url", "sku", "title")),
                pa.field("price", pa.float64()),
                pa.field("currency", pa.string()),
                pa.field("category", pa.string()),
                pa.field("image_url", pa.string()),
                pa.field("image_key", pa.string()),
                pa.field("crawled_at", pa.timestamp("us", tz="UTC")),
                pa.field("phash", pa.uint64()),
                pa.field("dhash", pa.uint64()),
                pa.field("content_sha256", pa.string()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("cluster_id", pa.string()),
            ]
        ),
    )
    store.write_parquet(f"curation/{batch_id}/accepted.parquet", table)
    store.write_json(f"curation/{batch_id}/summary.json", {"crawl_id": crawl_id, "batch_id": batch_id})
    store.write_parquet(
        f"crawls/{crawl_id}/weak_labels.parquet",
        pa.Table.from_pylist(
            [{"item_id": i, "attribute": a, "label": lab, "source": s} for i, a, lab, s in weak],
            schema=pa.schema(
                [("item_id", pa.string()), ("attribute", pa.string()), ("label", pa.string()), ("source", pa.string())]
            ),
        ),
    )


ITEMS = {"i1": "sha1", "i2": "sha2", "i3": "sha3", "i4": "sha4", "i5": "sha5"}
WEAK = [
    ("i1", "pattern", "striped", "query:striped"),
    ("i1", "shape", "full-sleeve", "query:long sleeve"),
    ("i2", "pattern", "striped", "query:striped"),
    ("i2", "pattern", "floral", "query:floral"),
    ("i3", "pattern", "floral", "query:floral"),
    ("i3", "pattern", "floral", "query:flower"),
    ("i4", "pattern", "solid", "query:solid"),
    ("i4", "fabric", "denim", "query:denim"),  # not in the taxonomy: ignored
]


def test_enqueue_pivots_weak_labels_and_flags_conflicts(any_store):
    write_batch(any_store, "b1", "c1", ITEMS, WEAK)
    assert enqueue(any_store, "b1") == 5
    queue = any_store.read_parquet("review/queue/b1.parquet").to_pandas().set_index("item_id")
    assert list(queue.index) == ["i1", "i2", "i3", "i4", "i5"]
    for column in ("image_key", "cluster_id", "title", "product_url", "weak_style", "weak_style_source"):
        assert column in queue.columns
    assert queue.loc["i1", "weak_pattern"] == "striped" and queue.loc["i1", "weak_shape"] == "full-sleeve"
    assert pd.isna(queue.loc["i2", "weak_pattern"])
    assert queue.loc["i2", "weak_pattern_source"] == "conflict:query:floral,query:striped"
    assert queue.loc["i3", "weak_pattern"] == "floral"
    assert queue.loc["i3", "weak_pattern_source"] == "query:floral,query:flower"
    assert pd.isna(queue.loc["i4", "weak_fabric"]) and pd.isna(queue.loc["i5", "weak_pattern"])
    assert queue["phash"].dtype == "uint64"


def test_review_flow_builds_the_right_labels(any_store):
    write_batch(any_store, "b1", "c1", ITEMS, WEAK)
    enqueue(any_store, "b1")
    assert pending(any_store, "b1") == ["i1", "i2", "i3", "i4", "i5"]

    first = record_decisions(
        any_store,
        "b1",
        [
            Decision("i3", "relabel", "pattern", "checkered", reason="it is a check"),
            Decision("i4", "reject", reason="not clothing"),
            Decision("i5", "skip"),
        ],
        reviewer="alice",
    )
    second = record_decisions(any_store, "b1", [Decision("i1", "relabel", "pattern", "graphic")], reviewer="bob")
    third = record_decisions(any_store, "b1", [Decision("i1", "relabel", "pattern", "solid")], reviewer="carol")
    assert len({first, second, third}) == 3

    assert apply_policy(any_store, "b1", "auto_accept") == 1  # only i2: i5 was seen and skipped
    assert apply_policy(any_store, "b1", "auto_accept") == 0
    assert apply_policy(any_store, "b1", "manual") == 0
    assert pending(any_store, "b1") == ["i5"]

    log = read_decisions(any_store, "b1")
    assert len(any_store.list("review/decisions/b1")) == 4
    carol = log[log["reviewer"] == "carol"].iloc[0]
    assert (carol["old_label"], carol["new_label"]) == ("graphic", "solid")
    auto = log[log["reviewer"] == "policy:auto_accept"]
    assert auto["item_id"].tolist() == ["i2"] and auto["decision"].tolist() == ["accept"]

    summary = build_dataset(any_store)
    items = any_store.read_parquet("dataset/items.parquet").to_pandas().set_index("item_id")
    assert list(items.index) == ["i1", "i2", "i3"]
    assert summary["items"] == 3 and summary["rejected"] == 1 and summary["pending"] == 1
    assert items.loc["i1", "pattern"] == "solid" and items.loc["i1", "pattern_label_source"] == "review:carol"
    assert items.loc["i1", "shape"] == "full-sleeve"
    assert items.loc["i1", "shape_label_source"] == "weak:query:long sleeve"
    assert pd.isna(items.loc["i2", "pattern"]) and items.loc["i2", "pattern_label_source"].startswith("conflict:")
    assert items.loc["i3", "pattern"] == "checkered" and pd.isna(items.loc["i3", "fabric"])
    for column in (
        "image_key",
        "title",
        "product_url",
        "retailer",
        "cluster_id",
        "phash",
        "content_sha256",
        "batch_id",
        "style",
        "style_label_source",
    ):
        assert column in items.columns
    assert items["phash"].dtype == "uint64" and set(items["batch_id"]) == {"b1"}


def test_the_audit_log_is_append_only(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    first = record_decisions(file_store, "b1", [Decision("i1", "accept")], reviewer="alice")
    first_bytes = file_store.get_bytes(first)
    second = record_decisions(file_store, "b1", [Decision("i1", "reject")], reviewer="alice")
    assert first != second
    assert file_store.list("review/decisions/b1") == sorted([first, second])
    assert file_store.get_bytes(first) == first_bytes
    assert pending(file_store, "b1") == ["i2", "i3", "i4", "i5"]
    build_dataset(file_store)
    assert file_store.read_parquet("dataset/items.parquet").num_rows == 0  # the later reject wins


@pytest.mark.parametrize(
    "decision, message",
    [
        (Decision("nope", "accept"), "unknown item 'nope'"),
        (Decision("i1", "relabel", "colour", "red"), "unknown attribute 'colour'"),
        (Decision("i1", "relabel", "pattern", "polka"), "unknown class 'polka'"),
        (Decision("i1", "approve"), "unknown decision 'approve'"),
        (Decision("i1", "accept", "pattern"), "item-level decision"),
    ],
)
def test_invalid_decisions_are_refused_and_nothing_is_written(file_store, decision, message):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    with pytest.raises(ValueError, match=message):
        record_decisions(file_store, "b1", [Decision("i2", "accept"), decision], reviewer="alice")
    assert file_store.list("review/decisions") == []


def test_unknown_policy_and_unknown_batch_are_errors(file_store):
    with pytest.raises(ValueError, match="unknown review policy 'yolo'"):
        apply_policy(file_store, "b1", "yolo")
    with pytest.raises(ValueError, match="not curated"):
        enqueue(file_store, "missing")
    with pytest.raises(ValueError, match="no review queue"):
        pending(file_store, "missing")


def test_relabel_from_null_and_clearing_a_label(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    record_decisions(
        file_store,
        "b1",
        [
            Decision("i5", "relabel", "pattern", "floral"),
            Decision("i1", "relabel", "shape", None, reason="sleeves not visible"),
        ],
        reviewer="erin",
    )
    log = read_decisions(file_store, "b1").set_index("item_id")
    assert pd.isna(log.loc["i5", "old_label"]) and log.loc["i5", "new_label"] == "floral"
    assert log.loc["i1", "old_label"] == "full-sleeve" and pd.isna(log.loc["i1", "new_label"])
    assert pending(file_store, "b1") == ["i2", "i3", "i4"]  # a relabel accepts the item
    build_dataset(file_store)
    items = file_store.read_parquet("dataset/items.parquet").to_pandas().set_index("item_id")
    assert list(items.index) == ["i1", "i5"]
    assert pd.isna(items.loc["i1", "shape"]) and items.loc["i1", "shape_label_source"] == "review:erin"
    assert items.loc["i1", "pattern"] == "striped" and items.loc["i5", "pattern"] == "floral"


def _state(store, batch_id="b1"):
    from pipeline.review.queue import read_queue, replay
    from pipeline.settings import get_settings

    return replay(read_queue(store, batch_id), read_decisions(store, batch_id), get_settings().taxonomy)


def test_undo_pops_the_latest_decision_and_restores_labels(any_store):
    write_batch(any_store, "b1", "c1", ITEMS, WEAK)
    enqueue(any_store, "b1")
    record_decisions(
        any_store,
        "b1",
        [
            Decision("i1", "relabel", "pattern", "graphic"),
            Decision("i1", "relabel", "pattern", "solid"),
            Decision("i2", "reject"),
            Decision("i3", "skip"),
        ],
        reviewer="alice",
    )
    before = {name: any_store.get_bytes(name) for name in any_store.list("review/decisions/b1")}
    record_decisions(
        any_store,
        "b1",
        [Decision("i1", "undo", reason="misclick"), Decision("i2", "undo"), Decision("i3", "undo")],
        reviewer="bob",
    )

    state = _state(any_store)
    assert state.labels["i1"]["pattern"] == ("graphic", "review:alice")  # the earlier relabel is back
    assert state.status == {"i1": "accept"}
    assert state.decided == {"i1"} and state.last == {"i1": "relabel"}
    assert pending(any_store, "b1") == ["i2", "i3", "i4", "i5"]
    assert {name: any_store.get_bytes(name) for name in before} == before  # nothing edited in place

    log = read_decisions(any_store, "b1")
    undo = log[log["decision"] == "undo"].set_index("item_id")
    assert list(undo.index) == ["i1", "i2", "i3"] and set(undo["reviewer"]) == {"bob"}
    assert (undo.loc["i1", "attribute"], undo.loc["i1", "old_label"], undo.loc["i1", "new_label"]) == (
        "pattern",
        "solid",
        "graphic",
    )
    assert undo.loc["i1", "reason"] == "misclick"
    assert pd.isna(undo.loc["i2", "attribute"]) and pd.isna(undo.loc["i2", "old_label"])

    record_decisions(any_store, "b1", [Decision("i1", "undo")], reviewer="bob")
    state = _state(any_store)
    assert state.labels["i1"]["pattern"] == ("striped", "weak:query:striped")  # back to the weak label
    assert "i1" not in state.decided and pending(any_store, "b1") == ["i1", "i2", "i3", "i4", "i5"]
    # an undone item counts as never seen: the auto-accept policy takes it again
    assert apply_policy(any_store, "b1", "auto_accept") == 5


def test_undo_within_one_call_and_a_decision_after_an_undo(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    record_decisions(
        file_store,
        "b1",
        [
            Decision("i4", "accept"),
            Decision("i4", "relabel", "style", "formal"),
            Decision("i4", "undo"),
            Decision("i4", "reject"),
            Decision("i5", "relabel", "shape", "sleeveless"),
            Decision("i5", "undo"),
            Decision("i5", "relabel", "shape", "half-sleeve"),
        ],
        reviewer="carol",
    )
    state = _state(file_store)
    assert state.status == {"i4": "reject", "i5": "accept"}
    assert state.labels["i4"]["style"] == (None, None)
    assert state.labels["i5"]["shape"] == ("half-sleeve", "review:carol")
    log = read_decisions(file_store, "b1")
    last = log[log["item_id"] == "i5"].iloc[-1]
    assert pd.isna(last["old_label"])  # the undone sleeveless never counted


@pytest.mark.parametrize(
    "decisions",
    [
        [Decision("i1", "undo")],
        [Decision("i1", "accept"), Decision("i1", "undo"), Decision("i1", "undo")],
        [Decision("i2", "skip"), Decision("i1", "undo")],
    ],
)
def test_undo_with_nothing_to_undo_is_refused_and_nothing_is_written(file_store, decisions):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    with pytest.raises(ValueError, match="nothing to undo for item 'i1'"):
        record_decisions(file_store, "b1", decisions, reviewer="alice")
    assert file_store.list("review/decisions") == []


def test_undo_after_an_earlier_undo_reaches_further_back(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    record_decisions(file_store, "b1", [Decision("i1", "reject")], reviewer="alice")
    record_decisions(file_store, "b1", [Decision("i1", "accept")], reviewer="alice")
    record_decisions(file_store, "b1", [Decision("i1", "undo")], reviewer="alice")
    assert _state(file_store).status == {"i1": "reject"}
    record_decisions(file_store, "b1", [Decision("i1", "undo")], reviewer="alice")
    assert _state(file_store).status == {}
    with pytest.raises(ValueError, match="nothing to undo"):
        record_decisions(file_store, "b1", [Decision("i1", "undo")], reviewer="alice")


def test_undo_is_item_level(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    with pytest.raises(ValueError, match="item-level decision"):
        record_decisions(file_store, "b1", [Decision("i1", "undo", "pattern")], reviewer="alice")


def test_predictions_contract():
    from pipeline.review.queue import PREDICTIONS_SCHEMA
    from pipeline.store_layout import review_predictions_key

    assert review_predictions_key("ingest-20261101") == "review/predictions/ingest-20261101.parquet"
    assert [(f.name, str(f.type)) for f in PREDICTIONS_SCHEMA] == [
        ("item_id", "string"),
        ("attribute", "string"),
        ("predicted_label", "string"),
        ("confidence", "double"),
        ("model_version", "string"),
    ]


def test_decisions_in_the_same_microsecond_never_overwrite_each_other(file_store, monkeypatch):
    """Issue 17: the log key was checked, then written; two calls at the same instant drew the same key
    and the later one replaced the earlier decision. Now every key has a uuid and the write is create-only."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pipeline.review.queue as review

    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    instant = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant

    monkeypatch.setattr(review, "datetime", FrozenClock)
    everyone_read = threading.Barrier(5)
    real_read_decisions = review.read_decisions

    def read_then_wait(store, batch_id):  # every call has read the log before any writes: the race
        log = real_read_decisions(store, batch_id)
        everyone_read.wait(timeout=10)
        return log

    monkeypatch.setattr(review, "read_decisions", read_then_wait)
    with ThreadPoolExecutor(max_workers=5) as pool:
        keys = list(
            pool.map(
                lambda item: record_decisions(file_store, "b1", [Decision(item, "accept")], reviewer="alice"),
                sorted(ITEMS),
            )
        )
    monkeypatch.setattr(review, "read_decisions", real_read_decisions)
    assert len(set(keys)) == 5 and sorted(file_store.list("review/decisions/b1")) == sorted(keys)
    log = read_decisions(file_store, "b1")
    assert sorted(log["item_id"]) == sorted(ITEMS) and pending(file_store, "b1") == []


def test_a_decision_log_object_is_never_replaced(file_store, monkeypatch):
    import pipeline.review.queue as review
    from pipeline.storage import StoreConflict

    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    first = record_decisions(file_store, "b1", [Decision("i1", "accept")], reviewer="alice")
    monkeypatch.setattr(review, "_log_key", lambda *args: first)  # even a colliding key cannot replace it
    with pytest.raises(StoreConflict):
        record_decisions(file_store, "b1", [Decision("i1", "reject")], reviewer="alice")
    assert read_decisions(file_store, "b1")["decision"].tolist() == ["accept"]
