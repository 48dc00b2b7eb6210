"""The manual-review queue: what is queued, what reviewers decided, and the decided items it gives.

* ``review/queue/<batch_id>.parquet``: a curated batch's accepted items with their weak labels, one
  ``weak_<attr>`` column (and ``weak_<attr>_source``) per taxonomy attribute. Rebuilt by :func:`enqueue`.
* ``review/decisions/<batch_id>/<stamp>-<reviewer>-<uuid>.parquet``: the audit log. Every call of
  :func:`record_decisions` writes a new object, create-only (a write never replaces an existing one);
  nothing is ever edited or deleted.
* ``dataset/items.parquet`` is rebuilt from the queues and decisions by
  :func:`pipeline.dataset.build.build_dataset`.

Decision semantics, replayed in ``decided_at`` order (the latest wins):

* ``accept`` / ``reject`` / ``skip`` are item-level (no attribute). ``accept`` keeps the item with its
  current labels, ``reject`` excludes it, ``skip`` defers it (the item stays pending).
* ``relabel`` sets one attribute's label (``new_label=None`` clears it) and also accepts the item:
  a reviewer who corrects a label has looked at the image. A later ``reject`` still excludes it.
* ``undo`` cancels the item's latest decision that is not already undone. It is a new row like any
  other (the log stays append-only): replay keeps a stack of decisions per item, an undo pops it, and
  the item's labels and status are recomputed from what remains, so undoing a relabel restores the
  label before it and undoing the only decision makes the item undecided again. An undo with nothing
  left to undo is refused when it is recorded. Its row records what it did: ``attribute``,
  ``old_label`` and ``new_label`` of an undone relabel are the attribute and its label before and
  after the undo; for other undone decisions they are null.
* An item is *pending* until it has an accept, reject or relabel.

``review/predictions/<batch_id>.parquet`` (:data:`PREDICTIONS_SCHEMA`, written by
``pipeline.review.predictions``) holds the current networks' predictions for a queue, one row per item
and attribute; no file means no model yet. The review page (:mod:`pipeline.review.view`) sorts by it.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline import store_layout
from pipeline.settings import Taxonomy, get_settings
from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

ACCEPT, REJECT, RELABEL, SKIP, UNDO = "accept", "reject", "relabel", "skip", "undo"
DECISIONS = (ACCEPT, REJECT, RELABEL, SKIP, UNDO)
POLICIES = ("auto_accept", "manual")
POLICY_REVIEWER = "policy:auto_accept"
CONFLICT_PREFIX = "conflict:"

QUEUE_ITEM_COLUMNS = [
    ("item_id", pa.string()),
    ("batch_id", pa.string()),
    ("image_key", pa.string()),
    ("title", pa.string()),
    ("product_url", pa.string()),
    ("retailer", pa.string()),
    ("cluster_id", pa.string()),
    ("phash", pa.uint64()),
    ("dhash", pa.uint64()),
    ("content_sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("crawled_at", pa.timestamp("us", tz="UTC")),
]
DECISION_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("decision", pa.string()),
        ("attribute", pa.string()),
        ("old_label", pa.string()),
        ("new_label", pa.string()),
        ("reviewer", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("reason", pa.string()),
    ]
)
# Long format: one row per item and attribute; confidence is the probability of the predicted class.
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("attribute", pa.string()),
        ("predicted_label", pa.string()),
        ("confidence", pa.float64()),
        ("model_version", pa.string()),
    ]
)


@dataclass(frozen=True)
class Decision:
    """One reviewer verdict. ``attribute`` and ``new_label`` only for ``relabel``."""

    item_id: str
    decision: str
    attribute: str | None = None
    new_label: str | None = None
    reason: str = ""


# -- schemas ---------------------------------------------------------------------------------------
def weak_column(attribute: str) -> str:
    return f"weak_{attribute}"


def queue_schema(taxonomy: Taxonomy) -> pa.Schema:
    fields = list(QUEUE_ITEM_COLUMNS)
    for attribute in taxonomy.names:
        fields += [(weak_column(attribute), pa.string()), (f"{weak_column(attribute)}_source", pa.string())]
    return pa.schema(fields)


def as_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` as a table of exactly ``schema`` (missing columns and NaN become nulls)."""
    frame = frame.reindex(columns=schema.names)
    frame = frame.astype(object).where(frame.notna(), None)
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


