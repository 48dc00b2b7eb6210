"""Batch approval: which curated batches may enter the dataset, and who let them in.

Item-level review lives in :mod:`pipeline.review.queue` (accept / reject / relabel per item, in an audit
log). On top of it each ingest batch passes one gate before :func:`pipeline.dataset.build.build_dataset`
uses it: a person approves the cleaned batch as a whole (an Airflow Human-in-the-loop approval in the
``fashionnet_ingest`` DAG), or the configured review policy approves it automatically (the demo).

``review/approvals/<batch_id>.json`` records the approval. A batch without one (still waiting, or
rejected at the gate) contributes nothing to the dataset, whatever its item decisions say. A rerun of
the gate rewrites the batch's record; the item decisions keep their full history in the audit log.

Every ingest run has a batch of its own (:func:`ingest_batch_id`: the run's time to the second), so a
second run on one day never inherits the first one's decisions or approval. A batch sent to a person has
any earlier approval withdrawn first (:func:`withdraw_approval`: a cleared and re-asked gate starts from
nothing), and a rejection (or no answer before the timeout) is recorded in
``review/rejections/<batch_id>.json`` (:func:`record_rejection`), which also takes the batch's items out of
the cross-run duplicate index, so a later crawl of the same images is not dropped as a copy of a batch
that never entered the dataset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipeline.storage import ObjectStore
from pipeline.store_layout import APPROVALS_PREFIX, approval_key, curation_summary_key, hash_index_key, rejection_key

if TYPE_CHECKING:
    from pipeline.settings import Taxonomy

INGEST_KIND = "ingest"


def ingest_batch_id(run_after: datetime, retailer: str) -> str:
    """``ingest-<YYYYMMDD>-<HHMMSS>-<retailer>``: one batch per ingest run and retailer (the run's time, UTC,
    to the second), so a second run on the same day is a batch of its own. It keeps the ``<kind>-<YYYYMMDD>``
    head that :func:`pipeline.curation.curate.batch_kind` reads (cross-run deduplication of the ``ingest`` kind)."""
    when = run_after.astimezone(UTC) if run_after.tzinfo else run_after
    return f"{INGEST_KIND}-{when:%Y%m%d}-{when:%H%M%S}-{retailer}"


def record_approval(
    store: ObjectStore, batch_id: str, approved_by: str, how: str, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Mark ``batch_id`` approved by ``approved_by`` (a user, or ``policy:<name>``); returns the record.

    ``how`` says by which route: ``"policy"`` or ``"human"``.
    """
    if not approved_by or not approved_by.strip():
        raise ValueError(f"an approval of batch {batch_id!r} needs an approver")
    if how not in ("policy", "human"):
        raise ValueError(f"unknown approval route {how!r}; expected 'policy' or 'human'")
    record = {
        "batch_id": batch_id,
        "approved_by": approved_by,
        "how": how,
        "approved_at": datetime.now(UTC).isoformat(),
        "summary": summary or {},
    }
    store.write_json(approval_key(batch_id), record)
    return record


def withdraw_approval(store: ObjectStore, batch_id: str) -> bool:
    """Remove ``batch_id``'s approval (it is about to be asked again); True when there was one."""
    key = approval_key(batch_id)
    if not store.exists(key):
        return False
    store.delete(key)
    return True


