"""The published networks' predictions for a review queue (the review page sorts by them)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.registry import publish
from pipeline.review.predictions import predict_review_queue
from pipeline.review.queue import PREDICTIONS_SCHEMA, queue_schema
from pipeline.settings import get_settings
from pipeline.store_layout import review_predictions_key, review_queue_key
from tests.models.fashion_synthetic import SHAPES, pattern_image, write_version

BATCH = "ingest-20261101"


def write_queue(store, n_good: int, n_broken: int) -> list[str]:
    rng = np.random.default_rng(3)
    rows = []
    for n in range(n_good + n_broken):
        item_id = f"item-{n:03d}"
        data = pattern_image("striped", rng) if n < n_good else b"not an image"
        rows.append(
            {"item_id": item_id, "batch_id": BATCH, "image_key": store.put_bytes(f"images/full/{item_id}.jpg", data)}
        )
    store.write_parquet(
        review_queue_key(BATCH), pa.Table.from_pylist(rows, schema=queue_schema(get_settings().taxonomy))
    )
    return [r["item_id"] for r in rows]


def test_nothing_is_written_before_a_model_is_published(file_store):
    write_queue(file_store, 2, 0)
    summary = predict_review_queue(file_store, BATCH, ["shape", "pattern"])
    assert summary["predicted"] == 0 and "no published model" in summary["reason"]
    assert not file_store.exists(review_predictions_key(BATCH))


def test_one_row_per_item_and_published_attribute(file_store):
    ids = write_queue(file_store, 3, 1)
    write_version(file_store, "shape", "v7")
    publish(file_store, "shape", "v7")
    summary = predict_review_queue(file_store, BATCH, ["shape", "pattern"], batch_size=2)  # pattern: unpublished
    assert summary["predicted"] == 3 and summary["left_out"] == 1 and summary["model_versions"] == {"shape": "v7"}
    table = file_store.read_parquet(review_predictions_key(BATCH))
    assert table.schema.equals(PREDICTIONS_SCHEMA)
    rows = table.to_pylist()
    assert [r["item_id"] for r in rows] == ids[:3] and {r["attribute"] for r in rows} == {"shape"}
    for row in rows:
        assert row["predicted_label"] in SHAPES and 1 / 3 <= row["confidence"] <= 1.0
        assert row["model_version"] == "v7"
    # A rerun rewrites the same rows.
    predict_review_queue(file_store, BATCH, ["shape", "pattern"], batch_size=3)
    again = file_store.read_parquet(review_predictions_key(BATCH)).to_pylist()
    assert [(r["item_id"], r["predicted_label"]) for r in again] == [(r["item_id"], r["predicted_label"]) for r in rows]
    assert [r["confidence"] for r in again] == pytest.approx([r["confidence"] for r in rows], rel=1e-5)