# -- the queue -------------------------------------------------------------------------------------
def pivot_weak_labels(weak: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One row per item_id: ``weak_<attr>`` and ``weak_<attr>_source`` for every attribute.

    Agreeing sources are joined with commas. Two different labels for one attribute (the item was
    found by two class queries, e.g. ``striped`` and ``floral``) leave the label null and record
    ``conflict:<sources>`` instead: neither query is evidence enough. Labels outside the taxonomy are
    dropped with a warning.
    """
    columns = [c for a in taxonomy.names for c in (weak_column(a), f"{weak_column(a)}_source")]
    if weak.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="item_id"))
    valid = {(attribute, label) for attribute, classes in taxonomy.attributes.items() for label in classes}
    known = pd.Series([pair in valid for pair in zip(weak["attribute"], weak["label"])], index=weak.index, dtype=bool)
    if (~known).any():
        log.warning("ignoring %d weak labels outside the taxonomy", int((~known).sum()))
    rows: dict[str, dict[str, Any]] = {}
    for (item_id, attribute), group in weak[known].groupby(["item_id", "attribute"], sort=True):
        labels = sorted(set(group["label"]))
        sources = ",".join(sorted(set(group["source"].fillna("unknown").astype(str))))
        row = rows.setdefault(item_id, {})
        if len(labels) == 1:
            row[weak_column(attribute)], row[f"{weak_column(attribute)}_source"] = labels[0], sources
        else:
            row[weak_column(attribute)], row[f"{weak_column(attribute)}_source"] = None, CONFLICT_PREFIX + sources
    pivot = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    pivot.index.name = "item_id"
    return pivot


def _batch_crawl_id(store: ObjectStore, batch_id: str) -> str:
    summary_key = store_layout.curation_summary_key(batch_id)
    if not store.exists(summary_key):
        raise ValueError(f"batch {batch_id!r} is not curated: no {summary_key} (run curate_batch first)")
    return str(store.read_json(summary_key)["crawl_id"])


def enqueue(store: ObjectStore, batch_id: str, taxonomy: Taxonomy | None = None) -> int:
    """(Re)build the review queue of ``batch_id`` from its accepted items; returns the queue length."""
    taxonomy = taxonomy or get_settings().taxonomy
    crawl_id = _batch_crawl_id(store, batch_id)
    accepted = store.read_parquet(store_layout.curation_accepted_key(batch_id)).to_pandas()
    weak_key = store_layout.crawl_weak_labels_key(crawl_id)
    weak = (
        store.read_parquet(weak_key).to_pandas()
        if store.exists(weak_key)
        else pd.DataFrame(columns=["item_id", "attribute", "label", "source"])
    )
    queue = accepted.assign(batch_id=batch_id).join(pivot_weak_labels(weak, taxonomy), on="item_id")
    queue["crawled_at"] = pd.to_datetime(queue["crawled_at"], utc=True)
    queue = queue.sort_values("item_id", kind="mergesort")
    store.write_parquet(store_layout.review_queue_key(batch_id), as_table(queue, queue_schema(taxonomy)))
    log.info("review queue %s: %d items", batch_id, len(queue))
    return len(queue)


def read_queue(store: ObjectStore, batch_id: str) -> pd.DataFrame:
    key = store_layout.review_queue_key(batch_id)
    if not store.exists(key):
        raise ValueError(f"batch {batch_id!r} has no review queue ({key}); run enqueue first")
    return store.read_parquet(key).to_pandas()


# -- the audit log ---------------------------------------------------------------------------------
# Log objects are written create-only and never change, so a parsed one can be kept: each read of the log
# then reads only the objects it has not seen (without this, every decision re-read every earlier one).
# Bounded by object count; a few KB each.
LOG_CACHE_OBJECTS = 50_000
_log_cache: OrderedDict[tuple[str, str], pa.Table] = OrderedDict()
_log_cache_lock = threading.Lock()


def _log_object(store: ObjectStore, key: str) -> pa.Table:
    """One audit-log object with its ``log_key`` and ``row`` columns (cached: objects never change)."""
    cache_key = (store.uri, key)
    with _log_cache_lock:
        table = _log_cache.get(cache_key)
        if table is not None:
            _log_cache.move_to_end(cache_key)
            return table
    table = store.read_parquet(key).cast(DECISION_SCHEMA)
    table = table.append_column("log_key", pa.array([key] * table.num_rows, pa.string())).append_column(
        "row", pa.array(range(table.num_rows), pa.int64())
    )
    with _log_cache_lock:
        _log_cache[cache_key] = table
        while len(_log_cache) > LOG_CACHE_OBJECTS:
            _log_cache.popitem(last=False)
    return table


def read_decisions(store: ObjectStore, batch_id: str) -> pd.DataFrame:
    """Every recorded decision of the batch, oldest first (ties: log object, then row order)."""
    tables = [
        _log_object(store, key)
        for key in store.list(store_layout.review_decisions_prefix(batch_id))
        if key.endswith(".parquet")
    ]
    if not tables:
        empty = DECISION_SCHEMA.empty_table().to_pandas()
        return empty.assign(log_key=pd.Series(dtype=object), row=pd.Series(dtype="int64"))
    return (
        pa.concat_tables(tables)
        .to_pandas()
        .sort_values(["decided_at", "log_key", "row"], kind="mergesort")
        .reset_index(drop=True)
    )


Labels = dict[str, tuple[str | None, str | None]]  # attribute -> (label, source)


@dataclass
class ReviewState:
    """The replayed outcome of a batch's decisions: per-item status and per-item labels."""

    status: dict[str, str]  # item_id -> accept | reject (absent = pending)
    labels: dict[str, Labels]  # item_id -> attr -> (label, source)
    decided: set[str]  # items with any decision still in effect (not undone), skip included
    last: dict[str, str] = field(default_factory=dict)  # item_id -> its latest decision in effect


def weak_labels(queue: pd.DataFrame, taxonomy: Taxonomy) -> dict[str, Labels]:
    """Every queue item's weak labels with their sources: the labels before any decision."""
    # only the columns needed (a missing one reads as null): converting every column of every row cost
    # most of a decision's time on a 600-item queue (bench/review_load.py)
    needed = ["item_id", *(c for a in taxonomy.names for c in (weak_column(a), f"{weak_column(a)}_source"))]
    return {
        row["item_id"]: {
            a: (_text(row.get(weak_column(a))), _weak_source(row.get(f"{weak_column(a)}_source")))
            for a in taxonomy.names
        }
        for row in queue.reindex(columns=needed).to_dict("records")
    }


def decision_stacks(item_ids: Iterable[str], decisions: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Per item, its decisions in effect, oldest first: every undo has popped the latest one.

    Decisions of items outside ``item_ids`` are dropped (the item left the queue when the batch was
    curated again). An undo with nothing to undo cannot be recorded; one in a hand-made log is ignored.
    """
    stacks: dict[str, list[dict[str, Any]]] = {item_id: [] for item_id in item_ids}
    for row in decisions.to_dict("records"):
        stack = stacks.get(row["item_id"])
        if stack is None:
            continue
        if row["decision"] == UNDO:
            if stack:
                stack.pop()
        else:
            stack.append(row)
    return stacks


def item_outcome(weak: Labels, stack: list[dict[str, Any]]) -> tuple[str | None, Labels]:
    """An item's status (accept, reject or None = pending) and labels after the decisions in ``stack``."""
    labels = dict(weak)
    status = None
    for row in stack:
        if row["decision"] == RELABEL:
            labels[row["attribute"]] = (_text(row["new_label"]), f"review:{row['reviewer']}")
            status = ACCEPT
        elif row["decision"] in (ACCEPT, REJECT):
            status = row["decision"]
    return status, labels


def replay(queue: pd.DataFrame, decisions: pd.DataFrame, taxonomy: Taxonomy) -> ReviewState:
    """The state of every queue item after ``decisions`` (oldest first, as :func:`read_decisions`)."""
    weak = weak_labels(queue, taxonomy)
    stacks = decision_stacks(weak, decisions)
    state = ReviewState(status={}, labels={}, decided=set())
    for item_id, stack in stacks.items():
        status, state.labels[item_id] = item_outcome(weak[item_id], stack)
        if status is not None:
            state.status[item_id] = status
        if stack:
            state.decided.add(item_id)
            state.last[item_id] = stack[-1]["decision"]
    return state


def _text(value: Any) -> str | None:
    """A string, or None for null/NaN (pandas reads a null string as NaN)."""
    return value if isinstance(value, str) and value else None


def _weak_source(source: Any) -> str | None:
    source = _text(source)
    if source is None:
        return None
    return source if source.startswith(CONFLICT_PREFIX) else f"weak:{source}"


def _validate(decision: Decision, queue_items: set[str], taxonomy: Taxonomy, batch_id: str) -> None:
    if decision.decision not in DECISIONS:
        raise ValueError(
            f"unknown decision {decision.decision!r} for item {decision.item_id!r}; expected one of {list(DECISIONS)}"
        )
    if decision.item_id not in queue_items:
        raise ValueError(f"unknown item {decision.item_id!r}: not in the review queue of batch {batch_id!r}")
    if decision.decision != RELABEL:
        if decision.attribute is not None or decision.new_label is not None:
            raise ValueError(
                f"{decision.decision!r} is an item-level decision (item {decision.item_id!r}); "
                "use 'relabel' to change an attribute"
            )
        return
    if decision.attribute not in taxonomy.attributes:
        raise ValueError(
            f"unknown attribute {decision.attribute!r} for item {decision.item_id!r}; the taxonomy has {taxonomy.names}"
        )
    classes = taxonomy.classes(decision.attribute)
    if decision.new_label is not None and decision.new_label not in classes:
        raise ValueError(
            f"unknown class {decision.new_label!r} for attribute {decision.attribute!r} "
            f"(item {decision.item_id!r}); expected one of {list(classes)} or None to clear"
        )


def _log_key(batch_id: str, decided_at: datetime, reviewer: str) -> str:
    """A key no other call can draw: time stamp (for humans; replay orders by ``decided_at``), reviewer and
    a random uuid4, so two calls in the same microsecond, in any process, never share a key. The log
    object is then written create-only (:meth:`ObjectStore.create_bytes`), so not even a collision could
    replace an earlier decision."""
    stamp = decided_at.strftime("%Y%m%dT%H%M%S%fZ")
    safe_reviewer = re.sub(r"[^A-Za-z0-9_.@-]", "_", reviewer)
    return store_layout.review_decision_key(batch_id, stamp, safe_reviewer, uuid.uuid4().hex)


def record_decisions(
    store: ObjectStore, batch_id: str, decisions: list[Decision], reviewer: str, taxonomy: Taxonomy | None = None
) -> str:
    """Validate ``decisions`` and append them to the batch's audit log as one new object; returns its key.

    ``old_label`` is the label in effect before each relabel or undo (earlier decisions and earlier
    rows of this call included), so the log alone tells the story of every label. Nothing is written
    when any decision is invalid, an undo with nothing to undo included.
    """
    if not reviewer or not reviewer.strip():
        raise ValueError("a decision needs a reviewer")
    if not decisions:
        raise ValueError("no decisions to record")
    taxonomy = taxonomy or get_settings().taxonomy
    queue = read_queue(store, batch_id)
    queue_items = set(queue["item_id"])
    for decision in decisions:
        _validate(decision, queue_items, taxonomy, batch_id)
    weak = weak_labels(queue, taxonomy)
    stacks = decision_stacks(weak, read_decisions(store, batch_id))
    decided_at = datetime.now(UTC)
    rows = []
    for d in decisions:
        row = {
            "item_id": d.item_id,
            "decision": d.decision,
            "attribute": d.attribute,
            "old_label": None,
            "new_label": d.new_label,
            "reviewer": reviewer,
            "decided_at": decided_at,
            "reason": d.reason,
        }
        stack = stacks[d.item_id]
        before = item_outcome(weak[d.item_id], stack)[1]
        if d.decision == UNDO:
            if not stack:
                raise ValueError(f"nothing to undo for item {d.item_id!r} in batch {batch_id!r}")
            undone = stack.pop()
            if undone["decision"] == RELABEL:
                attribute = undone["attribute"]
                after = item_outcome(weak[d.item_id], stack)[1]
                row.update(attribute=attribute, old_label=before[attribute][0], new_label=after[attribute][0])
        else:
            if d.decision == RELABEL:
                if d.attribute is None:  # _validate refused it
                    raise ValueError(f"a relabel of item {d.item_id!r} needs an attribute")
                row["old_label"] = before[d.attribute][0]
            stack.append(row)
        rows.append(row)
    key = _log_key(batch_id, decided_at, reviewer)
    store.create_bytes(key, _parquet_bytes(pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)))
    log.info("review %s: %d decisions by %s -> %s", batch_id, len(rows), reviewer, key)
    return key


def _parquet_bytes(table: pa.Table) -> bytes:
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def pending(store: ObjectStore, batch_id: str, taxonomy: Taxonomy | None = None) -> list[str]:
    """Queue items that have no final decision (accept, reject or relabel) yet, sorted."""
    taxonomy = taxonomy or get_settings().taxonomy
    queue = read_queue(store, batch_id)
    state = replay(queue, read_decisions(store, batch_id), taxonomy)
    return sorted(i for i in queue["item_id"] if i not in state.status)


def apply_policy(store: ObjectStore, batch_id: str, policy: str, taxonomy: Taxonomy | None = None) -> int:
    """Apply a review policy; returns how many decisions it recorded.

    ``auto_accept`` accepts every item with no decision at all (a skipped item was seen by a person
    and is left to them); a rerun finds nothing left and records nothing. ``manual`` records nothing.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown review policy {policy!r}; expected one of {list(POLICIES)}")
    if policy == "manual":
        return 0
    taxonomy = taxonomy or get_settings().taxonomy
    queue = read_queue(store, batch_id)
    state = replay(queue, read_decisions(store, batch_id), taxonomy)
    undecided = sorted(i for i in queue["item_id"] if i not in state.decided)
    if undecided:
        record_decisions(
            store,
            batch_id,
            [Decision(i, ACCEPT, reason="policy auto_accept") for i in undecided],
            reviewer=POLICY_REVIEWER,
        )
    return len(undecided)


# -- the dataset -----------------------------------------------------------------------------------
def queue_batches(store: ObjectStore) -> list[str]:
    prefix = f"{store_layout.REVIEW_QUEUE_PREFIX}/"
    return [k[len(prefix) : -len(".parquet")] for k in store.list(prefix) if k.endswith(".parquet")]


def decided_items(store: ObjectStore, batch_id: str, taxonomy: Taxonomy) -> tuple[pd.DataFrame, int]:
    """The batch's decided items with status and final labels, and the number still pending."""
    queue = read_queue(store, batch_id)
    state = replay(queue, read_decisions(store, batch_id), taxonomy)
    rows = []
    for row in queue.to_dict("records"):
        status = state.status.get(row["item_id"])
        if status is None:
            continue
        out = {name: row.get(name) for name, _ in QUEUE_ITEM_COLUMNS}
        out["status"] = status
        for attribute, (label, source) in state.labels[row["item_id"]].items():
            out[attribute] = label
            out[f"{attribute}_label_source"] = source  # also says why a label is null (conflict, cleared)
        rows.append(out)
    return pd.DataFrame(rows), len(queue) - len(rows)
