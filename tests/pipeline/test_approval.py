import pytest

from pipeline.approval import (
    approval, approval_body, approved_batches, batch_review_summary, record_approval,
)
from pipeline.review import Decision, build_dataset, enqueue, record_decisions
from tests.pipeline.test_review import ITEMS, WEAK, write_batch


def test_record_and_list_approvals(file_store):
    assert approved_batches(file_store) == [] and approval(file_store, "b1") is None
    record_approval(file_store, "b2", "policy:auto_accept", "policy")
    record = record_approval(file_store, "b1", "alice", "human", {"queued": 5})
    assert approved_batches(file_store) == ["b1", "b2"]
    assert approval(file_store, "b1") == record
    assert record["approved_by"] == "alice" and record["how"] == "human" and record["summary"] == {"queued": 5}


@pytest.mark.parametrize("approver, how, message", [
    ("", "human", "needs an approver"), ("  ", "human", "needs an approver"), ("alice", "email", "approval route"),
])
def test_record_approval_rejects_bad_input(file_store, approver, how, message):
    with pytest.raises(ValueError, match=message):
        record_approval(file_store, "b1", approver, how)
    assert approved_batches(file_store) == []


def test_batch_review_summary_counts_the_queue_by_status(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    summary = file_store.read_json("curation/b1/summary.json")
    file_store.write_json("curation/b1/summary.json", {**summary, "rejected": 3, "duplicates": 2})
    enqueue(file_store, "b1")
    record_decisions(file_store, "b1", [Decision("i1", "accept"), Decision("i2", "reject"),
                                        Decision("i3", "relabel", "pattern", "checkered"), Decision("i4", "skip")],
                     reviewer="alice")
    assert batch_review_summary(file_store, "b1") == {
        "batch_id": "b1", "queued": 5, "accepted": 2, "rejected": 1, "pending": 2, "invalid": 3, "duplicates": 2}


def test_only_approved_batches_enter_the_dataset(file_store):
    write_batch(file_store, "b1", "c1", {"i1": "sha1", "i2": "sha2"}, [])
    write_batch(file_store, "b2", "c2", {"j1": "sha3"}, [])
    for batch, items in (("b1", ["i1", "i2"]), ("b2", ["j1"])):
        enqueue(file_store, batch)
        record_decisions(file_store, batch, [Decision(i, "accept") for i in items], reviewer="alice")
    record_approval(file_store, "b1", "alice", "human")
    build_dataset(file_store, batches=approved_batches(file_store))
    items = file_store.read_parquet("dataset/items.parquet").column("item_id").to_pylist()
    assert items == ["i1", "i2"]


def test_approval_body_states_the_counts_and_links_the_review_page():
    summary = {"batch_id": "ingest-20261128", "queued": 10, "accepted": 6, "rejected": 1, "pending": 3,
               "invalid": 2, "duplicates": 4}
    body = approval_body(summary, "http://review.example/")
    assert "| still pending | 3 |" in body and "| dropped as duplicates | 4 |" in body
    assert "http://review.example/?batch=ingest-20261128" in body
    assert "http" not in approval_body(summary, None)
