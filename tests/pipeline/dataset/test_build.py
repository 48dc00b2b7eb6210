"""pipeline.dataset.build: the labelled dataset from the review queues and decisions (the review flow's
own outcomes are in tests/pipeline/review)."""

from pipeline.dataset.build import build_dataset
from pipeline.review.queue import Decision, apply_policy, enqueue, record_decisions
from tests.pipeline.review.test_review import write_batch


def test_dataset_dedupes_across_batches_and_is_idempotent(file_store):
    write_batch(
        file_store,
        "b1",
        "c1",
        {"i1": "sha1", "i2": "sha2", "i3": "sha3"},
        [("i1", "pattern", "striped", "query:striped")],
    )
    write_batch(
        file_store,
        "b2",
        "c2",
        {"i1": "sha1-new", "i3": "sha3-new", "i9": "sha2"},
        [("i1", "pattern", "floral", "query:floral")],
        day=7,
    )
    for batch in ("b1", "b2"):
        enqueue(file_store, batch)
        apply_policy(file_store, batch, "auto_accept")
    record_decisions(file_store, "b2", [Decision("i3", "reject")], reviewer="alice")

    summary = build_dataset(file_store)
    first = file_store.get_bytes("dataset/items.parquet")
    items = file_store.read_parquet("dataset/items.parquet").to_pandas().set_index("item_id")
    # i1: the later batch's copy wins; i3: rejected in the later batch; i9: same bytes as i2, which is older.
    assert list(items.index) == ["i1", "i2"]
    assert items.loc["i1", "batch_id"] == "b2" and items.loc["i1", "pattern"] == "floral"
    assert summary["same_content_dropped"] == 1 and summary["batches"] == 2
    build_dataset(file_store)
    assert file_store.get_bytes("dataset/items.parquet") == first
