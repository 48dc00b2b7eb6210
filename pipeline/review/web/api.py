"""The page's JSON API, under ``api/``. The session gate in ``app.py`` has already authenticated every call.

* ``GET batches``: every batch with a queue and its counts.
* ``GET batches/{batch}/items?sort=queue|confidence|disagreement&pending_first=``: the batch as the
  page shows it (:mod:`pipeline.review.view`).
* ``GET batches/{batch}/images/{item}``: the image of a queue item or of a dropped duplicate in its
  cluster. The client names an item, never a store key: anything else is 404.
* ``POST batches/{batch}/decisions``: ``{"decisions": [{item_id, decision, attribute?, new_label?,
  reason?}]}``, recorded in the audit log under the session's reviewer.
* ``POST batches/{batch}/accept-page``: ``{"item_ids": [...]}``: accepts those still pending.
* ``GET batches/{batch}/log``: the audit log, newest first.
* ``GET me``: the reviewer.

Store and pandas work happens in plain ``def`` routes, which FastAPI runs in its thread pool.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.review.web.app import context, reviewer
from pipeline.store_layout import review_queue_key

router = APIRouter()

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"))
ACCEPT_PAGE_REASON = "accept page"


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a "reviewer" field is refused, not ignored

    item_id: str = Field(max_length=128)
    decision: Literal["accept", "reject", "relabel", "skip", "undo"]
    attribute: str | None = Field(default=None, max_length=64)
    new_label: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="", max_length=500)


class DecisionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionIn] = Field(min_length=1, max_length=2000)


class AcceptPageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(min_length=1, max_length=2000)


def checked_batch(request: Request, batch_id: str) -> str:
    """``batch_id`` when it names a batch with a review queue, else 404."""
    if (
        not ID_PATTERN.fullmatch(batch_id)
        or ".." in batch_id
        or not context(request).store.exists(review_queue_key(batch_id))
    ):
        raise HTTPException(404, f"no review queue for batch {batch_id!r}")
    return batch_id


def image_type(data: bytes) -> str:
    for magic, media_type in IMAGE_TYPES:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _state_update(request: Request, batch_id: str, item_ids: set[str]) -> dict[str, Any]:
    """The changed items and the batch's new counts, for the page to update in place."""
    from pipeline.review.view import BatchView, item_views

    items = item_views(context(request).store, batch_id, context(request).taxonomy)
    counts = BatchView(batch_id=batch_id, attributes={}, has_predictions=False, items=items).counts()
    return {"counts": counts, "items": [item.to_json() for item in items if item.item_id in item_ids]}


@router.get("/me")
def me(request: Request) -> dict[str, str]:
    return {"reviewer": reviewer(request)}


@router.get("/batches")
def batches(request: Request) -> dict[str, Any]:
    from pipeline.review.view import batch_summaries

    return {"batches": batch_summaries(context(request).store, context(request).taxonomy)}


@router.get("/batches/{batch_id}/items")
def items(
    request: Request,
    batch_id: str,
    sort: Literal["queue", "confidence", "disagreement"] = "queue",
    pending_first: bool = False,
) -> dict[str, Any]:
    from pipeline.review.view import batch_view

    batch_id = checked_batch(request, batch_id)
    ctx = context(request)
    return batch_view(ctx.store, batch_id, sort, pending_first, ctx.taxonomy).to_json()


@router.get("/batches/{batch_id}/images/{item_id}")
def image(request: Request, batch_id: str, item_id: str) -> Response:
    from pipeline.review.view import image_keys

    ctx = context(request)
    batch_id = checked_batch(request, batch_id)
    key = ctx.cached("image_keys", batch_id, lambda: image_keys(ctx.store, batch_id)).get(item_id)
    if key is None:
        raise HTTPException(404, f"no image for item {item_id!r} in batch {batch_id!r}")
    try:
        data = ctx.store.get_bytes(key)
    except (FileNotFoundError, ValueError):
        raise HTTPException(404, f"the image of item {item_id!r} is missing from the store") from None
    return Response(data, media_type=image_type(data), headers={"Cache-Control": "private, max-age=300"})


@router.post("/batches/{batch_id}/decisions")
def decisions(request: Request, batch_id: str, body: DecisionsIn) -> dict[str, Any]:
    from pipeline.review.queue import Decision, record_decisions

    batch_id = checked_batch(request, batch_id)
    wanted = [Decision(d.item_id, d.decision, d.attribute, d.new_label, d.reason) for d in body.decisions]
    try:
        ctx = context(request)
        key = record_decisions(ctx.store, batch_id, wanted, reviewer=reviewer(request), taxonomy=ctx.taxonomy)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"log_key": key, "recorded": len(wanted), **_state_update(request, batch_id, {d.item_id for d in wanted})}


@router.post("/batches/{batch_id}/accept-page")
def accept_page(request: Request, batch_id: str, body: AcceptPageIn) -> dict[str, Any]:
    """Accept every item of ``item_ids`` that is still pending (skipped ones included)."""
    from pipeline.review.queue import ACCEPT, Decision, record_decisions
    from pipeline.review.view import PENDING, item_views

    store = context(request).store
    batch_id = checked_batch(request, batch_id)
    status = {item.item_id: item.status for item in item_views(store, batch_id, context(request).taxonomy)}
    unknown = sorted(set(body.item_ids) - set(status))
    if unknown:
        raise HTTPException(400, f"not in the review queue of batch {batch_id!r}: {unknown[:5]}")
    pending = list(dict.fromkeys(i for i in body.item_ids if status[i] == PENDING))
    key = None
    if pending:
        key = record_decisions(
            store,
            batch_id,
            [Decision(i, ACCEPT, reason=ACCEPT_PAGE_REASON) for i in pending],
            reviewer=reviewer(request),
            taxonomy=context(request).taxonomy,
        )
    return {
        "log_key": key,
        "recorded": len(pending),
        "accepted": pending,
        **_state_update(request, batch_id, set(pending)),
    }


@router.get("/batches/{batch_id}/log")
def audit_log(request: Request, batch_id: str, limit: int = Query(200, ge=1, le=10000)) -> dict[str, Any]:
    from pipeline.review.queue import read_decisions

    batch_id = checked_batch(request, batch_id)
    log = read_decisions(context(request).store, batch_id)
    rows = []
    for row in log.iloc[::-1].head(limit).to_dict("records"):
        rows.append(
            {
                name: (None if _missing(row[name]) else row[name])
                for name in ("item_id", "decision", "attribute", "old_label", "new_label", "reviewer", "reason")
            }
            | {"decided_at": row["decided_at"].isoformat(), "log_key": row["log_key"]}
        )
    return {"batch_id": batch_id, "total": len(log), "decisions": rows}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
