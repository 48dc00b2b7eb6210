from datetime import UTC, datetime

import pytest

from pipeline.curation.curate import batch_kind
from pipeline.dataset.build import build_dataset
from pipeline.review.approval import (
    approval,
    approval_body,
    approved_batches,
    batch_review_summary,
    hitl_outcome,
    ingest_batch_id,
    record_approval,
    record_rejection,
    withdraw_approval,
)
from pipeline.review.queue import Decision, enqueue, record_decisions
from pipeline.store_layout import hash_index_key, rejection_key
from tests.pipeline.review.test_review import ITEMS, WEAK, write_batch


def test_record_and_list_approvals(file_store):
    assert approved_batches(file_store) == [] and approval(file_store, "b1") is None
    record_approval(file_store, "b2", "policy:auto_accept", "policy")
    record = record_approval(file_store, "b1", "alice", "human", {"queued": 5})
    assert approved_batches(file_store) == ["b1", "b2"]
    assert approval(file_store, "b1") == record
    assert record["approved_by"] == "alice" and record["how"] == "human" and record["summary"] == {"queued": 5}


@pytest.mark.parametrize(
    "approver, how, message",
    [
        ("", "human", "needs an approver"),
        ("  ", "human", "needs an approver"),
        ("alice", "email", "approval route"),
    ],
)
def test_record_approval_rejects_bad_input(file_store, approver, how, message):
    with pytest.raises(ValueError, match=message):
        record_approval(file_store, "b1", approver, how)
    assert approved_batches(file_store) == []


def test_batch_review_summary_counts_the_queue_by_status(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    summary = file_store.read_json("curation/b1/summary.json")
    file_store.write_json("curation/b1/summary.json", {**summary, "rejected": 3, "duplicates": 2})
    enqueue(file_store, "b1")
    record_decisions(
        file_store,
        "b1",
        [
            Decision("i1", "accept"),
            Decision("i2", "reject"),
            Decision("i3", "relabel", "pattern", "checkered"),
            Decision("i4", "skip"),
        ],
        reviewer="alice",
    )
    assert batch_review_summary(file_store, "b1") == {
        "batch_id": "b1",
        "queued": 5,
        "accepted": 2,
        "rejected": 1,
        "pending": 2,
        "invalid": 3,
        "duplicates": 2,
    }


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
    summary = {
        "batch_id": "ingest-20261128",
        "queued": 10,
        "accepted": 6,
        "rejected": 1,
        "pending": 3,
        "invalid": 2,
        "duplicates": 4,
    }
    body = approval_body(summary, "http://review.example/", datetime(2026, 11, 28, 9, 30, 5, tzinfo=UTC))
    assert "| still pending | 3 |" in body and "| dropped as duplicates | 4 |" in body
    assert "http://review.example/?batch=ingest-20261128" in body
    assert "Counts as of 2026-11-28 09:30:05 UTC, when this approval was requested" in body
    assert "http" not in approval_body(summary, None)


def test_the_link_opens_the_batch_on_the_review_page_itself():
    """Issue 12: the link went to Airflow's root (review.page_url was http://127.0.0.1:8080)."""
    from pipeline.settings import load_settings

    summary = {
        "batch_id": "ingest-20261128-093005-demo-store",
        "queued": 1,
        "accepted": 0,
        "rejected": 0,
        "pending": 1,
        "invalid": 0,
        "duplicates": 0,
    }
    page = load_settings({}).review.page_url
    assert page.rstrip("/").endswith("/fashionnet-review")
    assert f"{page.rstrip('/')}/?batch=ingest-20261128-093005-demo-store" in approval_body(summary, page)
    # make airflow points it at its own api-server (another port).
    assert (
        load_settings({"FASHIONNET_REVIEW_URL": "http://127.0.0.1:18080/fashionnet-review/"}).review.page_url
        == "http://127.0.0.1:18080/fashionnet-review/"
    )


def test_two_ingest_runs_on_one_day_are_two_batches_of_the_ingest_kind():
    morning = ingest_batch_id(datetime(2026, 11, 28, 2, 0, 0, tzinfo=UTC), "demo-store")
    rerun = ingest_batch_id(datetime(2026, 11, 28, 15, 42, 7, 123456, tzinfo=UTC), "demo-store")
    assert morning == "ingest-20261128-020000-demo-store" and rerun == "ingest-20261128-154207-demo-store"
    assert batch_kind(morning) == batch_kind(rerun) == "ingest"  # still deduplicated across runs


def test_a_rejected_batch_leaves_the_dataset_and_the_duplicate_index(file_store):
    write_batch(file_store, "ingest-20261128-020000-s", "c1", {"i1": "sha1", "i2": "sha2"}, [])
    enqueue(file_store, "ingest-20261128-020000-s")
    record_decisions(
        file_store, "ingest-20261128-020000-s", [Decision("i1", "accept"), Decision("i2", "accept")], reviewer="alice"
    )
    record_approval(file_store, "ingest-20261128-020000-s", "policy:auto_accept", "policy")
    index = hash_index_key("ingest", "ingest-20261128-020000-s")
    file_store.put_bytes(index, b"index")
    record = record_rejection(file_store, "ingest-20261128-020000-s", "bob", "rejected at the approval")
    assert approved_batches(file_store) == [] and not file_store.exists(index)
    assert file_store.read_json(rejection_key("ingest-20261128-020000-s")) == record
    assert record["rejected_by"] == "bob" and record["removed_from_duplicate_index"]
    build_dataset(file_store, batches=approved_batches(file_store))
    assert file_store.read_parquet("dataset/items.parquet").num_rows == 0


def test_asking_again_withdraws_an_earlier_approval(file_store):
    record_approval(file_store, "b1", "alice", "human")
    assert withdraw_approval(file_store, "b1") and approved_batches(file_store) == []
    assert not withdraw_approval(file_store, "b1")


@pytest.mark.parametrize(
    "response, outcome",
    [
        ({"chosen_options": ["Approve"], "responded_by_user": {"id": "1", "name": "alice"}}, ("approved", "alice")),
        ({"chosen_options": ["Reject"], "responded_by_user": {"id": "2", "name": "bob"}}, ("rejected", "bob")),
        # The timeout takes the default option (Approve, the primary button) with nobody responding: no approval.
        ({"chosen_options": ["Approve"], "responded_by_user": None}, ("timeout", None)),
        (None, ("approved", None)),  # the task marked successful by hand
    ],
)
def test_hitl_outcome(response, outcome):
    assert hitl_outcome(response) == outcome
