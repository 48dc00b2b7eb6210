"""What the review page shows for one batch: items, their labels and review state, clusters, predictions.

Everything is read from the store on each call and assembled into plain, JSON-ready values:

* the queue item (image key, title, shop link, size), its weak labels with their sources and its
  current labels and status after replaying the audit log (:func:`pipeline.review.queue.replay`);
* its duplicate cluster: the items curation dropped as duplicates of it in this batch
  (``curation/<batch_id>/duplicates.parquet``), with their image keys from the crawl's products;
* the model's predicted label and confidence per attribute when ``review/predictions/<batch_id>.parquet``
  exists (no file: no model yet, and the confidence orders put those items last).

Sort orders (ties always broken by ``item_id``, so a page never reshuffles between two reads):

* ``queue``: by ``item_id``, the queue's own order;
* ``confidence``: the lowest per-item confidence first, an item's confidence being its least
  confident attribute; items without predictions last;
* ``disagreement``: items where a prediction differs from the weak label first, the most confident
  disagreement first; then the other predicted items; then those without predictions.

With ``pending_first`` the items still waiting for a final decision come first, each group in the
chosen order. No TensorFlow here: the web page imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pipeline import store_layout
from pipeline.review.queue import (
    ACCEPT,
    REJECT,
    decision_stacks,
    item_outcome,
    queue_batches,
    read_decisions,
    read_queue,
    weak_labels,
)
from pipeline.settings import Taxonomy, get_settings
from pipeline.storage import ObjectStore

SORTS = ("queue", "confidence", "disagreement")
PENDING = "pending"


@dataclass(frozen=True)
class Label:
    label: str | None
    source: str | None


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    model_version: str | None


@dataclass(frozen=True)
class ClusterMember:
    """An item curation dropped as a duplicate of the queue item."""

    item_id: str
    image_key: str | None
    kind: str
    distance: int


@dataclass
class ItemView:
    item_id: str
    image_key: str
    title: str | None
    product_url: str | None
    retailer: str | None
    cluster_id: str | None
    width: int | None
    height: int | None
    status: str  # pending | accept | reject
    last_decision: str | None  # the latest decision in effect, skip included
    weak: dict[str, Label]
    labels: dict[str, Label]
    predictions: dict[str, Prediction] = field(default_factory=dict)
    members: list[ClusterMember] = field(default_factory=list)

    @property
    def min_confidence(self) -> float | None:
        return min((p.confidence for p in self.predictions.values()), default=None)

    @property
    def disagreements(self) -> list[str]:
        """Attributes whose prediction differs from a (non-null) weak label."""
        return [
            a
            for a, p in self.predictions.items()
            if self.weak.get(a) is not None and self.weak[a].label is not None and self.weak[a].label != p.label
        ]

    @property
    def disagreement_confidence(self) -> float | None:
        """The confidence of the most confident disagreeing prediction, None without disagreement."""
        return max((self.predictions[a].confidence for a in self.disagreements), default=None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            min_confidence=self.min_confidence,
            disagreements=self.disagreements,
            disagreement_confidence=self.disagreement_confidence,
        )
        return data


@dataclass
class BatchView:
    batch_id: str
    attributes: dict[str, list[str]]
    has_predictions: bool
    items: list[ItemView]

    def counts(self) -> dict[str, int]:
        statuses = [item.status for item in self.items]
        return {
            "items": len(statuses),
            PENDING: statuses.count(PENDING),
            ACCEPT: statuses.count(ACCEPT),
            REJECT: statuses.count(REJECT),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "attributes": self.attributes,
            "has_predictions": self.has_predictions,
            "counts": self.counts(),
            "items": [item.to_json() for item in self.items],
        }


# -- reading ---------------------------------------------------------------------------------------
def read_predictions(store: ObjectStore, batch_id: str) -> pd.DataFrame | None:
    """The batch's predictions (:data:`pipeline.review.queue.PREDICTIONS_SCHEMA`), or None before any model."""
    key = store_layout.review_predictions_key(batch_id)
    return store.read_parquet(key).to_pandas() if store.exists(key) else None


def predictions_by_item(predictions: pd.DataFrame | None, taxonomy: Taxonomy) -> dict[str, dict[str, Prediction]]:
    """item_id -> attribute -> prediction; attributes outside the taxonomy are ignored."""
    if predictions is None or predictions.empty:
        return {}
    known = predictions[predictions["attribute"].isin(taxonomy.names) & predictions["confidence"].notna()]
    known = known.sort_values(["item_id", "attribute"], kind="mergesort")
    out: dict[str, dict[str, Prediction]] = {}
    for row in known.to_dict("records"):
        out.setdefault(row["item_id"], {})[row["attribute"]] = Prediction(
            label=str(row["predicted_label"]),
            confidence=float(row["confidence"]),
            model_version=_text(row.get("model_version")),
        )
    return out


def _crawl_id(store: ObjectStore, batch_id: str) -> str | None:
    key = store_layout.curation_summary_key(batch_id)
    return str(store.read_json(key).get("crawl_id")) if store.exists(key) else None


def _product_image_keys(store: ObjectStore, crawl_id: str | None, item_ids: set[str]) -> dict[str, str]:
    """Image keys of ``item_ids`` in the crawl's products (the earliest crawled row of an item)."""
    if crawl_id is None:
        return {}
    key = store_layout.crawl_products_key(crawl_id)
    if not item_ids or not store.exists(key):
        return {}
    products = store.read_parquet(key, columns=["item_id", "image_key", "crawled_at"]).to_pandas()
    products = products[products["item_id"].isin(item_ids)]
    products = products.sort_values(["item_id", "crawled_at"], kind="mergesort").drop_duplicates("item_id")
    return {row["item_id"]: row["image_key"] for row in products.to_dict("records") if _text(row["image_key"])}


