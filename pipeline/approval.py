"""Batch approval: which curated batches may enter the dataset, and who let them in.

Item-level review lives in :mod:`pipeline.review` (accept / reject / relabel per item, in an audit
log). On top of it each ingest batch passes one gate before :func:`pipeline.review.build_dataset`
uses it: a person approves the cleaned batch as a whole (an Airflow Human-in-the-loop approval in the
``fashionnet_ingest`` DAG), or the configured review policy approves it automatically (the demo).

``review/approvals/<batch_id>.json`` records the approval. A batch without one (still waiting, or
rejected at the gate) contributes nothing to the dataset, whatever its item decisions say. A rerun of
the gate rewrites the batch's record; the item decisions keep their full history in the audit log.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipeline.storage import ObjectStore

APPROVALS_PREFIX = "review/approvals"


def approval_key(batch_id: str) -> str:
    return f"{APPROVALS_PREFIX}/{batch_id}.json"


def record_approval(store: ObjectStore, batch_id: str, approved_by: str, how: str,
                    summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mark ``batch_id`` approved by ``approved_by`` (a user, or ``policy:<name>``); returns the record.

    ``how`` says by which route: ``"policy"`` or ``"human"``.
    """
    if not approved_by or not approved_by.strip():
        raise ValueError(f"an approval of batch {batch_id!r} needs an approver")
    if how not in ("policy", "human"):
        raise ValueError(f"unknown approval route {how!r}; expected 'policy' or 'human'")
    record = {"batch_id": batch_id, "approved_by": approved_by, "how": how,
              "approved_at": datetime.now(timezone.utc).isoformat(), "summary": summary or {}}
    store.write_json(approval_key(batch_id), record)
    return record


def approval(store: ObjectStore, batch_id: str) -> dict[str, Any] | None:
    key = approval_key(batch_id)
    return store.read_json(key) if store.exists(key) else None


def approved_batches(store: ObjectStore) -> list[str]:
    """Ids of every approved batch, sorted."""
    prefix = f"{APPROVALS_PREFIX}/"
    return sorted(k[len(prefix):-len(".json")] for k in store.list(APPROVALS_PREFIX) if k.endswith(".json"))


def batch_review_summary(store: ObjectStore, batch_id: str) -> dict[str, Any]:
    """Counts an approver needs: the batch's queue by review status, and what curation dropped."""
    from pipeline.review import read_decisions, read_queue, replay  # pandas: only when a task runs
    from pipeline.settings import get_settings

    queue = read_queue(store, batch_id)
    state = replay(queue, read_decisions(store, batch_id), get_settings().taxonomy)
    statuses = list(state.status.values())
    curation = store.read_json(f"curation/{batch_id}/summary.json")
    return {
        "batch_id": batch_id,
        "queued": len(queue),
        "accepted": statuses.count("accept"),
        "rejected": statuses.count("reject"),
        "pending": len(queue) - len(statuses),
        "invalid": int(curation.get("rejected", 0)),
        "duplicates": int(curation.get("duplicates", 0)),
    }


def approval_body(summary: dict[str, Any], review_url: str | None) -> str:
    """The Markdown an approver reads in Airflow's Required Actions before deciding."""
    lines = [
        f"Batch **{summary['batch_id']}** is curated and queued for review.",
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
        "reviewer decides them. Reject to keep the whole batch out.",
    ]
    if review_url:
        lines += ["", f"Review the items first: {review_url.rstrip('/')}/?batch={summary['batch_id']}"]
    return "\n".join(lines)
