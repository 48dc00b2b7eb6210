"""The labelled dataset: ``dataset/items.parquet``, rebuilt from the review queues and their decisions.

One row per accepted item of the batches given (the ingest DAG passes the approved ones), with its final
labels and where each came from (``<attr>_label_source``: weak label, reviewer, or why it is null).
:mod:`pipeline.dataset.split` splits it.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline import store_layout
from pipeline.review.queue import ACCEPT, QUEUE_ITEM_COLUMNS, REJECT, as_table, decided_items, queue_batches
from pipeline.settings import Taxonomy, get_settings
from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

DATASET_ITEM_COLUMNS = [c for c in QUEUE_ITEM_COLUMNS if c[0] not in ("batch_id", "crawled_at")] + [
    ("batch_id", pa.string()),
]


def dataset_schema(taxonomy: Taxonomy) -> pa.Schema:
    fields = list(DATASET_ITEM_COLUMNS)
    for attribute in taxonomy.names:
        fields += [(attribute, pa.string()), (f"{attribute}_label_source", pa.string())]
    return pa.schema(fields)


def build_dataset(
    store: ObjectStore, batches: list[str] | None = None, taxonomy: Taxonomy | None = None
) -> dict[str, Any]:
    """Rebuild ``dataset/items.parquet`` from the queues and decisions of ``batches`` (default: every
    queued batch; the ingest DAG passes the approved ones, see :mod:`pipeline.review.approval`); returns counts.
    ``taxonomy``: default the settings'.

    The same item_id in several batches: the latest reviewed copy (``crawled_at``, then batch id)
    wins, and its decision too (a later reject removes an earlier accept). The same image bytes under
    several item ids: the earliest crawled (then smallest item_id) is kept.
    """
    taxonomy = taxonomy or get_settings().taxonomy
    schema = dataset_schema(taxonomy)
    queued = queue_batches(store)
    batches = queued if batches is None else [b for b in queued if b in set(batches)]
    frames, pending_count = [], 0
    for batch_id in batches:
        frame, waiting = decided_items(store, batch_id, taxonomy)
        pending_count += waiting
        if not frame.empty:
            frames.append(frame)
    reviewed = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[*schema.names, "status", "crawled_at"])
    )
    latest = reviewed.sort_values(["item_id", "crawled_at", "batch_id"], kind="mergesort").drop_duplicates(
        "item_id", keep="last"
    )
    rejected = int((latest["status"] == REJECT).sum())
    kept = latest[latest["status"] == ACCEPT]
    unique = kept.sort_values(["content_sha256", "crawled_at", "item_id"], kind="mergesort").drop_duplicates(
        "content_sha256", keep="first"
    )
    items = unique.sort_values("item_id", kind="mergesort").reset_index(drop=True)
    store.write_parquet(store_layout.DATASET_ITEMS_KEY, as_table(items, schema))
    summary = {
        "items": len(items),
        "batches": len(batches),
        "rejected": rejected,
        "pending": pending_count,
        "same_content_dropped": len(kept) - len(unique),
        "labelled": {a: int(items[a].notna().sum()) if len(items) else 0 for a in taxonomy.names},
    }
    log.info("dataset: %s", summary)
    return summary