def cluster_members(store: ObjectStore, batch_id: str) -> dict[str, list[ClusterMember]]:
    """kept item_id -> the items this batch's curation dropped as its duplicates (closest first).

    Only duplicates of items kept by this batch: a duplicate of an earlier batch's item belongs to
    that item, which is not in this queue.
    """
    key = store_layout.curation_duplicates_key(batch_id)
    if not store.exists(key):
        return {}
    duplicates = store.read_parquet(key).to_pandas()
    if "kept_batch_id" in duplicates.columns:
        duplicates = duplicates[duplicates["kept_batch_id"].fillna(batch_id) == batch_id]
    image_keys = _product_image_keys(store, _crawl_id(store, batch_id), set(duplicates["item_id"]))
    members: dict[str, list[ClusterMember]] = {}
    for row in duplicates.sort_values(["kept_item_id", "distance", "item_id"], kind="mergesort").to_dict("records"):
        members.setdefault(row["kept_item_id"], []).append(
            ClusterMember(
                item_id=row["item_id"],
                image_key=image_keys.get(row["item_id"]),
                kind=str(row["kind"]),
                distance=int(row["distance"]),
            )
        )
    return members


# -- assembling ------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _labels(labels: dict[str, tuple[str | None, str | None]]) -> dict[str, Label]:
    return {attribute: Label(label, source) for attribute, (label, source) in labels.items()}


def item_views(store: ObjectStore, batch_id: str, taxonomy: Taxonomy | None = None) -> list[ItemView]:
    """Every queue item of ``batch_id`` as the page shows it, in queue order."""
    taxonomy = taxonomy or get_settings().taxonomy
    queue = read_queue(store, batch_id).sort_values("item_id", kind="mergesort")
    weak = weak_labels(queue, taxonomy)
    stacks = decision_stacks(weak, read_decisions(store, batch_id))
    predictions = predictions_by_item(read_predictions(store, batch_id), taxonomy)
    members = cluster_members(store, batch_id)
    items = []
    for row in queue.to_dict("records"):
        item_id = row["item_id"]
        status, labels = item_outcome(weak[item_id], stacks[item_id])
        items.append(
            ItemView(
                item_id=item_id,
                image_key=row["image_key"],
                title=_text(row.get("title")),
                product_url=_text(row.get("product_url")),
                retailer=_text(row.get("retailer")),
                cluster_id=_text(row.get("cluster_id")),
                width=_int(row.get("width")),
                height=_int(row.get("height")),
                status=status or PENDING,
                last_decision=stacks[item_id][-1]["decision"] if stacks[item_id] else None,
                weak=_labels(weak[item_id]),
                labels=_labels(labels),
                predictions=predictions.get(item_id, {}),
                members=members.get(item_id, []),
            )
        )
    return items


def _sort_key(item: ItemView, sort: str) -> tuple[Any, ...]:
    if sort == "confidence":
        confidence = item.min_confidence
        return (confidence is None, confidence or 0.0, item.item_id)
    if sort == "disagreement":
        disagreement = item.disagreement_confidence
        group = 0 if disagreement is not None else (1 if item.predictions else 2)
        return (group, -(disagreement or 0.0), item.item_id)
    return (item.item_id,)


def sort_items(items: list[ItemView], sort: str = "queue", pending_first: bool = False) -> list[ItemView]:
    """``items`` in the page's order (see the module docstring)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; expected one of {list(SORTS)}")
    ordered = sorted(items, key=lambda item: _sort_key(item, sort))
    if pending_first:
        ordered.sort(key=lambda item: item.status != PENDING)  # stable: each group keeps its order
    return ordered


def batch_view(
    store: ObjectStore,
    batch_id: str,
    sort: str = "queue",
    pending_first: bool = False,
    taxonomy: Taxonomy | None = None,
) -> BatchView:
    """The batch as the review page shows it."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; expected one of {list(SORTS)}")
    taxonomy = taxonomy or get_settings().taxonomy
    items = item_views(store, batch_id, taxonomy)
    return BatchView(
        batch_id=batch_id,
        attributes={a: list(taxonomy.classes(a)) for a in taxonomy.names},
        has_predictions=store.exists(store_layout.review_predictions_key(batch_id)),
        items=sort_items(items, sort, pending_first),
    )


def image_keys(store: ObjectStore, batch_id: str) -> dict[str, str]:
    """item_id -> image key of every image the batch's page may show: queue items and cluster members.

    The web page serves images only through this map, never by a key a client names.
    """
    queue = read_queue(store, batch_id)
    keys = {
        member.item_id: member.image_key
        for members in cluster_members(store, batch_id).values()
        for member in members
        if member.image_key
    }
    keys.update(
        {
            row["item_id"]: row["image_key"]
            for row in queue[["item_id", "image_key"]].to_dict("records")
            if _text(row["image_key"])
        }
    )
    return keys


def batch_summaries(store: ObjectStore, taxonomy: Taxonomy | None = None) -> list[dict[str, Any]]:
    """Every batch with a review queue and its counts (items, pending, accepted, rejected), sorted."""
    taxonomy = taxonomy or get_settings().taxonomy
    summaries = []
    for batch_id in sorted(queue_batches(store)):
        queue = read_queue(store, batch_id)
        weak = weak_labels(queue, taxonomy)
        stacks = decision_stacks(weak, read_decisions(store, batch_id))
        statuses = [item_outcome(weak[i], stack)[0] or PENDING for i, stack in stacks.items()]
        summaries.append(
            {
                "batch_id": batch_id,
                "items": len(statuses),
                PENDING: statuses.count(PENDING),
                ACCEPT: statuses.count(ACCEPT),
                REJECT: statuses.count(REJECT),
            }
        )
    return summaries