def record_rejection(
    store: ObjectStore, batch_id: str, rejected_by: str | None, reason: str, summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keep ``batch_id`` out of the dataset for good: its approval (if any) is withdrawn, the rejection is
    recorded (who, why, when, the counts), and its items leave the cross-run duplicate index
    (``curation/hash_index/<kind>/<batch_id>.parquet``), so they do not make later copies "duplicates"."""
    from pipeline.curation.curate import batch_kind

    withdraw_approval(store, batch_id)
    kind = batch_kind(batch_id)
    index = hash_index_key(kind, batch_id) if kind else None
    dropped_index = False
    if index and store.exists(index):
        store.delete(index)
        dropped_index = True
    record = {
        "batch_id": batch_id,
        "rejected_by": rejected_by,
        "reason": reason,
        "rejected_at": datetime.now(UTC).isoformat(),
        "summary": summary or {},
        "removed_from_duplicate_index": dropped_index,
    }
    store.write_json(rejection_key(batch_id), record)
    return record


def hitl_outcome(response: dict[str, Any] | None) -> tuple[str, str | None]:
    """What the ``approve_batch`` task's result means: ``("approved" | "rejected" | "timeout", user)``.

    The timeout takes the operator's default option (Approve, so that it is the primary button) with no
    responder: that is no approval. A task marked successful by hand (no result) is an approval by whoever
    marked it, whom Airflow does not tell the task: ``("approved", None)``."""
    if not response:
        return "approved", None
    user = response.get("responded_by_user") or {}
    who = str(user.get("name") or user.get("id") or "") or None
    if who is None:
        return "timeout", None
    chosen = list(response.get("chosen_options") or [])
    return ("approved" if chosen == ["Approve"] else "rejected"), who


def approval(store: ObjectStore, batch_id: str) -> dict[str, Any] | None:
    key = approval_key(batch_id)
    return store.read_json(key) if store.exists(key) else None


def approved_batches(store: ObjectStore) -> list[str]:
    """Ids of every approved batch, sorted."""
    prefix = f"{APPROVALS_PREFIX}/"
    return sorted(k[len(prefix) : -len(".json")] for k in store.list(APPROVALS_PREFIX) if k.endswith(".json"))


def batch_review_summary(store: ObjectStore, batch_id: str, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """Counts an approver needs: the batch's queue by review status, and what curation dropped.
    ``taxonomy``: default the settings'."""
    from pipeline.review.queue import read_decisions, read_queue, replay  # pandas: only when a task runs
    from pipeline.settings import get_settings

    queue = read_queue(store, batch_id)
    state = replay(queue, read_decisions(store, batch_id), taxonomy or get_settings().taxonomy)
    statuses = list(state.status.values())
    curation = store.read_json(curation_summary_key(batch_id))
    return {
        "batch_id": batch_id,
        "queued": len(queue),
        "accepted": statuses.count("accept"),
        "rejected": statuses.count("reject"),
        "pending": len(queue) - len(statuses),
        "invalid": int(curation.get("rejected", 0)),
        "duplicates": int(curation.get("duplicates", 0)),
    }


def review_link(review_url: str, batch_id: str) -> str:
    """The review page opened on ``batch_id`` (``review.page_url`` is the page itself, e.g.
    ``http://127.0.0.1:8080/fashionnet-review/``)."""
    return f"{review_url.rstrip('/')}/?batch={quote(batch_id, safe='')}"


def approval_body(summary: dict[str, Any], review_url: str | None, taken_at: datetime | None = None) -> str:
    """The Markdown an approver reads in Airflow's Required Actions before deciding.

    The text is written once, when the approval is requested; it says so (``taken_at``), links to the review
    page where the counts are live, and the approval itself records the counts of the moment it is given."""
    taken = (taken_at or datetime.now(UTC)).astimezone(UTC)
    lines = [
        f"Batch **{summary['batch_id']}** is curated and queued for review.",
        "",
        f"Counts as of {taken:%Y-%m-%d %H:%M:%S} UTC, when this approval was requested; reviewers may have "
        "decided more items since (the review page shows the current state, and your approval records the "
        "counts at the moment you give it).",
        "",
        "| | items |",
        "|---|---|",
        f"| in the review queue | {summary['queued']} |",
        f"| accepted | {summary['accepted']} |",
        f"| rejected by reviewers | {summary['rejected']} |",
        f"| still pending | {summary['pending']} |",
        f"| rejected by validation | {summary['invalid']} |",
        f"| dropped as duplicates | {summary['duplicates']} |",
        "",
        "Approve to add the accepted items to the training dataset; pending items stay out until a "
        "reviewer decides them. Reject to keep the whole batch out. No answer within the timeout keeps it out.",
    ]
    if review_url:
        link = review_link(review_url, summary["batch_id"])
        lines += ["", f"Review the items first: [{link}]({link})"]
    return "\n".join(lines)
