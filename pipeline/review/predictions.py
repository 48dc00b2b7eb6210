"""The current networks' predictions for a review queue, so reviewers can start where a model doubts.

Writes ``review/predictions/<batch_id>.parquet`` (:data:`pipeline.review.queue.PREDICTIONS_SCHEMA`: one
row per item and attribute with the predicted class, its probability and the model version). The
review page sorts by lowest confidence or by disagreement with the weak label from it. Before any
network is published there is nothing to predict with, and nothing is written.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from models.data import UndecodableImage
from models.inference import FashionVectorizer
from models.registry import current, load_model
from pipeline.review.queue import PREDICTIONS_SCHEMA, read_queue
from pipeline.storage import ObjectStore
from pipeline.store_layout import review_predictions_key

log = logging.getLogger(__name__)


def published_attributes(store: ObjectStore, attributes: list[str]) -> list[str]:
    """The ``attributes`` that have a published (current) network."""
    return [a for a in attributes if current(store, a) is not None]


def prediction_rows(vectorizer: FashionVectorizer, item_ids: list[str], images: list[bytes]) -> list[dict[str, Any]]:
    """Long-format prediction rows for decodable ``images``; undecodable ones are left out (logged)."""
    kept, decoded = [], []
    for item_id, data in zip(item_ids, images):
        try:
            decoded.append(vectorizer.decode(data))
        except UndecodableImage as exc:
            log.warning("review predictions: item %s left out: %s", item_id, exc)
            continue
        kept.append(item_id)
    rows = []
    for item_id, vector in zip(kept, vectorizer.predict(decoded)):
        for attribute in vectorizer.attributes:
            rows.append(
                {
                    "item_id": item_id,
                    "attribute": attribute,
                    "predicted_label": vector[attribute],
                    "confidence": vector[f"{attribute}_prob"],
                    "model_version": vector[f"{attribute}_model_version"],
                }
            )
    return rows


def predict_review_queue(
    store: ObjectStore, batch_id: str, attributes: list[str], batch_size: int = 64
) -> dict[str, Any]:
    """(Re)write the predictions of the published networks for every item in ``batch_id``'s queue."""
    published = published_attributes(store, attributes)
    if not published:
        return {"batch_id": batch_id, "predicted": 0, "reason": "no published model yet"}
    vectorizer = FashionVectorizer({a: load_model(store, a) for a in published}, batch_size=batch_size)
    queue = read_queue(store, batch_id)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(queue), batch_size):
        chunk = queue.iloc[start : start + batch_size]
        images = [store.get_bytes(key) for key in chunk["image_key"]]
        rows += prediction_rows(vectorizer, list(chunk["item_id"]), images)
    rows.sort(key=lambda r: (r["item_id"], r["attribute"]))
    store.write_parquet(review_predictions_key(batch_id), pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))
    items = len({r["item_id"] for r in rows})
    return {
        "batch_id": batch_id,
        "predicted": items,
        "left_out": len(queue) - items,
        "model_versions": {a: n.version for a, n in vectorizer.networks.items()},
    }
